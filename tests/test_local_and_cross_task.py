"""A task on a user's own .npz, and the cross-task leaderboard over two such tasks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import influence_bench
from influence_bench.tasks import get_task
from influence_bench.tasks.local import LocalDataError, local_task


def write_npz(path, regression: bool = False, seed: int = 0, **override):
    rng = np.random.default_rng(seed)
    x_train, x_test = rng.normal(size=(48, 6)), rng.normal(size=(24, 6))
    w = rng.normal(size=6)
    if regression:
        y_train, y_test = x_train @ w + 0.1 * rng.normal(size=48), x_test @ w
    else:
        y_train, y_test = (x_train @ w > 0).astype(np.int64) + (x_train[:, 0] > 1), (x_test @ w > 0).astype(np.int64)
    arrays = dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_a_local_file_is_a_task_with_its_given_split(tmp_path):
    path = write_npz(tmp_path / "mine.npz")
    spec = local_task(path, "mlp")
    raw = np.load(path)
    data = spec.data
    assert spec.name == "local-mine-mlp" and spec.loss.name == "cross-entropy"
    assert data.n_train == 48 and data.n_test == 24 and torch.equal(data.y_train, torch.as_tensor(raw["y_train"]))
    mean, std = raw["x_train"].mean(0), raw["x_train"].std(0)
    assert np.allclose(data.x_test.numpy(), (raw["x_test"] - mean) / std, atol=1e-5)  # train-fitted scaler
    assert spec.model.layer_sizes == (6, 64, 32, 3)
    assert get_task(f"local:mlp:{path}").fingerprint == spec.fingerprint
    regression = local_task(write_npz(tmp_path / "reg.npz", regression=True), "logreg")
    assert regression.loss.name == "squared-error" and regression.data.y_train.shape == (48, 1)
    changed = write_npz(tmp_path / "mine.npz", seed=1)
    assert local_task(changed, "mlp").cache_dict()["data"] != spec.cache_dict()["data"]


@pytest.mark.parametrize(("override", "model", "message"), [
    ({"y_test": None}, "mlp", "lacks y_test"),
    ({"y_train": np.zeros(5, dtype=np.int64)}, "mlp", "x_train has 48 rows, y_train 5"),
    ({}, "resnet", "unknown model 'resnet'; the built-in factories are logreg, mlp, cnn-8x8"),
    ({}, "cnn-8x8", "image .* has 64 inputs, the data 6"),
])
def test_a_bad_local_file_says_what_to_fix(tmp_path, override, model, message):
    path = write_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(LocalDataError, match=message):
        local_task(path, model)
    not_npz = tmp_path / "text.npz"
    not_npz.write_text("not an archive")
    with pytest.raises(LocalDataError, match="cannot read"):
        local_task(not_npz, "mlp")


def test_run_all_writes_the_cross_task_leaderboard(tmp_path):
    """Two local tasks (classification, regression), three entries in process: per-task ranks, the Borda sum
    over tasks, the LDS tables with the ceiling, and kronfluence's EK-FAC skipped on the regression task."""
    pytest.importorskip("kronfluence")
    a = f"local:logreg:{write_npz(tmp_path / 'cls.npz')}"
    b = f"local:logreg:{write_npz(tmp_path / 'reg.npz', regression=True)}"
    outcomes = influence_bench.run_all("smoke", ["identity", "ggn", "ekfac-kronfluence"], tasks=[a, b],
                                       results_root=tmp_path / "results", report_dir=tmp_path / "reports",
                                       isolate=False, progress=False, loo=False, alphas=[0.5])
    assert all(isinstance(o, influence_bench.api.RunResults) for o in outcomes.values()), outcomes
    assert list(outcomes) == ["local-cls-logreg", "local-reg-logreg"]
    assert "squared-error" in outcomes["local-reg-logreg"].skipped["ekfac-kronfluence"]
    from influence_bench.report.cross_task import load_task_results, overall_ranking

    tasks = load_task_results([r.out_dir for r in outcomes.values()])
    overall = overall_ranking(tasks)
    expected = pd.Series(0.0, index=overall.index)
    for t in tasks:
        expected += (len(t.rank) - t.rank.overall.reindex(overall.index)).fillna(0)
    assert overall.points.tolist() == expected.tolist()
    assert overall.loc["ekfac-kronfluence", "tasks_ranked"] == 1
    markdown = (tmp_path / "reports" / "tasks.md").read_text()
    assert "## Overall rank (Borda across tasks)" in markdown and "noise ceiling" in markdown
    assert "| ekfac-kronfluence | local-reg-logreg | skipped |" in markdown
    assert "<h2>Overall rank (Borda across tasks)</h2>" in (tmp_path / "reports" / "tasks.html").read_text()
