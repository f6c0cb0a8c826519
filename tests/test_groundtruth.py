import numpy as np
import pytest

import influence_bench.training.batched as batched_module
from influence_bench.groundtruth import build_lds_groundtruth, draw_masks, get_preset, groundtruth_dir
from influence_bench.groundtruth.cache import default_cache_dir

SMOKE = get_preset("smoke")


@pytest.fixture
def count_trainings(monkeypatch):
    calls = []
    real = batched_module.train_batched

    def counting(*args, **kwargs):
        calls.append(args[2].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(batched_module, "train_batched", counting)
    return calls


def test_masks_have_protocol_sizes_and_are_reproducible(digits):
    for alpha in (0.3, 0.5, 0.7, 0.9):
        masks = draw_masks(digits, alpha, 5, 1617)
        assert (masks.sum(1) == int(np.floor(alpha * 1617))).all()
        assert np.array_equal(masks, draw_masks(digits, alpha, 5, 1617))
        assert len({m.tobytes() for m in masks}) == 5
    assert not np.array_equal(draw_masks(digits, 0.5, 1, 1617), draw_masks(digits, 0.7, 1, 1617)[:, :])


def test_build_keeps_every_seed_and_reuses_the_cache(digits, cache_dir, count_trainings):
    gt = build_lds_groundtruth(digits, SMOKE, progress=False)
    assert gt.losses.shape == (4, SMOKE.n_masks, SMOKE.n_seeds, 180)
    assert np.isfinite(gt.losses).all()
    assert not np.allclose(gt.losses[:, :, 0], gt.losses[:, :, 1])  # seeds differ: every seed is kept
    assert sum(count_trainings) == SMOKE.n_trainings
    assert groundtruth_dir(digits, SMOKE).is_relative_to(cache_dir) and default_cache_dir() == cache_dir
    again = build_lds_groundtruth(digits, SMOKE, progress=False)
    assert sum(count_trainings) == SMOKE.n_trainings  # nothing retrained
    assert np.array_equal(gt.losses, again.losses) and np.array_equal(gt.masks, again.masks)


@pytest.mark.parametrize("damage", ["flip", "truncate", "drop-hash", "wrong-hash"])
def test_damaged_chunk_is_reported_and_rebuilt(digits, cache_dir, count_trainings, damage, capsys):
    gt = build_lds_groundtruth(digits, SMOKE, progress=False)
    chunk = sorted(groundtruth_dir(digits, SMOKE).glob("alpha0.50/chunk*.npz"))[0]
    sha = chunk.with_name(chunk.name + ".sha256")
    if damage == "flip":
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        chunk.write_bytes(bytes(raw))
    elif damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:100])
    elif damage == "drop-hash":
        sha.unlink()
    else:
        sha.write_text("0" * 64 + "\n")
    count_trainings.clear()
    rebuilt = build_lds_groundtruth(digits, SMOKE, progress=False)
    assert str(chunk) in capsys.readouterr().err  # reported
    assert sum(count_trainings) == SMOKE.masks_per_chunk * SMOKE.n_seeds  # only that chunk retrained
    assert np.allclose(rebuilt.losses, gt.losses, atol=1e-6)


def test_interrupted_build_resumes_from_finished_masks(digits, cache_dir, monkeypatch):
    real = batched_module.train_batched
    budget = {"left": 3}

    def crash_after_three(*args, **kwargs):
        if budget["left"] == 0:
            raise KeyboardInterrupt
        budget["left"] -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(batched_module, "train_batched", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        build_lds_groundtruth(digits, SMOKE, progress=False)
    done = list(groundtruth_dir(digits, SMOKE).glob("alpha*/chunk*.npz"))
    assert len(done) == 3

    calls = []
    monkeypatch.setattr(batched_module, "train_batched", lambda *a, **k: calls.append(1) or real(*a, **k))
    gt = build_lds_groundtruth(digits, SMOKE, progress=False)
    n_chunks = len(SMOKE.alphas) * -(-SMOKE.n_masks // SMOKE.masks_per_chunk)
    assert len(calls) == n_chunks - 3 and np.isfinite(gt.losses).all()


def test_cache_key_changes_with_the_task(digits, cache_dir):
    import dataclasses

    other = dataclasses.replace(digits, version=2)
    assert groundtruth_dir(digits, SMOKE) != groundtruth_dir(other, SMOKE)
    assert groundtruth_dir(digits, SMOKE) != groundtruth_dir(digits, get_preset("standard"))
