"""The paper's claims: verdicts from synthetic results where each verdict is known by construction."""

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pytest

from influence_bench import schema
from influence_bench.metrics.decomposition import HYBRID, basis_eigenvalue_split
from influence_bench.metrics.paired import N_RESAMPLES, difference_interval, verdict
from influence_bench.report.claims import (
    COLUMNS,
    CONFIGURATIONS,
    STATEMENTS,
    canonical,
    claims_markdown,
    claims_table,
)

ALPHAS = (0.3, 0.5, 0.7, 0.9)
# a resample moves every entry's LDS together (common) and each a little on its own: a difference of 0.02 is
# resolved on the paired draws (its 95% interval is about +-0.003 after averaging four alphas) and never unpaired
# (each entry's own interval is about +-0.05)
COMMON_SD, OWN_SD = 0.05, 0.002
# every step loses LDS, EK-FAC -> K-FAC (0.18) the most; the hybrid (0.30) is below EK-FAC (0.38)
CHAIN_LDS = {"hessian": 0.50, "ggn": 0.46, "block-ggn": 0.42, "ekfac": 0.38, "kfac": 0.20, HYBRID: 0.30}
STEP_CLAIMS = ["C1: hessian -> ggn", "C1: ggn -> block-ggn", "C1: block-ggn -> ekfac", "C1: ekfac -> kfac"]
VERSUS_CLAIMS = ["C2: vs ggn -> block-ggn", "C2: vs block-ggn -> ekfac"]  # the GGN's approximation steps
AUTHORS = CONFIGURATIONS["authors"]


def synthetic_run(lds: Mapping[str, float | Mapping[float, float]], tracks=schema.TRACKS, alphas=ALPHAS,
                  seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A long table of LDS rows and paired draws: value (per alpha where a mapping) + common + own noise."""
    rng = np.random.default_rng(seed)
    rows, boot = [], {}
    for track in tracks:
        for alpha in alphas:
            common = COMMON_SD * rng.standard_normal(N_RESAMPLES)
            for entry, value in lds.items():
                v = value[alpha] if isinstance(value, Mapping) else value
                rows.append(schema.row(entry, track, schema.LDS, v, True, alpha=alpha))
                boot[schema.bootstrap_key(track, alpha, entry)] = v + common + OWN_SD * rng.standard_normal(N_RESAMPLES)
    return pd.DataFrame(rows), boot


def claims_of(lds, configurations=None, track="fixed", **kwargs) -> pd.DataFrame:
    """The claims of one synthetic run for one configuration ("ours" by default) and track, indexed by claim."""
    configurations = configurations or {"ours": CONFIGURATIONS["ours"]}
    table = claims_table({"task": synthetic_run(lds, **kwargs)}, configurations)
    return table[table.track == track].set_index("claim")


def verdicts(claims: pd.DataFrame, names) -> list[str]:
    return claims.loc[names, "verdict"].tolist()


def test_every_step_losing_lds_makes_c1_hold():
    claims = claims_of(CHAIN_LDS)
    assert verdicts(claims, ["C1", *STEP_CLAIMS]) == ["holds"] * 5
    step = claims.loc["C1: ggn -> block-ggn"]
    assert step.estimate == pytest.approx(0.04)
    assert 0 < step.ci_low < 0.04 < step.ci_high
    assert step.reason.startswith("GGN -> block-GGN drop +0.040 [+0.0")
    assert step.reason.endswith("block-GGN is worse than GGN")
    # the weakest step decides how strongly C1 holds: its numbers are the headline's
    weakest = claims.loc[STEP_CLAIMS].ci_low.idxmin()
    assert claims.loc["C1", "ci_low"] == claims.loc[weakest, "ci_low"]
    assert claims.loc["C1", "reason"].startswith("all 4 steps hold")


def test_a_step_that_gains_lds_contradicts_it_and_c1():
    claims = claims_of({**CHAIN_LDS, "block-ggn": 0.50})  # block-GGN 0.04 above GGN
    assert verdicts(claims, ["C1", *STEP_CLAIMS]) == ["contradicted", "holds", "contradicted", "holds", "holds"]
    assert claims.loc["C1: ggn -> block-ggn", "estimate"] == pytest.approx(-0.04)
    assert claims.loc["C1: ggn -> block-ggn", "ci_high"] < 0
    assert claims.loc["C1: ggn -> block-ggn", "reason"].endswith("block-GGN is better than GGN")
    assert claims.loc["C1", "reason"].startswith("1 of 4 steps contradicted: GGN -> block-GGN drop -0.040")


def test_overlapping_draws_leave_a_step_not_resolved():
    claims = claims_of({**CHAIN_LDS, "ekfac": 0.4205})  # 0.0005 below block-GGN, well inside the interval
    step = claims.loc["C1: block-ggn -> ekfac"]
    assert step.verdict == "not resolved" and step.ci_low < 0 < step.ci_high
    assert step.reason.endswith("the interval contains 0")
    assert claims.loc["C1", "verdict"] == "not resolved"
    assert claims.loc["C1", "reason"].startswith("1 of 4 steps not resolved: block-GGN -> EK-FAC drop")


def test_a_contradicted_step_outweighs_one_not_resolved():
    claims = claims_of({**CHAIN_LDS, "ggn": 0.52, "ekfac": 0.4205})
    assert verdicts(claims, STEP_CLAIMS) == ["contradicted", "holds", "not resolved", "holds"]
    assert claims.loc["C1", "verdict"] == "contradicted"


def test_c2_holds_when_ekfac_to_kfac_loses_the_most_on_paired_draws():
    claims = claims_of(CHAIN_LDS)
    assert verdicts(claims, ["C2", *VERSUS_CLAIMS]) == ["holds"] * 3
    # (ekfac - kfac) - (ggn - block) = 0.18 - 0.04
    assert claims.loc["C2: vs ggn -> block-ggn", "estimate"] == pytest.approx(0.14)
    assert claims.loc["C2: vs ggn -> block-ggn", "reason"].startswith(
        "EK-FAC -> K-FAC drop minus GGN -> block-GGN drop +0.140 [")


def test_c2_is_contradicted_when_another_step_loses_more():
    claims = claims_of({**CHAIN_LDS, "block-ggn": 0.20, "ekfac": 0.16, "kfac": 0.10, HYBRID: 0.12})
    # drops: H -> GGN 0.04, GGN -> block-GGN 0.26, block-GGN -> EK-FAC 0.04, EK-FAC -> K-FAC 0.06
    assert verdicts(claims, ["C2", *VERSUS_CLAIMS]) == ["contradicted", "contradicted", "holds"]
    assert claims.loc["C2", "estimate"] == pytest.approx(-0.20)
    assert claims.loc["C2: vs ggn -> block-ggn", "reason"].endswith("GGN -> block-GGN loses more")


def test_c2_is_not_resolved_when_the_largest_drop_is_larger_only_in_its_point_estimate():
    # EK-FAC -> K-FAC drops 0.1805, GGN -> block-GGN 0.18: the largest point estimate, inside the paired interval
    claims = claims_of({**CHAIN_LDS, "block-ggn": 0.28, "ekfac": 0.24, "kfac": 0.0595, HYBRID: 0.1})
    assert claims.loc["C2: vs ggn -> block-ggn", "estimate"] == pytest.approx(0.0005)
    assert verdicts(claims, ["C2", *VERSUS_CLAIMS]) == ["not resolved", "not resolved", "holds"]


@pytest.mark.parametrize("hybrid, expected", [(0.30, "holds"), (0.40, "contradicted"), (0.3805, "not resolved")])
def test_c2b_compares_the_shapley_eigenvalue_and_basis_parts(hybrid, expected):
    lds = {**CHAIN_LDS, HYBRID: hybrid}
    claims = claims_of(lds)
    row = claims.loc["C2b"]
    assert row.verdict == expected
    split = basis_eigenvalue_split(lds).set_index("change").shapley
    assert row.estimate == pytest.approx(split["eigenvalues"] - split["basis"])
    # the interval is that of the same difference on the paired draws averaged over the alphas
    table, boot = synthetic_run(lds)
    mean = {e: np.mean([boot[schema.bootstrap_key("fixed", a, e)] for a in ALPHAS], axis=0) for e in lds}
    eigenvalues = ((mean["ekfac"] - mean["kfac"]) + (mean["block-ggn"] - mean[HYBRID])) / 2
    basis = ((mean["block-ggn"] - mean["ekfac"]) + (mean[HYBRID] - mean["kfac"])) / 2
    assert (row.ci_low, row.ci_high) == pytest.approx(difference_interval(eigenvalues, basis))
    wording = {"holds": "the eigenvalues lose more", "contradicted": "the basis loses more",
               "not resolved": "the interval contains 0"}[expected]
    assert row.reason.endswith(wording)


def test_a_missing_rung_leaves_what_it_enters_not_resolved_and_is_named():
    lds = {k: v for k, v in CHAIN_LDS.items() if k != "ekfac"}
    claims = claims_of(lds)
    for claim in ["C1: block-ggn -> ekfac", "C1: ekfac -> kfac", "C2b", *VERSUS_CLAIMS]:
        assert claims.loc[claim, "verdict"] == "not resolved"
        assert claims.loc[claim, "reason"] == "ekfac was not run"
        assert math.isnan(claims.loc[claim, "estimate"])
    assert verdicts(claims, ["C1: hessian -> ggn", "C1: ggn -> block-ggn"]) == ["holds", "holds"]
    assert verdicts(claims, ["C1", "C2"]) == ["not resolved", "not resolved"]
    assert "ekfac was not run" in claims.loc["C1", "reason"]


def test_a_missing_rung_does_not_hide_a_contradiction():
    lds = {k: v for k, v in {**CHAIN_LDS, "block-ggn": 0.50}.items() if k != "hessian"}
    claims = claims_of(lds)
    assert claims.loc["C1: hessian -> ggn", "reason"] == "hessian was not run"
    assert claims.loc["C1", "verdict"] == "contradicted"


def test_failed_skipped_and_undrawn_rungs_say_why():
    table, boot = synthetic_run({k: v for k, v in CHAIN_LDS.items() if k not in ("kfac", "hessian")})
    table = pd.concat([table, pd.DataFrame([schema.failure_row("kfac", "out of memory"),
                                            schema.failure_row("hessian", "above the dense limit", "skipped")])])
    del boot[schema.bootstrap_key("fixed", 0.7, "ggn")]
    claims = claims_table({"task": (table, boot)}, {"ours": CONFIGURATIONS["ours"]}).set_index(["track", "claim"])
    assert claims.loc[("fixed", "C1: ekfac -> kfac"), "reason"] == "kfac failed"
    assert claims.loc[("fixed", "C1: hessian -> ggn"), "reason"] == (
        "hessian was skipped; ggn has no paired draws on the fixed track at α = 0.7")
    assert claims.loc[("tuned", "C1: ggn -> block-ggn"), "verdict"] == "holds"  # the tuned draws are all there


def test_a_track_without_draws_is_not_resolved():
    table, boot = synthetic_run(CHAIN_LDS, tracks=("fixed",))
    claims = claims_table({"task": (table, boot)}, {"ours": CONFIGURATIONS["ours"]})
    tuned = claims[claims.track == "tuned"]
    assert len(tuned) and (tuned.verdict == "not resolved").all()
    assert tuned.reason.str.endswith(": no paired draws on the tuned track").sum() == 2  # C1 and C2
    assert (tuned.reason.str.endswith("no paired draws on the tuned track")).all()
    assert (claims[claims.track == "fixed"].verdict == "holds").all()


def test_each_track_reads_its_own_rows_and_draws():
    fixed, fixed_boot = synthetic_run(CHAIN_LDS, tracks=("fixed",), seed=1)
    tuned, tuned_boot = synthetic_run({**CHAIN_LDS, "kfac": 0.45}, tracks=("tuned",), seed=2)
    claims = claims_table({"task": (pd.concat([fixed, tuned]), {**fixed_boot, **tuned_boot})},
                          {"ours": CONFIGURATIONS["ours"]}).set_index(["track", "claim"])
    assert claims.loc[("fixed", "C1: ekfac -> kfac"), "verdict"] == "holds"
    assert claims.loc[("tuned", "C1: ekfac -> kfac"), "verdict"] == "contradicted"
    assert claims.loc[("tuned", "C1: ekfac -> kfac"), "estimate"] == pytest.approx(-0.07)


def test_the_authors_configuration_reads_its_bracket_named_entries():
    # the same run holds both configurations: ours loses most from EK-FAC to K-FAC, the authors' MC K-FAC with the
    # heuristic inverse is better than their MC EK-FAC
    authors = {AUTHORS["block-ggn"]: 0.40, AUTHORS["ekfac"]: 0.30,
               "kfac[inverse=heuristic, fisher=mc,separate=true]": 0.33}  # parameters in another order
    claims = claims_table({"task": synthetic_run({**CHAIN_LDS, **authors})}).set_index(
        ["configuration", "track", "claim"]).sort_index()
    ours, theirs = claims.loc[("ours", "fixed")], claims.loc[("authors", "fixed")]
    assert ours.loc["C1: ekfac -> kfac", "estimate"] == pytest.approx(0.18)
    assert theirs.loc["C1: ggn -> block-ggn", "estimate"] == pytest.approx(0.06)
    assert theirs.loc["C1: block-ggn -> ekfac", "estimate"] == pytest.approx(0.10)
    assert theirs.loc["C1: ekfac -> kfac", "estimate"] == pytest.approx(-0.03)
    assert verdicts(ours, ["C1", "C2", "C2b"]) == ["holds", "holds", "holds"]
    assert verdicts(theirs, ["C1", "C1: ekfac -> kfac", "C2"]) == ["contradicted", "contradicted", "contradicted"]
    assert "C2b" not in theirs.index  # the authors' configuration has no hybrid rung


def test_a_rung_of_the_authors_configuration_missing_is_named_by_its_entry():
    claims = claims_table({"task": synthetic_run(CHAIN_LDS)}).set_index(["configuration", "track", "claim"])
    assert claims.loc[("authors", "fixed", "C1: block-ggn -> ekfac"), "reason"] == (
        "block-ggn[blocks=tensor] was not run; ekfac[fisher=mc,separate=true] was not run")


def test_canonical_entry_names():
    assert canonical("kfac[separate=true, fisher=mc]") == canonical("kfac[fisher=mc,separate=true]")
    assert canonical("kfac") == "kfac" and canonical("kfac[fisher=mc]") != canonical("kfac[fisher=type-2]")


@pytest.mark.parametrize("drops, expected, differing", [
    ({0.3: 0.03, 0.5: 0.03, 0.7: -0.03, 0.9: -0.03}, "not resolved", ALPHAS),  # each alpha alone is resolved
    ({0.3: 0.05, 0.5: 0.05, 0.7: 0.05, 0.9: -0.01}, "holds", (0.9,)),  # and the pooled draws of all alphas overlap 0
])
def test_the_verdict_is_on_the_draws_averaged_over_every_alpha(drops, expected, differing):
    lds = {**CHAIN_LDS, "kfac": {a: CHAIN_LDS["ekfac"] - d for a, d in drops.items()}}
    table, boot = synthetic_run(lds)
    row = claims_table({"task": (table, boot)}, {"ours": CONFIGURATIONS["ours"]}).set_index(
        ["track", "claim"]).loc[("fixed", "C1: ekfac -> kfac")]
    assert row.verdict == expected
    assert row.estimate == pytest.approx(np.mean(list(drops.values())))

    def draws(entry, alphas=ALPHAS):
        return [boot[schema.bootstrap_key("fixed", a, entry)] for a in alphas]

    mean = difference_interval(np.mean(draws("ekfac"), axis=0), np.mean(draws("kfac"), axis=0))
    assert (row.ci_low, row.ci_high) == pytest.approx(mean)
    named = {"higher": "holds", "lower": "contradicted", "not resolved": "not resolved"}
    for alpha in differing:  # that alpha alone gives another verdict
        assert named[verdict(*difference_interval(*draws("ekfac", [alpha]), *draws("kfac", [alpha])))] != expected
    pooled = difference_interval(np.concatenate(draws("ekfac")), np.concatenate(draws("kfac")))
    assert pooled[0] < 0 < pooled[1]


def test_claims_table_columns_and_rows_per_configuration():
    claims = claims_table({"a": synthetic_run(CHAIN_LDS), "b": synthetic_run(CHAIN_LDS, seed=1)})
    assert tuple(claims.columns) == COLUMNS
    ours = claims[(claims.task == "a") & (claims.configuration == "ours") & (claims.track == "fixed")]
    assert ours.claim.tolist() == ["C1", *STEP_CLAIMS, "C2", *VERSUS_CLAIMS, "C2b"]
    assert ours.set_index("claim").statement["C1"] == STATEMENTS["C1"]
    assert len(claims) == 2 * 2 * (len(ours) + len(ours) - 1)  # tasks x tracks x (ours + authors without C2b)


def test_markdown_has_the_statements_and_one_table_per_task():
    claims = claims_table({"digits-mlp": synthetic_run(CHAIN_LDS),
                           "digits-mlp-cosine": synthetic_run({**CHAIN_LDS, "block-ggn": 0.50})})
    text = claims_markdown(claims)
    for statement in STATEMENTS.values():
        assert statement in text
    tables = text.split("*digits-mlp")[1:]
    assert len(tables) == 2
    for task, part in zip(("digits-mlp", "digits-mlp-cosine"), tables):
        rows = [line for line in part.splitlines() if line.startswith("| ")][2:]  # without the header and its rule
        assert len(rows) == (claims.task == task).sum()
        first = claims[claims.task == task].verdict.iloc[0]
        assert rows[0].split(" | ")[:4] == ["| ours", "fixed", "C1", f"**{first}**"]
    assert "| C1: ggn -> block-ggn | contradicted | -0.040 [" in tables[1]


def test_c2_leaves_the_hessian_step_out():
    """C2 is about approximating the GGN: a large H -> GGN drop neither makes nor breaks it."""
    claims = claims_of({**CHAIN_LDS, "hessian": CHAIN_LDS["ggn"] + 0.5})
    assert "C2: vs hessian -> ggn" not in claims.index
    assert claims.loc["C2", "verdict"] == "holds"
