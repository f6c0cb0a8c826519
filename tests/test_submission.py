"""A submitter's path, as a user would walk it: the example package (examples/my-entry) installed into a
fresh virtual environment and taken through ``list``, ``check`` and ``run``; and the README's submission
example run verbatim in a fresh directory."""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

from influence_bench import schema

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
EXAMPLE = ROOT / "examples" / "my-entry"


def fresh_venv(path: Path) -> Path:
    """A new virtual environment that sees this one's packages (influence_bench and its dependencies, through a
    .pth file) but installs into its own site-packages, so that what a test installs there never reaches the
    environment of the other tests."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    python = path / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(site, "zz_parent_environment.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return python


def run(args: list[str], cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture
def user_env(tmp_path):
    """The environment a user's shell would have: no PYTHONPATH, one torch thread per process here."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update({"INFLUENCE_BENCH_THREADS": "1", "OMP_NUM_THREADS": "1"})
    return env


def test_the_example_package_installed_as_a_user_would(tmp_path, user_env):
    """pip install examples/my-entry into a fresh environment: the entry is found through its entry point by
    list, passes check, and appears in the leaderboard of a run that names it. The run uses the test suite's
    tiny task (tests/bench_plugins.py) to stay fast; check then ranks it against reference entries run beside it."""
    python = fresh_venv(tmp_path / "venv")
    package = tmp_path / "my-entry"
    shutil.copytree(EXAMPLE, package, ignore=shutil.ignore_patterns("build", "*.egg-info"))  # builds leave no trace
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         str(package)], tmp_path, user_env)
    cli = [str(python), "-m", "influence_bench"]

    listed = json.loads(run(cli + ["list", "--json"], tmp_path, user_env).stdout)
    entries = {e["name"]: e for e in listed["entries"]}
    assert entries["block-empirical-fisher"]["origin"].startswith("my_entry:BlockEmpiricalFisher (entry point of influence_bench_my_entry")
    assert entries["block-empirical-fisher"]["capabilities"] == "eigen,operator"

    user_env["PYTHONPATH"] = str(TESTS)  # the tiny task of the test suite, as a plugin module
    checked = run(cli + ["check", "block-empirical-fisher", "--task", "digits-tiny", "--plugins", "bench_plugins",
                         "--in-process", "--out", "check"], tmp_path, user_env)
    text = " ".join(checked.stdout.split())
    assert "block-empirical-fisher passed the kit and ran" in text
    assert re.search(r"rank \d+=? of 6 by tuned LDS@0.5 against reference entries run beside it", text), text
    assert "same_seed_same_scores" in text and "survives_pickling" in text

    run(cli + ["run", "--task", "digits-tiny", "--preset", "smoke", "--plugins", "bench_plugins", "--entries",
               "identity,block-empirical-fisher", "--no-loo", "--out", "run"], tmp_path, user_env)
    run(cli + ["report", "run", "--out", "report"], tmp_path, user_env)
    table = pd.read_parquet(tmp_path / "run" / schema.RESULTS_FILE)
    assert (table[(table.entry == "block-empirical-fisher") & (table.metric == "lds")].status == "ok").all()
    assert "block-empirical-fisher" in (tmp_path / "report" / "leaderboard.md").read_text()
    # the package went into the fresh environment only
    from influence_bench.plugins import ENTRY_GROUP, outside_names

    assert "block-empirical-fisher" not in outside_names(ENTRY_GROUP)


def readme_block(marker: str) -> str:
    """The fenced code block that follows ``<!-- submission-example: MARKER -->`` in README.md."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- submission-example: {re.escape(marker)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"README.md has no block after <!-- submission-example: {marker} -->"
    return match.group(1)


@pytest.mark.e2e
def test_the_readmes_submission_example_verbatim(tmp_path, user_env):
    """The README's my_entry.py, saved in a fresh directory, and its commands run there as written: with the
    console script of this environment, no PYTHONPATH, the smoke preset and its own output directory.

    End to end on digits-mlp (about 5 minutes here: the reference model, the exact GGN reference twice), so it is
    not in the default run; CI runs it after the suite (``.ci/quality-gate``: ``pytest -m e2e``)."""
    (tmp_path / "my_entry.py").write_text(readme_block("my_entry.py"))
    commands = [line for line in readme_block("commands").splitlines() if line.strip() and not line.startswith("#")]
    assert commands and all(c.startswith("influence-bench ") for c in commands)
    user_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), user_env.get("PATH", "")])
    outputs = [run(["bash", "-c", command], tmp_path, user_env).stdout for command in commands]
    text = " ".join(" ".join(outputs).split())
    assert "block-empirical-fisher passed the kit and ran" in text
    assert re.search(r"rank \d+=? of \d+ by tuned LDS@0.5 against the built-in entries of the committed baseline", text)
    results = next(p.parent for p in tmp_path.glob("results/*/" + schema.RESULTS_FILE) if "check-" not in str(p))
    table = pd.read_parquet(results / schema.RESULTS_FILE)
    assert set(table.preset) == {"smoke"}
    assert (table[(table.entry == "block-empirical-fisher") & (table.metric == "lds")].status == "ok").all()
