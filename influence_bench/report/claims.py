"""The reference paper's claims, each with a verdict computed from the results, never written by hand.

The paper (Hong et al., "Better Hessians Matter", PROTOCOL.md) claims:

  C1   better Hessian approximations give better attributions: every step down the chain
       H -> GGN -> block-GGN -> EK-FAC -> K-FAC loses LDS (one verdict per step, and one for all of them);
  C2   the step from EK-FAC eigenvalues to K-FAC eigenvalues loses the most of the approximations of the GGN:
       its drop minus the drop of each other step from the GGN on (GGN -> block-GGN, block-GGN -> EK-FAC);
  C2b  of the block-GGN -> K-FAC drop, the eigenvalue change loses more than the basis change (the two-player
       Shapley split of PROTOCOL.md section 6; needs the hybrid rung).

Every comparison is a linear combination of the rungs' LDS, taken on the paired bootstrap draws (PROTOCOL.md
section 9) averaged over the alphas: it holds when its 95% interval is above 0, is contradicted when below 0, and
is otherwise not resolved. A claim over several comparisons holds when all of them hold, is contradicted when any
is contradicted, and is otherwise not resolved. A rung without a result leaves every comparison it enters not
resolved, with the reason naming it. The chain is run in the suite's own configuration and in the authors' one
(PROTOCOL.md section 10): CONFIGURATIONS maps each to the entry names of its rungs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from influence_bench import schema
from influence_bench.metrics.decomposition import CHAIN, CONFIGURATIONS, HYBRID_RUNG
from influence_bench.metrics.paired import difference_interval, verdict
from influence_bench.report import tables

STEPS = tuple(zip(CHAIN[:-1], CHAIN[1:]))
LAST_STEP = ("ekfac", "kfac")
LABELS = {"hessian": "H", "ggn": "GGN", "block-ggn": "block-GGN", "ekfac": "EK-FAC", "kfac": "K-FAC",
          HYBRID_RUNG: "hybrid"}
HOLDS, CONTRADICTED, NOT_RESOLVED = "holds", "contradicted", "not resolved"
COLUMNS = ("task", "configuration", "track", "claim", "statement", "verdict", "estimate", "ci_low", "ci_high",
           "reason")
STATEMENTS = {
    "C1": "Better Hessian approximations give better attributions: each step down the chain "
          "H -> GGN -> block-GGN -> EK-FAC -> K-FAC loses LDS.",
    "C2": "The step from EK-FAC eigenvalues to K-FAC eigenvalues loses the most LDS of the steps that approximate "
          "the GGN (GGN -> block-GGN -> EK-FAC -> K-FAC).",
    "C2b": "Of the block-GGN -> K-FAC drop, changing to the K-FAC eigenvalues loses more LDS than changing to the "
           "Kronecker eigenbasis (Shapley average of both orders).",
}
NAN = float("nan")

Weights = dict[str, float]  # rung -> coefficient of its LDS; a rung with coefficient 0 must still have a result


def step_name(a: str, b: str) -> str:
    return f"{LABELS[a]} -> {LABELS[b]}"


def drop(a: str, b: str) -> Weights:
    """LDS(a) - LDS(b)."""
    return {a: 1.0, b: -1.0}


def combine(*terms: tuple[float, Weights]) -> Weights:
    """sum of coefficient x weights; rungs that cancel keep a coefficient 0 (the claim still needs them)."""
    out: Weights = {}
    for coefficient, weights in terms:
        for rung, w in weights.items():
            out[rung] = out.get(rung, 0.0) + coefficient * w
    return out


def eigenvalue_minus_basis() -> Weights:
    """Shapley eigenvalue part minus Shapley basis part of the block-GGN -> K-FAC drop (both orders averaged):
    ((ekfac - kfac) + (block - hybrid)) / 2 - ((block - ekfac) + (hybrid - kfac)) / 2 = ekfac - hybrid."""
    eigenvalues = combine((0.5, drop("ekfac", "kfac")), (0.5, drop("block-ggn", HYBRID_RUNG)))
    basis = combine((0.5, drop("block-ggn", "ekfac")), (0.5, drop(HYBRID_RUNG, "kfac")))
    return combine((1.0, eigenvalues), (-1.0, basis))


# -- entry names ------------------------------------------------------------------------------------
def canonical(entry: str) -> str:
    """An entry name with its bracket parameters sorted and spaces removed: kfac[b=1, a=2] -> kfac[a=2,b=1]."""
    name = "".join(str(entry).split())
    if not name.endswith("]") or "[" not in name:
        return name
    base, params = name[:-1].split("[", 1)
    return f"{base}[{','.join(sorted(p for p in params.split(',') if p))}]"


# -- what a run gives each rung --------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    """One task's long results table and paired draws, with entry names in canonical form."""

    table: pd.DataFrame
    draws: Mapping[tuple[str, float, str], np.ndarray]  # (track, alpha, entry) -> [B]

    @classmethod
    def of(cls, table: pd.DataFrame, boot: Mapping[str, np.ndarray] | tables.Bootstrap) -> "Run":
        parsed = boot if isinstance(boot, tables.Bootstrap) else tables.Bootstrap.from_arrays(boot)
        return cls(table.assign(entry=table.entry.map(canonical)),
                   {(t, a, canonical(e)): v for (t, a, e), v in parsed.draws.items()})

    def alphas(self, track: str) -> list[float]:
        """The alphas at which the run drew paired resamples for a track."""
        return sorted({a for t, a, _ in self.draws if t == track})


@dataclass(frozen=True)
class Evidence:
    """Each rung's LDS and paired draws on one track, both averaged over the alphas, or why it has none."""

    lds: dict[str, float]
    draws: dict[str, np.ndarray]  # rung -> [B]
    absent: dict[str, str]  # rung -> reason


def alpha_list(alphas: Iterable[float]) -> str:
    return ", ".join(f"{a:g}" for a in alphas)


def rung_result(run: Run, entry: str, track: str, alphas: list[float]) -> tuple[float, np.ndarray] | str:
    """The mean over alphas of an entry's LDS and of its draws, or the reason it has none."""
    key = canonical(entry)
    rows = run.table[run.table.entry == key]
    if rows.empty and not any(e == key for _, _, e in run.draws):
        return f"{entry} was not run"
    if rows.status.isin(schema.FAILURE_STATUSES).any():
        return f"{entry} failed"
    if ((rows.status == "skipped") & (rows.metric == "status")).any():
        return f"{entry} was skipped"
    if not alphas:
        return f"no paired draws on the {track} track"
    ok = rows[(rows.track == track) & (rows.metric == schema.LDS) & (rows.status == "ok")]
    values = {round(float(a), 1): float(v) for a, v in zip(ok.alpha, ok.value)}
    without = [a for a in alphas if a not in values]
    if without:
        return f"{entry} has no LDS on the {track} track at α = {alpha_list(without)}"
    without = [a for a in alphas if (track, a, key) not in run.draws]
    if without:
        return f"{entry} has no paired draws on the {track} track at α = {alpha_list(without)}"
    return (float(np.mean([values[a] for a in alphas])),
            np.mean([run.draws[(track, a, key)] for a in alphas], axis=0))


def evidence(run: Run, rungs: Mapping[str, str], track: str) -> Evidence:
    alphas = run.alphas(track)
    lds, draws, absent = {}, {}, {}
    for rung, entry in rungs.items():
        found = rung_result(run, entry, track, alphas)
        if isinstance(found, str):
            absent[rung] = found
        else:
            lds[rung], draws[rung] = found
    return Evidence(lds, draws, absent)


# -- verdicts ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    verdict: str
    estimate: float = NAN
    ci_low: float = NAN
    ci_high: float = NAN
    reason: str = ""


VERDICTS = {"higher": HOLDS, "lower": CONTRADICTED, "not resolved": NOT_RESOLVED}


def interval_text(estimate: float, low: float, high: float) -> str:
    return tables.difference_with_ci(estimate, low, high)


def judge(ev: Evidence, weights: Weights, label: str, meaning: Mapping[str, str]) -> Outcome:
    """The claim "sum_r w_r LDS(r) > 0" on the paired draws; meaning: what a verdict says, for the reason."""
    missing = list(dict.fromkeys(ev.absent[r] for r in sorted(weights, key=list(LABELS).index) if r in ev.absent))
    if missing:
        return Outcome(NOT_RESOLVED, reason="; ".join(missing))
    estimate = sum(w * ev.lds[r] for r, w in weights.items())
    draws = sum(w * ev.draws[r] for r, w in weights.items())
    low, high = difference_interval(draws, np.zeros_like(draws))
    if np.isnan(low):
        return Outcome(NOT_RESOLVED, estimate, reason=f"{label} {interval_text(estimate, low, high)}: "
                                                      "no finite paired draws")
    found = VERDICTS[verdict(low, high)]
    return Outcome(found, estimate, low, high, f"{label} {interval_text(estimate, low, high)}: {meaning[found]}")


def all_of(parts: list[Outcome], what: str) -> Outcome:
    """Holds when every part holds, contradicted when any is; the numbers are those of the deciding part."""
    n = len(parts)
    if all(p.verdict == HOLDS for p in parts):
        weakest = min(parts, key=lambda p: p.ci_low)
        return Outcome(HOLDS, weakest.estimate, weakest.ci_low, weakest.ci_high,
                       f"all {n} {what} hold; the weakest: {weakest.reason}")
    against = [p for p in parts if p.verdict == CONTRADICTED]
    if against:
        strongest = min(against, key=lambda p: p.ci_high)
        return Outcome(CONTRADICTED, strongest.estimate, strongest.ci_low, strongest.ci_high,
                       f"{len(against)} of {n} {what} contradicted: {strongest.reason}")
    open_ = [p for p in parts if p.verdict == NOT_RESOLVED]
    first = open_[0]
    return Outcome(NOT_RESOLVED, first.estimate, first.ci_low, first.ci_high,
                   f"{len(open_)} of {n} {what} not resolved: {first.reason}")


def step_outcome(ev: Evidence, a: str, b: str) -> Outcome:
    return judge(ev, drop(a, b), f"{step_name(a, b)} drop",
                 {HOLDS: f"{LABELS[b]} is worse than {LABELS[a]}",
                  CONTRADICTED: f"{LABELS[b]} is better than {LABELS[a]}", NOT_RESOLVED: "the interval contains 0"})


def last_step_versus(ev: Evidence, a: str, b: str) -> Outcome:
    last = step_name(*LAST_STEP)
    return judge(ev, combine((1.0, drop(*LAST_STEP)), (-1.0, drop(a, b))), f"{last} drop minus {step_name(a, b)} drop",
                 {HOLDS: f"{last} loses more", CONTRADICTED: f"{step_name(a, b)} loses more",
                  NOT_RESOLVED: "the interval contains 0"})


def configuration_claims(ev: Evidence, rungs: Mapping[str, str]) -> list[tuple[str, str, Outcome]]:
    """(claim, statement, outcome) of every claim for one configuration and track."""
    steps = [(f"C1: {a} -> {b}", f"{step_name(a, b)} loses LDS.", step_outcome(ev, a, b)) for a, b in STEPS]
    others = [step for step in STEPS if step != LAST_STEP and step[0] != "hessian"]  # the GGN's approximations
    versus = [(f"C2: vs {a} -> {b}", f"{step_name(*LAST_STEP)} loses more LDS than {step_name(a, b)}.",
               last_step_versus(ev, a, b)) for a, b in others]
    found = [("C1", STATEMENTS["C1"], all_of([o for *_, o in steps], "steps")), *steps,
             ("C2", STATEMENTS["C2"], all_of([o for *_, o in versus], "comparisons")), *versus]
    if HYBRID_RUNG in rungs:
        found.append(("C2b", STATEMENTS["C2b"], judge(
            ev, eigenvalue_minus_basis(), "eigenvalue minus basis part of the block-GGN -> K-FAC drop",
            {HOLDS: "the eigenvalues lose more", CONTRADICTED: "the basis loses more",
             NOT_RESOLVED: "the interval contains 0"})))
    return found


def claims_table(runs: Mapping[str, tuple[pd.DataFrame, Mapping[str, np.ndarray]]],
                 configurations: Mapping[str, Mapping[str, str]] = CONFIGURATIONS,
                 tracks: Iterable[str] = schema.TRACKS) -> pd.DataFrame:
    """One row per task x configuration x track x claim: the verdict, the estimate with its paired 95% interval
    (for a claim over several comparisons, those of the deciding one) and a one-line reason.

    runs: task label -> (its long results table, its bootstrap draws ``bootstrap_key -> [B]``)."""
    rows = []
    for task, (table, boot) in runs.items():
        run = Run.of(table, boot)
        for configuration, rungs in configurations.items():
            for track in tracks:
                ev = evidence(run, rungs, track)
                for claim, statement, o in configuration_claims(ev, rungs):
                    rows.append({"task": task, "configuration": configuration, "track": track, "claim": claim,
                                 "statement": statement, "verdict": o.verdict, "estimate": o.estimate,
                                 "ci_low": o.ci_low, "ci_high": o.ci_high, "reason": o.reason})
    return pd.DataFrame(rows, columns=list(COLUMNS))


# -- formatted ---------------------------------------------------------------------------------------
def is_headline(claim: str) -> bool:
    """C1, C2, C2b: the claims themselves; "C1: ggn -> block-ggn" and the like are their parts."""
    return ":" not in claim


def claims_display(claims: pd.DataFrame) -> pd.DataFrame:
    """The claims table as strings, one row per verdict, configuration and track written once per group."""
    shown, previous = [], None
    for row in claims.itertuples(index=False):
        group = (row.task, row.configuration, row.track)
        shown.append({
            "task": row.task,
            "configuration": row.configuration if group != previous else "",
            "track": row.track if group != previous else "",
            "claim": row.claim,
            "verdict": f"**{row.verdict}**" if is_headline(row.claim) else row.verdict,
            "estimate [paired 95% CI]": interval_text(row.estimate, row.ci_low, row.ci_high),
            "reason": row.reason,
        })
        previous = group
    return pd.DataFrame(shown, columns=["task", "configuration", "track", "claim", "verdict",
                                        "estimate [paired 95% CI]", "reason"])


def cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def claims_markdown(claims: pd.DataFrame) -> str:
    """The statements, then one table per task of every verdict with its estimate, interval and reason."""
    lines = [f"- **{claim}**: {statement}" for claim, statement in STATEMENTS.items()
             if claim in set(claims.claim)]
    lines += ["", "A verdict holds when the paired 95% bootstrap interval (averaged over α) is above 0, is "
              "contradicted when below 0, and is otherwise not resolved; a claim over several comparisons shows the "
              "numbers of the one that decides it."]
    display = claims_display(claims)
    for task in display.task.unique():
        part = display[display.task == task].drop(columns="task")
        lines += ["", f"*{task}*", "", "| " + " | ".join(part.columns) + " |",
                  "|" + "".join(" ---: |" if c.startswith("estimate") else " :--- |" for c in part.columns)]
        lines += ["| " + " | ".join(cell(v) for v in values) + " |" for values in part.to_numpy().tolist()]
    return "\n".join(lines) + "\n"
