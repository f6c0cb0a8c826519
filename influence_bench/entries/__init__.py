"""The registry of curvature-approximation entries.

Entries come from the entry-point group ``influence_bench.entries`` of the installed packages: this
package declares its own there (``pyproject.toml``, in the order of the paper's chain, which is the
registry's and ``list``'s order), and an outside package declares its entries the same way
(``influence_bench.plugins``). Importing this package loads them; one that fails to import is kept
with its traceback (``influence_bench.plugins.entry_failures``) and the others load.
"""

from influence_bench.entries.base import (
    ENTRIES,
    ORIGINS,
    DenseEntry,
    EigenEntry,
    Entry,
    EntryLoadError,
    MissingCapabilityError,
    NotFittedError,
    UnknownEntryError,
    get_entry,
    make_entry,
    parse_point,
    split_names,
    register,
    unregister,
)


# the registry's (and ``list``'s) order of the built-ins: the paper's chain, then the matrix-free
# entries, then what practitioners run instead (setuptools writes entry points sorted by name)
BUILTIN_ORDER = ("hessian", "block-hessian", "ggn", "block-ggn", "ekfac", "kfac", "kfac-eigvals-in-block-basis",
                 "diag-ggn", "identity", "cg", "lissa", "arnoldi", "trak", "tracin", "datainf", "gradient-cosine",
                 "ekfac-kronfluence")


def load_entry_points() -> None:
    """Import the entries of every installed package that are not registered yet: the built-ins in
    ``BUILTIN_ORDER``, then the others in the order they were found."""
    from influence_bench.plugins import ENTRY_GROUP, load_group

    load_group(ENTRY_GROUP, ENTRIES, lambda cls, origin: register(cls, origin=origin))
    rank = {name: i for i, name in enumerate(BUILTIN_ORDER)}
    ordered = sorted(ENTRIES.items(), key=lambda item: rank.get(item[0], len(rank)))  # stable for the others
    ENTRIES.clear()
    ENTRIES.update(ordered)


load_entry_points()

__all__ = ["ENTRIES", "ORIGINS", "DenseEntry", "EigenEntry", "Entry", "EntryLoadError", "MissingCapabilityError",
           "NotFittedError", "UnknownEntryError", "get_entry", "make_entry", "parse_point", "split_names", "register",
           "unregister", "load_entry_points"]
