"""The leaderboard report: resolved Borda count and Pareto front, ranking groups, damping, decomposition intervals,
errors, a self-contained page, determinism."""

import base64
import itertools
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from influence_bench import schema
from influence_bench.cli import app
from influence_bench.metrics.decomposition import basis_eigenvalue_split, chain_table
from influence_bench.metrics.paired import N_RESAMPLES
from influence_bench.report import ReportError, write_report
from influence_bench.report import figures, tables
from influence_bench.report.render import damping_text, ranking_text

ALPHAS = (0.3, 0.5, 0.9)
FIXED_DAMPING = 1e-4
# entry -> tuned LDS at alpha 0.5: the ranking order is this order; ggn and block-ggn are 0.003 apart, well inside
# their paired interval (about +-0.03), every other neighbour 0.05 or more, well outside it
TUNED_LDS = {"ekfac": 0.6, "ggn": 0.5, "block-ggn": 0.497, "kfac": 0.4, "kfac-eigvals-in-block-basis": 0.35,
             "identity": 0.2, "hessian": 0.1}
GROUPS = [1, 2, 2, 4, 5, 6, 7]
LABELS = ["1", "2=", "2=", "4", "5", "6", "7"]
VERDICTS = ["higher", "not resolved", "higher", "higher", "higher", "higher", ""]
# entry -> (fit_s, score_s, peak_rss_mb, score_s_spread): three clusters an order of magnitude apart in time and
# memory; inside a cluster within 10% and 20 MB of each other (never resolved)
COSTS = {"ekfac": (1.9, 0.1, 900.0, 0.05), "ggn": (19.5, 0.5, 3000.0, 0.04), "block-ggn": (2.0, 0.1, 905.0, 0.06),
         "kfac": (1.8, 0.1, 890.0, math.nan), "kfac-eigvals-in-block-basis": (1.95, 0.1, 910.0, 0.2),
         "identity": (0.15, 0.05, 300.0, 0.1), "hessian": (20.5, 0.5, 3010.0, 0.05)}
DEFAULT_COST = (1.0, 0.05, 600.0, math.nan)
# the resolved Pareto front of the default results: identity is fastest, ekfac the best LDS, within 25% of the
# time of the rest of its cluster; ggn and hessian are 10x slower and not better
FRONT = ["identity", "ekfac"]
ESTIMATED = {"hessian": ("rel_fro", "ihvp_err", "fidelity")}  # above the dense limit: estimates
AT_EDGE = {"identity", "hessian"}  # identity picks the fixed damping (the grid's lowest), hessian the largest
BOOT_COMMON_SD, BOOT_OWN_SD = 0.03, 0.01  # a resample moves every entry's LDS together, and each a little on its own
FIGURES = ("lds_vs_alpha", "pareto", "damping", "spectra", "waterfall")
PROVENANCE = {"task": "synthetic", "task_version": 1, "task_fingerprint": "0123456789abcdef", "preset": "smoke",
              "n_masks": 8, "n_seeds": 2, "seeds": "split=0 masks=1 retrain=0..1", "influence_bench_version": "0.1.0",
              "torch_version": "2.13.0", "curvlinops_version": "3.0.1", "numpy_version": "2.4.6",
              "python_version": "3.11.7", "git_commit": "abcdef123456", "machine": "test machine",
              "timestamp": "2026-01-02T03:04:05+00:00"}
FIDELITY_DIRECTIONS = {"rel_fro": False, "spectrum_err": False, "eigval_mismatch": False, "basis_mismatch": False,
                       "topk_overlap_10": True, "topk_overlap_100": True, "ihvp_err": False, "fidelity": True,
                       "spectrum_err/layer0": False, "spectrum_err/layer1": False}


def damping_grid(entry: str, rng: np.random.Generator) -> list[dict]:
    """damping_grid.csv rows as the runner writes them: half-decade factors 1e-3..10 of the mean eigenvalue, then
    the fixed damping; dev LDS a parabola in log damping around the entry's best damping."""
    mean_eig = 1.0 if entry == "identity" else float(10.0 ** rng.uniform(-3, 0))
    best = {"identity": 1e-6, "hessian": mean_eig * 1e3}.get(entry, mean_eig * 10.0 ** rng.uniform(-2.4, 0.4))
    points = [(f * mean_eig, f, False) for f in 10.0 ** np.arange(-3, 1.01, 0.5)] + [(FIXED_DAMPING, math.nan, True)]
    rows = [{"entry": entry, "damping": d, "factor": f, "dev_lds": 0.55 - 0.02 * (np.log10(d / best)) ** 2,
             "chosen": False, "is_fixed": fixed, "at_edge": False} for d, f, fixed in points]
    pick = max(rows, key=lambda r: r["dev_lds"])
    pick["chosen"] = True
    dampings = sorted(r["damping"] for r in rows)
    pick["at_edge"] = pick["damping"] in (dampings[0], dampings[-1])
    return rows


def entry_rows(entry: str, tuned_at_half: float, tuned_damping: float, rng: np.random.Generator,
               jitter: np.random.Generator | None) -> list[dict]:
    rows = []
    for track, metric, damping in (("fixed", "lds", FIXED_DAMPING), ("tuned", "lds", tuned_damping),
                                   ("fixed", "lds_heldout", FIXED_DAMPING)):
        for alpha in ALPHAS:
            value = tuned_at_half if (track, alpha) == ("tuned", 0.5) else float(rng.uniform(-0.1, 0.6))
            rows.append(schema.row(entry, track, metric, value, True, alpha=alpha, ci_low=value - 0.1,
                                   ci_high=value + 0.1, ceiling=0.9 + alpha / 20, n_undefined=0.0, n_points=12.0,
                                   damping=damping))
    explicit = entry != "identity"  # identity has no curvature: only fidelity applies
    for metric, higher in FIDELITY_DIRECTIONS.items():
        value = float(rng.uniform(0, 1)) if explicit or metric == "fidelity" else math.nan
        rows.append(schema.row(entry, "fixed", metric, value, higher, damping=FIXED_DAMPING,
                               estimated=metric in ESTIMATED.get(entry, ()),
                               status="ok" if not math.isnan(value) else "not applicable"))
    fit_s, score_s, memory, spread = COSTS.get(entry, DEFAULT_COST)
    if jitter is not None:  # a second run of the same commit: a few percent, a few MB
        fit_s, score_s = fit_s * jitter.uniform(0.96, 1.04), score_s * jitter.uniform(0.96, 1.04)
        memory, spread = memory + jitter.uniform(-5, 5), spread * jitter.uniform(0.8, 1.2)
    rows += [schema.row(entry, "cost", "fit_s", fit_s, False), schema.row(entry, "cost", "score_s", score_s, False),
             schema.row(entry, "cost", "score_s_spread", spread, False),
             schema.row(entry, "cost", "total_s", fit_s + score_s, False),
             schema.row(entry, "cost", "peak_rss_mb", memory, False)]
    return rows


def lds_values(results: pd.DataFrame, track: str, metric: str = "lds") -> dict[float, dict[str, float]]:
    rows = results[(results.track == track) & (results.metric == metric) & (results.status == "ok")]
    return {alpha: dict(zip(g.entry, g.value)) for alpha, g in rows.groupby("alpha")}


def bootstrap_draws(results: pd.DataFrame, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """bootstrap.npz: per track and alpha, each entry's LDS on B paired resamples (a shared and an own part)."""
    out = {}
    for track, (source, metric) in {"fixed": ("fixed", "lds"), "tuned": ("tuned", "lds"),
                                    "fixed_heldout": ("fixed", "lds_heldout")}.items():
        for alpha, values in lds_values(results, source, metric).items():
            common = rng.normal(0, BOOT_COMMON_SD, N_RESAMPLES)
            for entry, value in sorted(values.items()):
                out[f"{track}|{alpha:.1f}|{entry}"] = value + common + rng.normal(0, BOOT_OWN_SD, N_RESAMPLES)
    return out


def decomposition_csvs(results: pd.DataFrame, boot: dict[str, np.ndarray]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """decomposition.csv and split.csv as the runner writes them: per track and alpha, and the mean over alphas,
    with paired intervals from the bootstrap draws."""
    chains, splits = [], []
    for track in schema.TRACKS:
        per_alpha = lds_values(results, track)
        draws = {alpha: {e: boot[f"{track}|{alpha:.1f}|{e}"] for e in values} for alpha, values in per_alpha.items()}
        groups = [(alpha, per_alpha[alpha], draws[alpha]) for alpha in per_alpha]
        entries = sorted(set.intersection(*(set(v) for v in per_alpha.values()))) if per_alpha else []
        groups.append(("mean", {e: np.mean([per_alpha[a][e] for a in per_alpha]) for e in entries},
                       {e: np.mean([draws[a][e] for a in per_alpha], axis=0) for e in entries}))
        for alpha, values, drawn in groups:
            chains.append(chain_table(values, drawn).assign(track=track, alpha=alpha))
            splits.append(basis_eigenvalue_split(values, drawn).assign(track=track, alpha=alpha))
    chain, split = pd.concat(chains, ignore_index=True), pd.concat(splits, ignore_index=True)
    return chain[list(schema.DECOMPOSITION_COLUMNS)], split[list(schema.SPLIT_COLUMNS)]


def make_results_dir(tmp_path: Path, entries: dict[str, float] | None = None, failures: bool = True,
                     extras: bool = True, jitter_seed: int | None = None, name: str = "results") -> Path:
    """A results directory with the schema `influence-bench run` writes, from made-up numbers.

    entries: name -> tuned LDS at alpha 0.5. failures: add two failed entries and a skipped one. extras: write
    bootstrap.npz, damping_grid.csv, decomposition.csv, split.csv and spectra.npz (the report must cope without
    them). jitter_seed: jitter times and memory by a few percent / MB, as a second run of the same commit would;
    everything else stays bit-identical.
    """
    rng = np.random.default_rng(0)
    jitter = None if jitter_seed is None else np.random.default_rng(jitter_seed)
    entries = TUNED_LDS if entries is None else entries
    rows, grid = [], []
    for entry, lds in entries.items():
        points = damping_grid(entry, rng)
        grid += points
        rows += entry_rows(entry, lds, next(p["damping"] for p in points if p["chosen"]), rng, jitter)
    if failures:
        rows += [schema.failure_row("broken", "RuntimeError: deliberate | failure <in> fit"),
                 schema.failure_row("nan-scores", "scores contain 12 NaN or infinite values"),
                 schema.failure_row("too-big", "declined: 2,000,000 parameters is above its dense limit",
                                    status="skipped")]
    rows.append(schema.row(tables.SHARED_GRADIENTS, "cost", "gradient_s", 1.25, False))
    results = pd.DataFrame(rows, columns=list(schema.ROW_COLUMNS)).assign(**PROVENANCE)
    schema.validate(results)
    out = tmp_path / name
    out.mkdir()
    results.to_parquet(out / schema.RESULTS_FILE, index=False)
    results.to_csv(out / schema.RESULTS_CSV, index=False)
    if extras:
        boot = bootstrap_draws(results, np.random.default_rng(1))
        np.savez(out / schema.BOOTSTRAP_FILE, **boot)
        pd.DataFrame(grid, columns=list(schema.GRID_COLUMNS)).to_csv(out / schema.GRID_FILE, index=False)
        chain, split = decomposition_csvs(results, boot)
        chain.to_csv(out / schema.DECOMPOSITION_FILE, index=False)
        split.to_csv(out / schema.SPLIT_FILE, index=False)
        layers = {f"{name}/layer{i}": np.sort(rng.normal(0, 1, size) ** 2 * 10.0 ** -rng.integers(0, 14, size))
                  for name in ("ggn", "hessian", "block-ggn", "ekfac", "kfac") for i, size in enumerate((40, 12))}
        layers["hessian/layer0"][:3] = -1e-3  # negative and zero eigenvalues are clipped
        np.savez(out / schema.SPECTRA_FILE, **layers)
    return out


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    return make_results_dir(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def report(results_dir, tmp_path_factory) -> dict[str, Path]:
    return write_report(results_dir, tmp_path_factory.mktemp("report") / "reports")


def read_results(results_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(results_dir / schema.RESULTS_FILE)


def read_boot(results_dir: Path) -> tables.Bootstrap:
    with np.load(results_dir / schema.BOOTSTRAP_FILE) as archive:
        return tables.Bootstrap.from_arrays({k: archive[k] for k in archive.files})


def ranked(results_dir: Path) -> pd.DataFrame:
    return tables.ranking(read_results(results_dir), read_boot(results_dir))


def section(md: str, heading: str) -> str:
    return md.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def md_rows(text: str) -> list[list[str]]:
    """The body rows of the Markdown tables in a text, as lists of cells (header and separator rows left out)."""
    lines = text.splitlines()
    return [[c.strip() for c in line.strip().strip("|").split("|")] for i, line in enumerate(lines)
            if line.startswith("| ") and i and lines[i - 1].startswith("|") and not line.startswith("| :")
            and not line.startswith("| ---")]


def paired(values: dict[str, float], seed: int = 0, own_sd: float = BOOT_OWN_SD) -> tables.Bootstrap:
    """Paired draws on the tuned track at alpha 0.5: value + a shared part + an own part."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0, BOOT_COMMON_SD, N_RESAMPLES)
    return tables.Bootstrap.from_arrays({f"tuned|0.5|{e}": v + common + rng.normal(0, own_sd, N_RESAMPLES)
                                         for e, v in values.items()})


# -- when a difference counts --------------------------------------------------------------------
def test_borda_count_matches_a_hand_computed_example():
    names = pd.Index(["a", "b", "c"])
    boot = paired({"a": 0.50, "b": 0.49, "c": 0.30})  # a - b not resolved (+-0.03); both beat c
    time = pd.Series([10.0, 14.0, 35.0], names)  # a, b: a tie (14 < 2 x 10 + 1); c is 3.5x slower, but ...
    spread = pd.Series([0.05, math.nan, 0.8], names)  # ... c's spread makes the margin 160%: 35 > 27 for a, < 37.4 for b
    memory = pd.Series([1000.0, 1090.0, 400.0], names)  # a, b: a tie (1090 < 1000 x 1.25 + 50); c beats both
    fidelity = pd.Series([0.9, 0.9005, math.nan], names)  # a tie below 1e-3; c not applicable
    mismatch = pd.Series([0.10, 0.20, 0.1005], names)  # lower better: a and c beat b, a tie with each other
    wins = {"lds": tables.lds_wins(list(names), boot), "time": tables.time_wins(time, spread),
            "memory": tables.memory_wins(memory), "fidelity": tables.tolerance_wins(fidelity, True),
            "mismatch": tables.tolerance_wins(mismatch, False)}
    assert {m: int(w.to_numpy().sum()) for m, w in wins.items()} == {
        "lds": 2, "time": 1, "memory": 2, "fidelity": 0, "mismatch": 2}
    assert wins["lds"].loc["a", "c"] and wins["lds"].loc["b", "c"] and not wins["lds"].loc["a", "b"]
    assert wins["time"].loc["a", "c"] and not wins["time"].loc["b", "c"]
    points = tables.borda_points(wins, names)
    assert points.to_dict() == {"a": 3, "b": 1, "c": 3}  # a: lds 1 time 1 mismatch 1; b: lds 1; c: memory 2, 1
    assert tables.competition_ranks(points).to_dict() == {"a": 1, "b": 3, "c": 1}


def test_resolved_lds_and_a_3x_time_difference_do_count():
    names = pd.Index(["a", "b"])
    boot = paired({"a": 0.50, "b": 0.40})
    assert tables.lds_wins(["a", "b"], boot).to_numpy().tolist() == [[False, True], [False, False]]
    assert not tables.lds_wins(["a", "b"], paired({"a": 0.50, "b": 0.495})).to_numpy().any()
    three_x = tables.time_wins(pd.Series([10.0, 30.0], names))
    assert three_x.to_numpy().tolist() == [[False, True], [False, False]]
    assert not tables.time_wins(pd.Series([10.0, 19.0], names)).to_numpy().any()  # 2x + 1 s: 21
    assert not tables.time_wins(pd.Series([0.1, 0.9], names)).to_numpy().any()  # 9x, but under a second
    # the spread widens the margin: 3x stays a win with a 50% spread (margin 100%), not with a 150% one
    assert tables.time_wins(pd.Series([10.0, 30.0], names), pd.Series([0.5, math.nan], names)).loc["a", "b"]
    assert not tables.time_wins(pd.Series([10.0, 30.0], names), pd.Series([1.5, 0.1], names)).any(axis=None)
    assert tables.memory_wins(pd.Series([500.0, 1000.0], names)).loc["a", "b"]
    assert not tables.memory_wins(pd.Series([500.0, 674.0], names)).any(axis=None)  # 25% + 50 MB: 675
    assert tables.memory_wins(pd.Series([500.0, 676.0], names)).loc["a", "b"]
    # ... and decide the Borda count
    points = tables.borda_points({"lds": tables.lds_wins(["a", "b"], boot), "time": three_x}, names)
    assert points.to_dict() == {"a": 2, "b": 0}


def test_missing_draws_or_lds_win_nothing():
    boot = paired({"a": 0.9, "b": 0.1})
    assert not tables.lds_wins(["a", "b", "c"], boot).loc[:, "c"].any()  # c has no draws
    assert not tables.lds_wins(["a", "b"], tables.Bootstrap.missing()).any(axis=None)
    assert math.isnan(tables.Bootstrap.missing().interval("a", "b")[0])


def test_competition_ranks_share_the_better_rank():
    assert tables.competition_ranks(pd.Series([5, 9, 5, 1])).tolist() == [2, 1, 2, 4]


def test_pareto_front_of_a_small_example():
    lds = {"fast": 0.30, "fast-tie": 0.305, "slow-best": 0.50, "slow-same": 0.31, "middle-worse": 0.20,
           "almost-as-slow": 0.40, "no-lds": math.nan}
    time = pd.Series({"fast": 10.0, "fast-tie": 11.0, "slow-best": 30.0, "slow-same": 30.0, "middle-worse": 20.0,
                      "almost-as-slow": 29.0, "no-lds": 1.0})
    boot = paired({e: v for e, v in lds.items() if not math.isnan(v)})
    names = list(time.index)
    front = tables.pareto_front(time, pd.Series(lds), tables.time_wins(time), tables.lds_wins(names, boot))
    # fast-tie: neither resolved faster nor better than fast; almost-as-slow: faster than slow-best, but not
    # resolved-faster (30 < 29 * 2 + 1), and resolved-worse; slow-same: resolved-slower than fast, not better
    assert front == ["fast", "fast-tie", "slow-best"]


def classical_front(time: np.ndarray, score: np.ndarray) -> set[int]:
    def dominated(i):
        return any(time[j] <= time[i] and score[j] >= score[i] and (time[j] < time[i] or score[j] > score[i])
                   for j in range(len(time)) if j != i)

    return {i for i in range(len(time)) if not math.isnan(score[i]) and not dominated(i)}


@pytest.mark.parametrize("seed", range(20))
def test_pareto_front_is_the_classical_one_where_every_difference_is_resolved_or_zero(seed):
    """Times 3x apart (or equal) and LDS levels 0.1 apart (or equal): resolved and classical dominance agree."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    time, score = 10 * 3.0 ** rng.integers(0, 4, n), 0.1 * rng.integers(0, 4, n)  # many ties
    if n > 2:
        score[1] = math.nan  # an entry without a score is left out
    names = [f"e{i}" for i in range(n)]
    boot = paired({names[i]: score[i] for i in range(n) if not math.isnan(score[i])}, seed=seed)
    times = pd.Series(time, names)
    front = tables.pareto_front(times, pd.Series(score, names), tables.time_wins(times), tables.lds_wins(names, boot))
    assert set(front) == {names[i] for i in classical_front(time, score)} and len(front) == len(set(front))
    assert [time[names.index(e)] for e in front] == sorted(time[names.index(e)] for e in front)


def test_resolved_wins_are_a_tournament_where_every_difference_is_resolved():
    """Values 3x apart: every pair of entries hands out exactly one point per metric."""
    values = pd.Series(10 * 3.0 ** np.random.default_rng(1).permutation(6), [f"e{i}" for i in range(6)])
    for wins in (tables.time_wins(values), tables.memory_wins(values * 100), tables.tolerance_wins(values, True)):
        matrix = wins.to_numpy()
        assert ((matrix | matrix.T) == ~np.eye(6, dtype=bool)).all() and not (matrix & matrix.T).any()
    points = tables.borda_points({"t": tables.time_wins(values), "m": tables.memory_wins(values * 100)}, values.index)
    assert points.sum() == 2 * len(list(itertools.combinations(range(6), 2)))


# -- two runs of the same commit agree ----------------------------------------------------------------
def strict_points(rank: pd.DataFrame) -> pd.Series:
    """The old rule: every strictly smaller time and memory is a win."""
    return sum((rank[c].to_numpy()[:, None] < rank[c].to_numpy()[None, :]).sum(axis=1)
               for c in ("total_s", "peak_rss_mb"))


def test_two_runs_with_jittered_cost_give_the_same_ranks_groups_and_front(tmp_path):
    first, second = (make_results_dir(tmp_path, jitter_seed=s, name=f"run{s}") for s in (1, 2))
    assert (first / schema.BOOTSTRAP_FILE).read_bytes() == (second / schema.BOOTSTRAP_FILE).read_bytes()
    one, two = ranked(first), ranked(second)
    assert one.lds_tuned.equals(two.lds_tuned) and not np.allclose(one.total_s, two.total_s, rtol=1e-3)
    # the jitter is enough to change who is strictly faster or smaller: the old rule would disagree
    assert not np.array_equal(strict_points(one), strict_points(two))
    assert one.overall.equals(two.overall) and one.points.equals(two.points)
    assert one["rank"].tolist() == two["rank"].tolist() == GROUPS
    assert tables.pareto_members(one) == tables.pareto_members(two) == FRONT


def test_the_default_results_rank_and_group_as_designed(tmp_path):
    rank = ranked(make_results_dir(tmp_path))
    assert list(rank.index) == list(TUNED_LDS) and rank.lds_tuned.tolist() == list(TUNED_LDS.values())
    assert rank["rank"].tolist() == GROUPS
    assert tables.rank_labels(rank["rank"]) == LABELS and rank.verdict_next.tolist() == VERDICTS
    assert rank.diff_low["block-ggn"] > 0 and rank.diff_low["ggn"] < 0 < rank.diff_high["ggn"]
    assert tables.pareto_members(rank) == FRONT


def test_groups_follow_the_paired_interval_not_the_point_estimates():
    order = ["a", "b", "c", "d"]
    lds = pd.Series([0.5, 0.49, 0.48, 0.3], order)
    # the same point estimates: with little own noise 0.01 is resolved (distinct ranks), with much it is not and
    # a, b, c are one group; d, 0.18 below c, is resolved either way
    assert tables.lds_groups(order, lds, paired(dict(lds), own_sd=0.001)).tolist() == [1, 2, 3, 4]
    assert tables.lds_groups(order, lds, paired(dict(lds), own_sd=0.02)).tolist() == [1, 1, 1, 4]
    assert tables.lds_groups(order, lds, tables.Bootstrap.missing()).tolist() == [1, 1, 1, 1]
    # an entry without a tuned LDS (last in the order) never shares a rank with one that has it
    no_lds = pd.Series([0.5, math.nan, math.nan], ["a", "b", "c"])
    assert tables.lds_groups(list(no_lds.index), no_lds, paired({"a": 0.5})).tolist() == [1, 2, 2]


def test_ranking_leaves_out_failed_skipped_and_shared_rows(tmp_path):
    rank = ranked(make_results_dir(tmp_path))
    assert not {"broken", "nan-scores", "too-big", tables.SHARED_GRADIENTS} & set(rank.index)


def test_borda_takes_directions_from_the_results_table(tmp_path):
    results_dir = make_results_dir(tmp_path)
    results, boot = read_results(results_dir), read_boot(results_dir)
    before = tables.ranking(results, boot).points["hessian"]  # the slowest: beats nobody on time
    results.loc[results.metric == "total_s", "higher_is_better"] = True
    after = tables.ranking(results, boot).points["hessian"]
    assert after - before == 5  # now it beats the 2 s cluster and identity on time; ggn (20 s) is a tie


def test_inapplicable_metric_scores_nothing_and_is_not_beaten(tmp_path):
    rank = ranked(make_results_dir(tmp_path))
    wins = tables.tolerance_wins(rank.eigval_mismatch, higher_is_better=False)
    assert math.isnan(rank.eigval_mismatch["identity"])
    assert not wins.loc["identity"].any() and not wins["identity"].any()
    assert wins.loc[rank.eigval_mismatch.idxmin()].sum() == len(TUNED_LDS) - 2  # all but itself and identity


# -- errors -----------------------------------------------------------------------------------
def test_missing_results_dir_says_to_run_first(tmp_path):
    with pytest.raises(ReportError, match="does not exist.*influence-bench run"):
        write_report(tmp_path / "nowhere", tmp_path / "out")


def test_dir_without_results_parquet_says_to_run_first(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no results.parquet.*influence-bench run"):
        write_report(tmp_path / "empty", tmp_path / "out")


def test_corrupt_results_parquet_is_a_report_error(tmp_path):
    results_dir = make_results_dir(tmp_path)
    (results_dir / "results.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ReportError, match="cannot read .*results.parquet.*influence-bench run"):
        write_report(results_dir, tmp_path / "out")


@pytest.mark.parametrize("columns", [["ci_low", "timestamp"], ["estimated"]])
def test_results_without_expected_columns_is_a_report_error(tmp_path, columns):
    results_dir = make_results_dir(tmp_path, extras=False)
    read_results(results_dir).drop(columns=columns).to_parquet(results_dir / "results.parquet")
    with pytest.raises(ReportError, match=f"lacks the columns {', '.join(columns)}.*influence-bench run"):
        write_report(results_dir, tmp_path / "out")


def test_unknown_status_is_a_report_error(tmp_path):
    results_dir = make_results_dir(tmp_path, extras=False)
    results = read_results(results_dir)
    results.loc[0, "status"] = "exploded"
    results.to_parquet(results_dir / "results.parquet")
    with pytest.raises(ReportError, match="unknown statuses.*exploded"):
        write_report(results_dir, tmp_path / "out")


def test_bad_bootstrap_keys_are_a_report_error(tmp_path):
    results_dir = make_results_dir(tmp_path)
    np.savez(results_dir / schema.BOOTSTRAP_FILE, **{"no separators": np.zeros(3)})
    with pytest.raises(ReportError, match="bootstrap.npz.*track\\|alpha\\|entry"):
        write_report(results_dir, tmp_path / "out")


def test_a_failed_report_leaves_the_previous_one_intact(tmp_path, report):
    out = tmp_path / "out"
    shutil.copytree(report["html"].parent, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "results.parquet").write_bytes(b"garbage")
    with pytest.raises(ReportError):
        write_report(broken, out)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_cli_prints_the_report_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and "influence-bench run" in result.output


# -- the documents ------------------------------------------------------------------------------
def test_writes_markdown_html_and_every_figure(report):
    assert {"markdown", "html", "results", *FIGURES} == set(report)
    for name in FIGURES:
        assert report[name] == report["html"].parent / "figures" / f"{name}.png"
        assert report[name].read_bytes().startswith(b"\x89PNG")
    assert not list(report["html"].parent.rglob("*.tmp"))


def test_html_is_self_contained_and_embeds_every_figure(report):
    html = report["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html and "<link" not in html and "@import" not in html
    images = re.findall(r"<img ([^>]*)>", html)
    assert len(images) == len(FIGURES)
    for name in FIGURES:
        encoded = base64.b64encode(report[name].read_bytes()).decode()
        tag = next(i for i in images if encoded in i)
        assert 'class="figure"' in tag and re.search(r'alt="[^"]{10,}"', tag)
    assert report["html"].stat().st_size < 2_000_000


def html_table(html: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}">.*?<tbody>(.*?)</tbody>', html, re.DOTALL).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in re.findall(r"<tr>(.*?)</tr>", body, re.DOTALL)]


def test_html_ranking_table_shows_groups_paired_differences_and_verdicts(report):
    rows = html_table(report["html"].read_text(), "ranking")
    assert [r[1] for r in rows] == list(TUNED_LDS)
    assert [r[0] for r in rows] == LABELS and [r[4] for r in rows] == VERDICTS
    difference = re.fullmatch(r"\+0\.100 \[(\+0\.\d{3}), (\+0\.\d{3})\]", rows[0][3])  # ekfac 0.6 - ggn 0.5
    assert difference and 0 < float(difference[1]) < 0.1 < float(difference[2])
    assert re.fullmatch(r"\+0\.003 \[-0\.\d{3}, \+0\.\d{3}\]", rows[1][3]) and rows[-1][3] == ""
    assert [r[7].startswith("~") for r in rows] == [False] * 6 + [True]  # hessian's fidelity is an estimate


def test_markdown_references_files_that_exist(report):
    md = report["markdown"].read_text()
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(f"figures/{name}.png" for name in FIGURES)
    assert all((report["markdown"].parent / link).is_file() for link in links)


def test_markdown_has_every_section_and_escapes_cells(report):
    md = report["markdown"].read_text()
    for heading in ("Ranking", "LDS per α", "Accuracy against cost", "Damping", "Curvature fidelity",
                    "Where accuracy is lost", "Cost", "Skipped", "Failed entries", "Provenance"):
        assert f"\n## {heading}\n" in md
    assert "RuntimeError: deliberate \\| failure &lt;in> fit" in md
    assert "| (shared) per-example gradients | 1.25 | — | — | 1.25 | — |" in md
    assert "2026-01-02T03:04:05+00:00" in md and "abcdef123456" in md
    identity = next(line for line in section(md, "Curvature fidelity").splitlines() if line.startswith("| identity"))
    assert identity.count("n/a") == len(tables.FIDELITY_METRICS) - 1


def test_estimated_values_are_marked_and_explained(report):
    fidelity = section(report["markdown"].read_text(), "Curvature fidelity")
    assert "~: an estimate" in fidelity
    header = next(line for line in fidelity.splitlines() if line.startswith("| entry"))
    columns = [c.strip().split(" ")[0] for c in header.strip("|").split("|")]
    for line in (line for line in fidelity.splitlines() if line.startswith("| ") and line != header):
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
        for metric in tables.FIDELITY_METRICS:
            expected = metric in ESTIMATED.get(cells["entry"], ())
            assert cells[metric].startswith("~") == expected, (cells["entry"], metric)


def test_skipped_entries_have_their_own_table_and_are_not_failures(report):
    md = report["markdown"].read_text()
    assert md_rows(section(md, "Skipped")) == [
        ["too-big", "everything", "declined: 2,000,000 parameters is above its dense limit"]]
    assert "too-big" not in section(md, "Failed entries") and "too-big" not in section(md, "Ranking")


def test_pareto_section_names_the_resolved_front(report):
    text = section(report["markdown"].read_text(), "Accuracy against cost")
    assert f"Front, fastest first: {', '.join(FRONT)}." in text


def test_damping_section_shows_picks_factors_and_edges(results_dir, report):
    grid = pd.read_csv(results_dir / schema.GRID_FILE)
    text = section(report["markdown"].read_text(), "Damping")
    assert "never below the fixed damping on the dev half" in text
    assert "Picked at an edge: identity, hessian." in text
    rows = {cells[0]: cells for cells in md_rows(text)}
    assert list(rows) == list(TUNED_LDS)
    for entry in TUNED_LDS:
        chosen = grid[(grid.entry == entry) & grid.chosen].iloc[0]
        fixed = grid[(grid.entry == entry) & grid.is_fixed].iloc[0]
        assert rows[entry][1:] == [tables.significant(chosen.damping),
                                   "fixed damping" if chosen.is_fixed else tables.significant(chosen.factor),
                                   tables.decimals(chosen.dev_lds), tables.decimals(fixed.dev_lds),
                                   "yes" if entry in AT_EDGE else "no"]
    assert rows["identity"][2] == "fixed damping"


def test_damping_text_flags_a_pick_below_the_fixed_damping():
    grid = pd.DataFrame([{"entry": "a", "damping": 1e-2, "factor": 1.0, "dev_lds": 0.3, "chosen": True,
                          "is_fixed": False, "at_edge": False},
                         {"entry": "a", "damping": 1e-4, "factor": math.nan, "dev_lds": 0.4, "chosen": False,
                          "is_fixed": True, "at_edge": False}])
    assert "Inconsistent: the pick of a" in damping_text(grid, ["a"])
    assert "Inconsistent" not in damping_text(grid.assign(dev_lds=[0.4, 0.3]), ["a"])


def test_decomposition_tables_show_intervals_and_resolution(tmp_path):
    results_dir = make_results_dir(tmp_path)
    chain = pd.read_csv(results_dir / schema.DECOMPOSITION_FILE, dtype={"alpha": str})
    shown = tables.decomposition_table(chain)
    expected = tables.at_mean_and_ranking_alpha(chain)
    assert len(shown) == len(expected) and len(shown) > 0
    kinds = []
    for (_, cells), (_, step) in zip(shown.iterrows(), expected.iterrows()):
        low, high = step.drop_ci_low, step.drop_ci_high
        kind = "lost (resolved)" if low > 0 else "gained (resolved)" if high < 0 else "not resolved"
        assert cells["accuracy"] == kind and (kind != "not resolved") == bool(step.resolved)
        text = f"{step['drop']:+.3f} [{low:+.3f}, {high:+.3f}]".replace("-0.000", "+0.000")
        assert cells["drop [paired 95% CI]"] == text
        kinds.append(kind)
    assert "not resolved" in kinds and len(set(kinds)) > 1  # the example has both
    split = tables.split_table(pd.read_csv(results_dir / schema.SPLIT_FILE, dtype={"alpha": str}))
    assert split["Shapley [paired 95% CI]"].str.fullmatch(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]").all()


def test_chain_conclusions_say_resolved_or_not_and_never_compare_point_estimates():
    chain = pd.DataFrame({"track": "tuned", "alpha": ["mean"] * 3 + ["0.5"],
                          "step": ["a -> b", "b -> c", "c -> d", "x"],
                          "drop": [0.01, 0.5, -0.02, 9.0], "drop_ci_low": [0.001, -0.1, -0.05, 1.0],
                          "drop_ci_high": [0.02, 0.9, -0.01, 9.5]})
    split = pd.DataFrame({"track": "tuned", "alpha": ["mean"] * 2, "change": ["basis", "eigenvalues"],
                          "shapley_ci_low": [-0.01, 0.02], "shapley_ci_high": [0.01, 0.03]})
    (sentence,) = tables.chain_conclusions(chain, split)
    assert sentence == ("Tuned damping, mean over α: lost (resolved): a -> b, the eigenvalues change (Shapley); "
                        "not resolved: b -> c, the basis change (Shapley); gained (resolved): c -> d.")


def test_missing_bootstrap_says_intervals_are_unavailable(tmp_path):
    results_dir = make_results_dir(tmp_path)
    (results_dir / schema.BOOTSTRAP_FILE).unlink()
    md = write_report(results_dir, tmp_path / "out")["markdown"].read_text()
    ranking = section(md, "Ranking")
    assert "Paired intervals are unavailable" in ranking
    rows = md_rows(ranking)
    assert [r[0] for r in rows] == ["1="] * len(TUNED_LDS)
    assert rows[0][3] == "+0.100 [n/a]" and rows[0][4] == "n/a"


def test_an_entry_without_draws_is_named(tmp_path):
    results_dir = make_results_dir(tmp_path)
    with np.load(results_dir / schema.BOOTSTRAP_FILE) as archive:
        kept = {k: archive[k] for k in archive.files if not k.endswith("|ggn")}
    np.savez(results_dir / schema.BOOTSTRAP_FILE, **kept)
    rank = ranked(results_dir)
    assert rank["rank"].tolist() == [1, 1, 1, 4, 5, 6, 7]  # ekfac - ggn and ggn - block-ggn are unknown
    assert "No paired draws for ggn:" in ranking_text(rank, read_boot(results_dir))


def test_waterfall_hatches_unresolved_steps():
    chain = pd.DataFrame({"track": "tuned", "alpha": "mean", "from": ["ggn", "block-ggn"], "to": ["block-ggn", "kfac"],
                          "drop_ci_low": [-0.01, 0.05], "drop_ci_high": [0.02, 0.1]})
    resolved = figures.chain_resolved(chain, "tuned")
    assert resolved == {("ggn", "block-ggn"): False, ("block-ggn", "kfac"): True}
    bars = figures.waterfall_bars({"ggn": 0.5, "block-ggn": 0.49, "kfac": 0.4}, resolved)
    assert [kind for *_, kind in bars] == ["total", "unresolved", "change", "total"]


def test_html_escapes_messages(report):
    html = report["html"].read_text()
    assert "deliberate | failure &lt;in&gt; fit" in html


def test_same_inputs_give_identical_documents(results_dir, report, tmp_path):
    second = write_report(results_dir, tmp_path / "second")
    assert set(second) == set(report)
    for kind in report:
        assert report[kind].read_bytes() == second[kind].read_bytes(), kind


def test_missing_entries_and_files_still_give_a_report(tmp_path):
    results_dir = make_results_dir(tmp_path, {"identity": 0.3, "diag-ggn": 0.2}, failures=False, extras=False)
    written = write_report(results_dir, tmp_path / "out")
    md, html = written["markdown"].read_text(), written["html"].read_text()
    assert "Failed entries" not in md and "Skipped" not in md and "Failed entries" not in html
    assert html.count('<img class="figure"') == len(FIGURES)
    assert len(html_table(html, "ranking")) == 2
    assert "No damping grid" in section(md, "Damping") and "Paired intervals are unavailable" in md


def test_a_run_where_every_entry_failed_still_gives_a_report(tmp_path):
    written = write_report(make_results_dir(tmp_path, {}, extras=False), tmp_path / "out")
    html = written["html"].read_text()
    assert re.search(r'<table id="ranking">.*?<tbody>\s*</tbody>', html, re.DOTALL)
    assert "nan-scores" in html and "Failed entries" in html


@pytest.mark.parametrize("values, text", [(0.12345, "0.123"), (-0.00001, "0.000"), (math.nan, "n/a")])
def test_decimals(values, text):
    assert tables.decimals(values) == text


@pytest.mark.parametrize("values, text", [(0.000953236, "0.000953"), (1234.5, "1230"), (2.5e-6, "2.5e-06")])
def test_significant(values, text):
    assert tables.significant(values) == text


def test_bootstrap_keys_are_the_schema_keys():
    draws = np.arange(4.0)
    boot = tables.Bootstrap.from_arrays({schema.bootstrap_key("tuned", 0.5, "kfac-eigvals-in-block-basis"): draws})
    assert boot.get("kfac-eigvals-in-block-basis", "tuned", 0.5) is not None
    assert boot.get("kfac-eigvals-in-block-basis", "tuned", 0.3) is None
    assert tables.bootstrap_key("fixed_heldout", 0.3, "kfac") == "fixed_heldout|0.3|kfac"
    with pytest.raises(ValueError, match="track|alpha|entry"):
        tables.Bootstrap.from_arrays({"tuned/0.5/kfac": draws})


def test_the_results_table_travels_with_the_leaderboard(results_dir, report):
    assert report["results"] == report["html"].parent / "results.csv"
    assert report["results"].read_bytes() == (results_dir / "results.csv").read_bytes()


def with_study_rows(results_dir: Path, task: str, grad_norm: float, negatives: float) -> Path:
    """Add what a run records about the task (reference model, ceilings) and each entry's LOO rows."""
    table = read_results(results_dir)
    rows = [schema.row(tables.SHARED_GRADIENTS, "diagnostics", "reference_train_loss", 8e-4, False),
            schema.row(tables.SHARED_GRADIENTS, "diagnostics", "reference_grad_norm", grad_norm, False),
            schema.row(tables.SHARED_GRADIENTS, "diagnostics", "reference_negative_hessian_eigenvalues_beyond_noise",
                       negatives, None),
            schema.row(tables.SHARED_GRADIENTS, "fixed", "noise_ceiling", 0.935, True, alpha=0.5),
            schema.row(tables.SHARED_GRADIENTS, "fixed", "loo_pearson_ceiling", 0.796, True),
            schema.row(tables.SHARED_GRADIENTS, "fixed", "loo_spearman_ceiling", 0.548, True)]
    for i, entry in enumerate(sorted(TUNED_LDS)):
        for track in schema.TRACKS:
            for metric in ("loo_pearson", "loo_spearman"):
                value = 0.1 + i / 100
                rows.append(schema.row(entry, track, metric, value, True, ci_low=value - 0.05, ci_high=value + 0.05,
                                       ceiling=0.796 if metric == "loo_pearson" else 0.548))
    extra = pd.DataFrame(rows, columns=list(schema.ROW_COLUMNS)).assign(**{**PROVENANCE, "task": task})
    table = pd.concat([table.assign(task=task), extra], ignore_index=True)
    table.to_parquet(results_dir / schema.RESULTS_FILE, index=False)
    table.to_csv(results_dir / schema.RESULTS_CSV, index=False)
    return results_dir


def test_study_sections_show_loo_task_versions_and_claims_per_version(tmp_path):
    constant = with_study_rows(make_results_dir(tmp_path, name="constant"), "digits-mlp", 1.537e-3, 2700)
    cosine = with_study_rows(make_results_dir(tmp_path, name="cosine"), "digits-mlp-cosine", 4.2e-4, 2500)
    written = write_report(constant, tmp_path / "reports", versions=[cosine])
    md = written["markdown"].read_text()
    loo = section(md, "Leave-one-out")
    assert "| noise ceiling | 0.925 | 0.796 | 0.548 | 0.925 | 0.796 | 0.548 |" in loo
    ekfac = next(line for line in loo.splitlines() if line.startswith("| ekfac |"))
    assert "| 0.600 [0.500, 0.700] | 0.110 [0.060, 0.160] |" in ekfac  # tuned LDS beside LOO
    versions = section(md, "Task versions")
    assert "digits-mlp (smoke)" in versions and "digits-mlp-cosine (smoke)" in versions
    assert "| 1.54e-03 | 2,700 |" in versions and "| 4.20e-04 | 2,500 |" in versions
    claims = section(md, "The paper's claims")
    assert "*digits-mlp (smoke)*" in claims and "*digits-mlp-cosine (smoke)*" in claims
    # ekfac (0.6) above kfac (0.4): the EK-FAC -> K-FAC step loses LDS, the chain's H -> GGN step gains
    assert "| C1: ekfac -> kfac | holds |" in claims and "| C1: hessian -> ggn | contradicted |" in claims
    assert "authors" in claims and "was not run" in claims  # the authors' rungs were not in these runs
