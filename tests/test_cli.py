import json
import re
import subprocess
import sys

import pytest

from typer.testing import CliRunner

from influence_bench.cli import app
from influence_bench.entries import ENTRIES
from influence_bench.groundtruth import build_lds_groundtruth, get_preset
from influence_bench.metrics.lds import noise_ceiling
from influence_bench.tasks import TASKS, get_task

runner = CliRunner()


def test_list_json_names_every_task_and_entry():
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0
    items = json.loads(result.stdout)
    assert {"tasks", "entries"} <= set(items)
    assert [t["name"] for t in items["tasks"]] == list(TASKS) and "digits-mlp" in TASKS
    assert [e["name"] for e in items["entries"]] == list(ENTRIES) and "kfac" in ENTRIES


def test_list_table_mentions_the_task():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0 and "digits-mlp" in result.stdout


def test_unknown_task_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["groundtruth", "--task", "imagenet", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown task 'imagenet'" in result.stderr and "digits-mlp" in result.stderr


def test_unknown_preset_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["groundtruth", "--preset", "huge", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and "smoke" in result.stderr


def test_groundtruth_smoke_builds_and_prints_the_ceiling(tmp_path):
    result = runner.invoke(app, ["groundtruth", "--preset", "smoke", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "noise ceiling" in result.stdout
    assert list(tmp_path.glob("groundtruth/digits-mlp.v1/smoke-*/alpha0.30/chunk000.npz"))
    # each alpha's row shows the ceiling and interval of the losses it cached (noise_ceiling is checked against a
    # brute-force split-half Spearman-Brown in test_metrics_lds.py)
    gt = build_lds_groundtruth(get_task("digits-mlp"), get_preset("smoke"), tmp_path, progress=False)
    rows = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and re.fullmatch(r"[01]\.[0-9]", cells[0]):
            rows[float(cells[0])] = cells[1:]
    assert sorted(rows) == [0.3, 0.5, 0.7, 0.9], result.stdout
    for a, alpha in enumerate(gt.alphas):
        c = noise_ceiling(gt.losses[a])
        assert rows[round(float(alpha), 1)] == [f"{c.mean:.3f}", f"[{c.ci_low:.3f}, {c.ci_high:.3f}]", str(c.n_clipped),
                                                str(c.n_undefined)], (alpha, result.stdout)
    # the ceilings are not all alike: a row that printed one alpha's value for every alpha would fail above
    assert len({tuple(r) for r in rows.values()}) > 1


def test_run_help_names_the_new_options():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--dense-limit", "--in-process", "--entries"):
        assert option in result.stdout


def test_run_with_an_unknown_preset_fails_before_any_work(tmp_path):
    result = runner.invoke(app, ["run", "--preset", "huge", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "valid presets" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_catalogue_is_what_the_registries_say():
    """The torch-free catalogue the command line reads equals the built-in registries (regenerate it with
    ``python -m influence_bench.catalogue`` after changing an entry or a task)."""
    from influence_bench import catalogue

    assert catalogue.load() == json.loads(json.dumps(catalogue.build())), f"stale: run `{catalogue.REGENERATE}`"
    built_in = {n for n, cls in ENTRIES.items() if cls.__module__.startswith("influence_bench.")}
    assert {e["name"] for e in catalogue.load()["entries"]} == built_in and "kfac" in built_in


def test_the_catalogue_checks_names_as_the_entries_do():
    from influence_bench import catalogue
    from influence_bench.entries import UnknownEntryError, make_entry

    for name in ("kfac[separate=true,fisher=mc]", "ekfac[fisher=mc,samples=4]", "hessian[negative=abs]", "cg"):
        assert catalogue.entry_name(name) == make_entry(name).name
    for bad in ("kfca", "kfac[samples=4]", "kfac[fisher=exact]", "kfac[size=3]", "kfac[fisher]"):
        with pytest.raises(UnknownEntryError) as from_catalogue:
            catalogue.entry_name(bad)
        with pytest.raises(UnknownEntryError) as from_class:
            make_entry(bad)
        assert str(from_catalogue.value) == str(from_class.value)


QUICK = """
import sys
from influence_bench.cli import main
sys.argv = ["influence-bench", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "curvlinops", "pandas", "scipy") if m in sys.modules)
print("HEAVY:", ",".join(heavy) or "none", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "--json"], ["run", "--help"],
                                  ["run", "--task", "nope"], ["run", "--entries", "kfca"],
                                  ["run", "--entries", "kfac[samples=4]"], ["run", "--preset", "nope"],
                                  ["groundtruth", "--task", "nope"]])
def test_help_list_and_bad_names_answer_without_importing_torch(args):
    done = subprocess.run([sys.executable, "-c", QUICK, *args], capture_output=True, text=True, timeout=60)
    assert "HEAVY: none" in done.stderr, done.stderr
    bad = args[-1] in ("nope", "kfca", "kfac[samples=4]")
    assert done.returncode == (2 if bad else 0) and ("error:" in done.stderr) == bad, done.stderr


def test_a_plugin_that_is_nowhere_is_one_line_before_any_work(tmp_path):
    """A plugin module that does not exist is bad input (a typo): one line, exit 2. One that exists but raises
    while importing becomes a failure row of the run instead (tests/test_run.py)."""
    for plugin, why in (("no_such_plugin", "plugin module 'no_such_plugin' was not found"),
                        ("missing/entry.py", "plugin file 'missing/entry.py' does not exist")):
        done = subprocess.run([sys.executable, "-m", "influence_bench.cli", "run", "--plugins", plugin, "--out",
                               str(tmp_path / "never")], capture_output=True, text=True, timeout=120, cwd=tmp_path)
        message = " ".join(done.stderr.split())
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert why in message, message
        assert not (tmp_path / "never").exists()
