"""Each entry on digits-mlp: the time of its fit and of its scores, the fit's peak memory, and its
quality in a lower-is-better form (1 - LDS, eigval_mismatch), so that ``asv compare`` reads a rise of
any of them as a regression.

Parameterised over the entries a default run evaluates (``influence_bench.api.default_entries``:
every registered entry at its default point, then the study's extra points such as
``kfac[fisher=mc]``), read from the registry at import. An entry that cannot run the problem
(``skip``), or a metric that does not apply to it, is skipped the asv way (``NotImplementedError`` in
``setup``; asv records n/a). Select entries by a regex on the parameter, which asv matches against
``name('entry')``: ``asv run --python=same --quick --bench "entries[.].*[(]'(identity|kfac)'[)]"``.

Every setup starts from the run's shared problem (``digits_problem``: on one thread, as each entry of
a ``--jobs 2`` run) and seeds torch with 0 before the fit, as a run does. One process per benchmark
(``processes = 1``): the slow fits (the dense Hessian's eigendecomposition, about 50 s on 2 cores)
would otherwise be set up and timed twice.
"""

from __future__ import annotations

import torch

from influence_bench.api import default_entries
from influence_bench.entries import get_entry, make_entry

from .digits_problem import DAMPING, OnDigits, digits_problem, provide, reset_peak_memory, shared_dense

ENTRY_NAMES = default_entries()


class EntryBenchmark(OnDigits):
    params = [ENTRY_NAMES]
    param_names = ["entry"]
    processes = 1
    number = 1  # one call per sample, each after a fresh setup
    warmup_time = 0.0

    def prepare(self, cache: dict, name: str, fit: bool) -> None:
        """``self.entry`` (fitted when ``fit``) and ``self.problem`` with what the entry reads."""
        entry = make_entry(name, damping=DAMPING)
        problem = digits_problem(cache)
        reason = entry.skip(problem)
        if reason:
            raise NotImplementedError(reason)
        provide(problem, entry, cache)
        torch.manual_seed(0)
        if fit:
            entry.fit(problem)
        self.entry, self.problem = entry, problem


class EntryFit(EntryBenchmark):
    """The entry's ``fit(problem)`` on digits-mlp (the shared dense matrices it reads are built
    beforehand, as in a run)."""

    repeat = (1, 3, 60.0)  # at most 3 samples, none begun after 60 s (and asv's min_run_count: at least 2)

    def setup(self, cache, entry):
        self.prepare(cache, entry, fit=False)
        reset_peak_memory()

    def time_fit(self, cache, entry):
        self.entry.fit(self.problem)

    def peakmem_fit(self, cache, entry):
        """Peak resident memory of the process over the fit (bytes).

        asv's peakmem is the process's maximum resident set size (``ru_maxrss``) after the call, so it
        would also hold setup's peak. Setup therefore resets the kernel's high-water mark once the
        problem is loaded (Linux ``/proc/self/clear_refs``): the number is the resident memory at the
        start of the fit (the interpreter, torch, the model, the gradients [n, P] and the shared dense
        matrices the entry reads, mapped from files and counted as they are touched) plus the fit's own
        growth, not the fit's allocations alone. Where the reset is refused it also includes setup's
        peak. Compare it across commits for one entry, not across entries as a cost of the method: the
        run's ``peak_rss_mb`` (an isolated process per entry) is that.
        """
        self.entry.fit(self.problem)


class EntryScore(EntryBenchmark):
    """The entry's scores for all test points at the fixed damping, ``entry.scores(problem, 1e-4)``:
    [n_test, n_train] from the fitted entry (refitted before every sample, so that no cache an entry
    keeps between calls is timed as a hit)."""

    repeat = (1, 3, 30.0)

    def setup(self, cache, entry):
        self.prepare(cache, entry, fit=True)

    def time_score(self, cache, entry):
        self.entry.scores(self.problem, DAMPING)


class EntryQuality(EntryBenchmark):
    """1 - LDS of the entry's fixed-damping scores (damping 1e-4) at alpha 0.5 against the smoke ground
    truth of digits-mlp (8 masks x 2 seeds, 3 epochs): lower is better. A regression signal, not the
    leaderboard's LDS (the standard preset's)."""

    def setup(self, cache, entry):
        self.prepare(cache, entry, fit=True)

    def track_one_minus_lds(self, cache, entry):
        from influence_bench.metrics.lds import lds

        scores = self.entry.scores(self.problem, DAMPING).numpy()  # [n_test, n_train]
        return 1.0 - lds(scores, cache["masks"], cache["targets"]).mean

    track_one_minus_lds.unit = "1 - LDS"


class EntryCurvature(EntryBenchmark):
    """eigval_mismatch of the entry's curvature against the exact GGN of digits-mlp,
    ||lam_hat - diag(Q^T G Q)|| / ||diag(Q^T G Q)|| (``metrics.matrix``): lower is better. Skipped for
    entries without an eigen form with a complete basis (the metric does not apply to them)."""

    def setup(self, cache, entry):
        if "eigen" not in get_entry(entry).capabilities:
            raise NotImplementedError(f"{entry} has no eigen form")
        self.prepare(cache, entry, fit=True)
        if not self.entry.eigen_form().complete_basis:
            raise NotImplementedError(f"{entry}'s eigen form is low-rank")
        self.ggn = shared_dense(cache, "ggn")

    def track_eigval_mismatch(self, cache, entry):
        from influence_bench.metrics.matrix import matrix_metrics

        return matrix_metrics(self.entry.eigen_form(), self.ggn)["eigval_mismatch"]

    track_eigval_mismatch.unit = "eigval_mismatch"
