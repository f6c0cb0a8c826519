"""What compares entries with each other: paired bootstrap LDS on common resamples, and the chain.

Every entry's LDS is recomputed on the same resamples of test points and masks (one set per track's
queries and alpha), so any two entries' difference has a paired interval (PROTOCOL.md section 9).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from influence_bench.groundtruth.lds import LDSGroundTruth
from influence_bench.metrics.decomposition import CONFIGURATIONS, basis_eigenvalue_split, chain_table
from influence_bench.metrics.lds import predicted_subset_effects
from influence_bench.metrics.paired import PairedBootstrap, PairedResamples
from influence_bench.runner.evaluation import EntryResult, dev_eval_split
from influence_bench.schema import BOOTSTRAP_TRACKS, RANKING_ALPHA, bootstrap_key

# the rungs of the chain in every configuration: compared at every track and alpha
CHAIN_ENTRIES = frozenset(e for rungs in CONFIGURATIONS.values() for e in rungs.values())


def needs_bootstrap(track: str, alpha: float, entry: str) -> bool:
    """What the report compares: every entry on the ranking's track and alpha, the chain's rungs everywhere."""
    return entry in CHAIN_ENTRIES or (track == "tuned" and abs(alpha - RANKING_ALPHA) < 1e-9)


def paired_bootstrap(results: list[EntryResult], gt: LDSGroundTruth, n_test: int) -> dict[str, np.ndarray]:
    """``{track}|{alpha}|{entry}`` -> [B] LDS of the entry on the common resamples."""
    _, held_out = dev_eval_split(n_test)
    queries = {"all": np.arange(n_test), "held_out": held_out}
    ok = [r for r in results if r.ok]
    out: dict[str, np.ndarray] = {}
    for track, (scores_of, which) in BOOTSTRAP_TRACKS.items():
        q = queries[which]
        for a, alpha in enumerate(gt.alphas):
            wanted = [r for r in ok if needs_bootstrap(track, float(alpha), r.name)]
            if not wanted:
                continue
            resamples = PairedResamples.draw(gt.masks.shape[1], len(q), seed=a)
            boot = PairedBootstrap(gt.targets[a][:, q], resamples)
            for r in wanted:
                scores = r.scores_fixed if scores_of == "fixed" else r.scores_tuned
                out[bootstrap_key(track, float(alpha), r.name)] = boot.lds(predicted_subset_effects(scores[q], gt.masks[a]))
    return out


def decomposition_tables(table: pd.DataFrame, boot: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The chain and the basis/eigenvalue split per track and alpha, and over the mean of the alphas."""
    lds = table[(table.metric == "lds") & (table.status == "ok")]
    chains, splits = [], []

    def add(track: str, alpha, values: dict[str, float], draws: dict[str, np.ndarray]) -> None:
        for frame, out in ((chain_table(values, draws), chains), (basis_eigenvalue_split(values, draws), splits)):
            frame.insert(0, "alpha", alpha)
            frame.insert(0, "track", track)
            out.append(frame)

    for track in sorted(lds.track.unique()):
        rows = lds[lds.track == track]
        alphas = sorted(rows.alpha.unique())
        per_alpha = {}
        for alpha in alphas:
            at = rows[rows.alpha == alpha]
            per_alpha[alpha] = {e: boot[bootstrap_key(track, alpha, e)] for e in at.entry
                                if bootstrap_key(track, alpha, e) in boot}
            add(track, alpha, dict(zip(at.entry, at.value)), per_alpha[alpha])
        entries = set.intersection(*(set(d) for d in per_alpha.values())) if per_alpha else set()
        mean_draws = {e: np.mean([per_alpha[a][e] for a in alphas], axis=0) for e in entries}
        add(track, "mean", rows.groupby("entry").value.mean().to_dict(), mean_draws)
    empty = pd.DataFrame()
    return (pd.concat(chains, ignore_index=True) if chains else empty,
            pd.concat(splits, ignore_index=True) if splits else empty)
