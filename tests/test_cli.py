import json
import re

from typer.testing import CliRunner

from influence_bench.cli import app

runner = CliRunner()


def test_list_json_names_every_task_and_entry():
    result = runner.invoke(app, ["list", "--json"])
    assert result.exit_code == 0
    items = json.loads(result.stdout)
    assert {"tasks", "entries"} <= set(items)
    assert "digits-mlp" in [t["name"] for t in items["tasks"]]
    assert all("name" in e for e in items["entries"])


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
    assert re.search(r"0\.5 +│ +-?[01]\.[0-9]{3} +│ \[", result.stdout), result.stdout  # the ceiling at alpha 0.5
    assert list(tmp_path.glob("groundtruth/digits-mlp.v1/smoke-*/alpha0.30/chunk000.npz"))


def test_run_help_names_the_new_options():
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0
    for option in ("--dense-limit", "--in-process", "--entries"):
        assert option in result.stdout


def test_run_with_an_unknown_preset_fails_before_any_work(tmp_path):
    result = runner.invoke(app, ["run", "--preset", "huge", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "valid presets" in result.stderr
    assert not (tmp_path / "out").exists()
