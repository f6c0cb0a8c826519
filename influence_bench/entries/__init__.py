"""The registry of curvature-approximation entries. Importing this package registers them all."""

# imported in the order of the paper's chain, which is the registry's (and `list`'s) order
from influence_bench.entries import hessian, ggn, ekfac, kfac, hybrid, diagonal, identity  # noqa: F401, I001
from influence_bench.entries import cg, lissa, arnoldi  # noqa: F401, I001 - the matrix-free entries
from influence_bench.entries import trak, tracin, datainf, gradient_cosine  # noqa: F401, I001 - what practitioners run instead
from influence_bench.entries import ekfac_kronfluence  # noqa: F401, I001 - an independent EK-FAC (the kronfluence extra)
from influence_bench.entries.base import (
    ENTRIES,
    DenseEntry,
    EigenEntry,
    Entry,
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

__all__ = ["ENTRIES", "DenseEntry", "EigenEntry", "Entry", "MissingCapabilityError", "NotFittedError",
           "UnknownEntryError", "get_entry", "make_entry", "parse_point", "split_names", "register", "unregister"]
