import json

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
    assert "noise ceiling" in result.stdout and "0.9" in result.stdout
    assert list(tmp_path.glob("groundtruth/digits-mlp.v1/smoke-*/alpha0.30/chunk000.npz"))
