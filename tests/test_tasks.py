import shutil

import numpy as np
import pytest
import torch

import influence_bench.groundtruth.reference as reference_module
from influence_bench.groundtruth import reference_model
from influence_bench.tasks import TASKS, UnknownTaskError, get_task


def test_digits_split_matches_protocol(digits, digits_data):
    assert (digits_data.n_train, digits_data.n_test) == (1617, 180)
    # PROTOCOL.md section 1, written out independently
    perm = np.random.RandomState(0).choice(np.arange(1797), 1797, replace=False)
    train, test = digits.split_indices(1797)
    assert np.array_equal(train, perm[:1617]) and np.array_equal(test, perm[1617:])
    # standardised with statistics of the training part only
    assert np.allclose(digits_data.x_train.mean(0).numpy(), 0, atol=1e-5)
    assert not np.allclose(digits_data.x_test.mean(0).numpy(), 0, atol=1e-3)


def test_digits_model_has_6570_parameters(digits):
    model = digits.make_model()
    assert sum(p.numel() for p in model.parameters()) == 6570 == digits.n_params
    assert [type(m).__name__ for m in model] == ["Linear", "GELU", "Linear", "GELU", "Linear"]


@pytest.fixture(scope="module")
def reference_cache(digits, tmp_path_factory):
    """A cache holding digits-mlp's reference model, trained once for this module."""
    cache = tmp_path_factory.mktemp("reference-cache")
    reference_model(digits, cache)
    return cache


def test_reference_model_reaches_sensible_accuracy(digits, digits_data, reference_cache, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the reference model was trained again")

    monkeypatch.setattr(reference_module, "train_batched", no_training)
    model = reference_model(digits, reference_cache)  # loads the checkpoint instead of training again
    with torch.no_grad():
        accuracy = (model(digits_data.x_test).argmax(1) == digits_data.y_test).float().mean().item()
    assert accuracy >= 0.95  # measured: 0.983 (177 of 180)


def test_unknown_task_lists_valid_names():
    with pytest.raises(UnknownTaskError) as err:
        get_task("mnist-resnet")
    assert "digits-mlp" in str(err.value)


def test_versioned_key_and_fingerprint(digits):
    assert get_task("digits-mlp.v1") is digits
    assert len({t.fingerprint for t in TASKS.values()}) == len(TASKS)
    import dataclasses

    assert dataclasses.replace(digits, version=2).fingerprint != digits.fingerprint


def test_corrupt_reference_checkpoint_is_reported_and_retrained(digits, reference_cache, cache_dir, capsys):
    shutil.copytree(reference_cache / "models", cache_dir / "models")
    first = reference_model(digits, reference_cache)
    (checkpoint,) = cache_dir.glob("models/digits-mlp.v1/reference-*.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:-10])  # truncated
    again = reference_model(digits, cache_dir)
    assert str(checkpoint) in capsys.readouterr().err
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(first.state_dict().values(), again.state_dict().values()))


def test_digits_logreg_is_convex_logistic_regression_on_the_digits_split(digits):
    """One Linear(64, 10) (650 parameters) on digits-mlp's split and recipe; a batch of one follows the plain loop;
    at a trained model its Hessian is its GGN (the loss is convex in the parameters)."""
    from conftest import random_members, short_recipe
    from influence_bench.curvature.exact import exact_ggn, exact_hessian
    from influence_bench.training import train_batched, train_single

    spec = get_task("digits-logreg")
    assert spec.n_params == 650 == sum(p.numel() for p in spec.make_model().parameters())
    assert [type(m).__name__ for m in spec.make_model()] == ["Linear"]
    assert spec.recipe == digits.recipe and spec.split_seed == digits.split_seed and spec.key == "digits-logreg.v1"
    assert spec.fingerprint != digits.fingerprint
    data = spec.data
    member = random_members(1, data.n_train, 400, seed=3)
    recipe = short_recipe(spec, epochs=3)
    stack = train_batched(spec, data, member, [5], recipe)
    model = train_single(spec, data, member[0], 5, recipe)
    assert max((p[0] - t).abs().max().item() for p, t in zip(stack.parameters(), model.parameters())) < 1e-5
    model = model.double()
    x, y = data.x_train[:300].double(), data.y_train[:300]
    hessian, ggn = exact_hessian(model, x, y, spec.loss), exact_ggn(model, x, spec.loss)
    assert torch.allclose(hessian, ggn, rtol=0, atol=1e-10 * float(ggn.abs().max()))
    assert float(torch.linalg.eigvalsh(hessian)[0]) > -1e-10 * float(ggn.abs().max())
