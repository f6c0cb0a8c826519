"""The leaderboard report: Borda count, Pareto front, ranking, errors, a self-contained page, determinism."""

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

from influence_bench.cli import app
from influence_bench.metrics.decomposition import basis_eigenvalue_split, chain_table
from influence_bench.report import ReportError, write_report
from influence_bench.report import tables

ALPHAS = (0.3, 0.5, 0.9)
# entry -> tuned LDS at alpha 0.5: the ranking order is this order
TUNED_LDS = {"ekfac": 0.6, "ggn": 0.5, "block-ggn": 0.45, "kfac": 0.4, "kfac-eigvals-in-block-basis": 0.35,
             "identity": 0.2, "hessian": 0.1}
FIGURES = ("lds_vs_alpha", "pareto", "spectra", "waterfall")
PROVENANCE = {"task": "synthetic", "task_version": 1, "task_fingerprint": "0123456789abcdef", "preset": "smoke",
              "n_masks": 8, "n_seeds": 2, "seeds": "split=0 masks=1 retrain=0..1", "influence_bench_version": "0.1.0",
              "torch_version": "2.13.0", "curvlinops_version": "3.0.1", "numpy_version": "2.4.6",
              "python_version": "3.11.7", "git_commit": "abcdef123456", "machine": "test machine",
              "timestamp": "2026-01-02T03:04:05+00:00"}
FIDELITY_DIRECTIONS = {"rel_fro": False, "spectrum_err": False, "eigval_mismatch": False, "basis_mismatch": False,
                       "topk_overlap_10": True, "topk_overlap_100": True, "ihvp_err": False, "fidelity": True,
                       "spectrum_err/layer0": False, "spectrum_err/layer1": False}


def row(entry, track, metric, value, higher, **extra):
    base = {"entry": entry, "track": track, "metric": metric, "alpha": math.nan, "value": value, "ci_low": math.nan,
            "ci_high": math.nan, "ceiling": math.nan, "n_undefined": math.nan, "n_points": math.nan,
            "higher_is_better": higher, "damping": math.nan, "status": "ok", "message": ""}
    return {**base, **extra}


def entry_rows(entry: str, tuned_at_half: float, rng: np.random.Generator) -> list[dict]:
    rows = []
    for track, damping in (("fixed", 1e-4), ("tuned", 10.0 ** rng.integers(-7, -2))):
        for alpha in ALPHAS:
            value = tuned_at_half if (track, alpha) == ("tuned", 0.5) else float(rng.uniform(-0.1, 0.6))
            rows.append(row(entry, track, "lds", value, True, alpha=alpha, ci_low=value - 0.1, ci_high=value + 0.1,
                            ceiling=0.9 + alpha / 20, n_undefined=0.0, n_points=12.0, damping=damping))
    explicit = entry != "identity"  # identity has no curvature: only fidelity applies
    for metric, higher in FIDELITY_DIRECTIONS.items():
        value = float(rng.uniform(0, 1)) if explicit or metric == "fidelity" else math.nan
        rows.append(row(entry, "fixed", metric, value, higher, damping=1e-4,
                        status="ok" if not math.isnan(value) else "not applicable"))
    fit_s, score_s = float(rng.uniform(0.01, 3)), float(rng.uniform(0.001, 0.01))
    rows += [row(entry, "cost", "fit_s", fit_s, False), row(entry, "cost", "score_s", score_s, False),
             row(entry, "cost", "total_s", fit_s + score_s, False),
             row(entry, "cost", "peak_rss_mb", float(rng.uniform(500, 1500)), False)]
    return rows


def decomposition_csvs(results: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """decomposition.csv and split.csv as the runner writes them: per track and alpha, and the mean over alphas."""
    lds = results[(results.metric == "lds") & (results.status == "ok")]
    groups = [(track, alpha, dict(zip(g.entry, g.value))) for (track, alpha), g in lds.groupby(["track", "alpha"])]
    groups += [(track, "mean", g.groupby("entry").value.mean().to_dict()) for track, g in lds.groupby("track")]
    chains, splits = [], []
    for track, alpha, values in groups:
        for frame, out in ((chain_table(values), chains), (basis_eigenvalue_split(values), splits)):
            out.append(frame.assign(track=track, alpha=alpha))
    order = ["track", "alpha"]
    chain, split = pd.concat(chains, ignore_index=True), pd.concat(splits, ignore_index=True)
    return chain[order + [c for c in chain if c not in order]], split[order + [c for c in split if c not in order]]


def make_results_dir(tmp_path: Path, entries: dict[str, float] | None = None, failures: bool = True,
                     extras: bool = True) -> Path:
    """A results directory with the schema `influence-bench run` writes, from made-up numbers.

    entries: name -> tuned LDS at alpha 0.5. failures: add two failed entries. extras: write
    decomposition.csv, split.csv and spectra.npz (the report must cope without them).
    """
    rng = np.random.default_rng(0)
    entries = TUNED_LDS if entries is None else entries
    rows = [r for name, lds in entries.items() for r in entry_rows(name, lds, rng)]
    if failures:
        rows += [row("broken", "all", "status", math.nan, None, status="failed",
                     message="RuntimeError: deliberate | failure <in> fit"),
                 row("nan-scores", "all", "status", math.nan, None, status="failed",
                     message="scores contain 12 NaN or infinite values")]
    rows.append(row(tables.SHARED_GRADIENTS, "cost", "gradient_s", 1.25, False))
    results = pd.DataFrame(rows).assign(**PROVENANCE)
    out = tmp_path / "results"
    out.mkdir()
    results.to_parquet(out / "results.parquet", index=False)
    results.to_csv(out / "results.csv", index=False)
    if extras:
        chain, split = decomposition_csvs(results)
        chain.to_csv(out / "decomposition.csv", index=False)
        split.to_csv(out / "split.csv", index=False)
        layers = {f"{name}/layer{i}": np.sort(rng.normal(0, 1, size) ** 2 * 10.0 ** -rng.integers(0, 14, size))
                  for name in ("ggn", "hessian", "block-ggn", "ekfac", "kfac") for i, size in enumerate((40, 12))}
        layers["hessian/layer0"][:3] = -1e-3  # negative and zero eigenvalues are clipped
        np.savez(out / "spectra.npz", **layers)
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("report")
    return write_report(make_results_dir(base), base / "reports")


def read_results(results_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(results_dir / "results.parquet")


# -- Borda count, Pareto front, ranking ------------------------------------------------------------
def test_borda_count_matches_a_hand_computed_example():
    values = pd.DataFrame({
        "lds": [0.3, 0.2, 0.1],           # higher better: a beats b, c (2); b beats c (1); c 0
        "error": [5.0, math.nan, 1.0],    # lower better: c beats a (1); b is n/a: 0 points, not beaten
        "overlap": [1.0, 1.0, 0.0],       # higher better, a tie: a 1, b 1, c 0
        "time": [2.0, 2.0, 1.0],          # lower better: c beats a and b (2)
        "memory": [math.nan] * 3,         # not applicable to anyone: nobody scores
    }, index=["a", "b", "c"])
    directions = {"lds": True, "error": False, "overlap": True, "time": False, "memory": False}
    points = tables.borda_points(values, directions)
    assert points.to_dict() == {"a": 3, "b": 2, "c": 3}
    assert tables.competition_ranks(points).to_dict() == {"a": 1, "b": 3, "c": 1}


def test_competition_ranks_share_the_better_rank():
    assert tables.competition_ranks(pd.Series([5, 9, 5, 1])).tolist() == [2, 1, 2, 4]


def dominated(i: int, time: np.ndarray, score: np.ndarray) -> bool:
    return any(time[j] <= time[i] and score[j] >= score[i] and (time[j] < time[i] or score[j] > score[i])
               for j in range(len(time)) if j != i)


@pytest.mark.parametrize("seed", range(30))
def test_pareto_front_is_the_brute_force_set_of_undominated_points(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 12))
    time, score = rng.integers(1, 5, n).astype(float), rng.integers(0, 4, n).astype(float)  # many ties
    if n > 2:
        score[1] = math.nan  # an entry without a score is left out
    names = [f"e{i}" for i in range(n)]
    front = tables.pareto_front(pd.Series(time, names), pd.Series(score, names))
    expected = {names[i] for i in range(n) if not math.isnan(score[i]) and not dominated(i, time, score)}
    assert set(front) == expected and len(front) == len(expected)
    assert [time[names.index(e)] for e in front] == sorted(time[names.index(e)] for e in front)


def test_pareto_front_of_a_small_example():
    time = pd.Series({"fast": 0.01, "slow-best": 3.0, "dominated": 2.0, "middle": 0.5, "tie": 0.5})
    score = pd.Series({"fast": 0.2, "slow-best": 0.6, "dominated": 0.3, "middle": 0.4, "tie": 0.4})
    assert tables.pareto_front(time, score) == ["fast", "middle", "tie", "slow-best"]


def test_ranking_orders_by_tuned_lds_and_leaves_out_failed_and_shared_rows(tmp_path):
    rank = tables.ranking(read_results(make_results_dir(tmp_path)))
    assert list(rank.index) == list(TUNED_LDS)
    assert rank["rank"].tolist() == list(range(1, len(TUNED_LDS) + 1))
    assert rank.lds_tuned.tolist() == list(TUNED_LDS.values())


def test_borda_takes_directions_from_the_results_table(tmp_path):
    results = read_results(make_results_dir(tmp_path))
    slowest = tables.metric_rows(results, "cost", "total_s").value.idxmax()
    before = tables.ranking(results).points[slowest]
    results.loc[results.metric == "total_s", "higher_is_better"] = True
    after = tables.ranking(results).points[slowest]
    assert after - before == len(TUNED_LDS) - 1  # now it beats every other entry on time instead of none


def test_inapplicable_metric_scores_nothing_and_is_not_beaten(tmp_path):
    rank = tables.ranking(read_results(make_results_dir(tmp_path)))
    beaten = tables.beaten_counts(rank.eigval_mismatch, higher_is_better=False)
    assert math.isnan(rank.eigval_mismatch["identity"]) and beaten["identity"] == 0
    assert beaten[rank.eigval_mismatch.idxmin()] == len(TUNED_LDS) - 2  # all but itself and identity


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


def test_results_without_expected_columns_is_a_report_error(tmp_path):
    results_dir = make_results_dir(tmp_path)
    read_results(results_dir).drop(columns=["ci_low", "timestamp"]).to_parquet(results_dir / "results.parquet")
    with pytest.raises(ReportError, match="lacks the columns ci_low, timestamp"):
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


def test_html_ranking_table_has_one_row_per_entry_in_order(report):
    html = report["html"].read_text()
    ranking = re.search(r'<table id="ranking">.*?<tbody>(.*?)</tbody>', html, re.DOTALL).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", ranking, re.DOTALL)
    assert [re.findall(r"<td[^>]*>(.*?)</td>", r)[1] for r in rows] == list(TUNED_LDS)


def test_markdown_references_files_that_exist(report):
    md = report["markdown"].read_text()
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert sorted(links) == sorted(f"figures/{name}.png" for name in FIGURES)
    assert all((report["markdown"].parent / link).is_file() for link in links)


def test_markdown_has_every_section_and_escapes_cells(report):
    md = report["markdown"].read_text()
    for heading in ("Ranking", "LDS per α", "Curvature fidelity", "Where accuracy is lost", "Cost",
                    "Failed entries", "Provenance"):
        assert f"\n## {heading}\n" in md
    assert "RuntimeError: deliberate \\| failure &lt;in> fit" in md
    assert "| (shared gradients) | 1.25 |" in md
    assert "2026-01-02T03:04:05+00:00" in md and "abcdef123456" in md
    identity = next(line for line in md.splitlines() if line.startswith("| identity | n/a"))
    assert identity.count("n/a") == len(tables.FIDELITY_METRICS) - 1


def test_html_escapes_messages(report):
    html = report["html"].read_text()
    assert "deliberate | failure &lt;in&gt; fit" in html


def test_same_inputs_give_identical_documents(tmp_path):
    results_dir = make_results_dir(tmp_path)
    first = write_report(results_dir, tmp_path / "first")
    second = write_report(results_dir, tmp_path / "second")
    for kind in first:
        assert first[kind].read_bytes() == second[kind].read_bytes(), kind


def test_missing_entries_and_files_still_give_a_report(tmp_path):
    results_dir = make_results_dir(tmp_path, {"identity": 0.3, "diag-ggn": 0.2}, failures=False, extras=False)
    written = write_report(results_dir, tmp_path / "out")
    md, html = written["markdown"].read_text(), written["html"].read_text()
    assert "Failed entries" not in md and "Failed entries" not in html
    assert html.count('<img class="figure"') == len(FIGURES)
    ranking = re.search(r'<table id="ranking">.*?</table>', html, re.DOTALL).group(0)
    assert ranking.count("<tr>") == 1 + 2


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


def test_pairs_of_borda_points_sum_to_comparisons():
    """Without ties or NaN, every pair of entries hands out exactly one point per metric."""
    values = pd.DataFrame(np.random.default_rng(1).normal(size=(6, 3)), columns=["x", "y", "z"])
    points = tables.borda_points(values, {"x": True, "y": False, "z": True})
    assert points.sum() == 3 * len(list(itertools.combinations(range(6), 2)))


def test_the_results_table_travels_with_the_leaderboard(tmp_path):
    results_dir = make_results_dir(tmp_path)
    written = write_report(results_dir, tmp_path / "out")
    assert written["results"] == tmp_path / "out" / "results.csv"
    assert written["results"].read_bytes() == (results_dir / "results.csv").read_bytes()
