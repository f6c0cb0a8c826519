import pytest
import torch

from conftest import random_members, short_recipe
from influence_bench.training import epoch_order, train_batched, train_single


def _max_diff(stack, b, model):
    theirs = list(model.parameters())
    ours = [p[b] for p in stack.parameters()]
    return max((a - t).abs().max().item() for a, t in zip(ours, theirs))


def test_batch_of_one_equals_single_model_loop(digits, digits_data):
    recipe = short_recipe(digits, epochs=5)
    member = random_members(1, digits_data.n_train, 800, seed=1)
    stack = train_batched(digits, digits_data, member, [7], recipe)
    model = train_single(digits, digits_data, member[0], 7, recipe)
    assert _max_diff(stack, 0, model) < 1e-5
    # and training moved the parameters a long way from the initialisation
    init = digits.init_model(7)
    assert max((a - b).abs().max().item() for a, b in zip(model.parameters(), init.parameters())) > 1e-2


def test_each_model_of_a_batch_follows_its_own_subset_and_seed(digits, digits_data):
    recipe = short_recipe(digits, epochs=2)
    members = random_members(3, digits_data.n_train, 500, seed=2)
    seeds = [0, 1, 0]
    stack = train_batched(digits, digits_data, members, seeds, recipe)
    for b, seed in enumerate(seeds):
        assert _max_diff(stack, b, train_single(digits, digits_data, members[b], seed, recipe)) < 1e-5
    # same seed, different subset -> different model
    assert (stack.weights[0][0] - stack.weights[0][2]).abs().max() > 1e-3


def test_unequal_subset_sizes_are_refused(digits, digits_data):
    members = torch.zeros(2, digits_data.n_train, dtype=torch.bool)
    members[0, :100] = True
    members[1, :101] = True
    with pytest.raises(ValueError, match="same number of points"):
        train_batched(digits, digits_data, members, [0, 1], short_recipe(digits, 1))


def test_leave_one_out_order_is_full_order_without_the_point():
    n, k = 50, 17
    full = torch.ones(n, dtype=torch.bool)
    loo = full.clone()
    loo[k] = False
    a = epoch_order(torch.Generator().manual_seed(3), full)
    b = epoch_order(torch.Generator().manual_seed(3), loo)
    assert torch.equal(a[a != k], b)


def test_stacked_loss_matches_module_loss(digits, digits_data):
    members = random_members(2, digits_data.n_train, 300, seed=4)
    stack = train_batched(digits, digits_data, members, [0, 1], short_recipe(digits, 1))
    losses = stack.per_example_loss(digits_data.x_test, digits_data.y_test)
    model = stack.model(1, digits)
    expected = torch.nn.functional.cross_entropy(model(digits_data.x_test), digits_data.y_test, reduction="none")
    assert torch.allclose(losses[1], expected.detach(), atol=1e-6)


def test_cosine_schedule_batch_of_one_equals_the_torch_scheduler_loop(digits_data):
    """The authors' CosineAnnealingLR recipe: the batched engine follows train_single (which steps
    torch's own scheduler after every epoch), and the schedule changes the model."""
    from influence_bench.tasks import get_task

    cosine = get_task("digits-mlp-cosine")
    recipe = short_recipe(cosine, epochs=4)
    member = random_members(1, digits_data.n_train, 600, seed=5)
    stack = train_batched(cosine, digits_data, member, [3], recipe)
    assert _max_diff(stack, 0, train_single(cosine, digits_data, member[0], 3, recipe)) < 1e-5
    constant = short_recipe(get_task("digits-mlp"), epochs=4)
    assert _max_diff(stack, 0, train_single(cosine, digits_data, member[0], 3, constant)) > 1e-4
    rates = recipe.learning_rates()
    assert rates[0] == recipe.lr and rates[-1] < rates[1] < recipe.lr  # annealed, stepped per epoch


def test_a_new_recipe_field_keeps_the_published_fingerprint(digits):
    """Fields added after version 1 appear in the fingerprint only where they differ from their
    default: digits-mlp v1's cache keys are the ones it always had."""
    from influence_bench.tasks import get_task

    assert "schedule" not in digits.to_dict()["recipe"]
    assert get_task("digits-mlp-cosine").to_dict()["recipe"]["schedule"] == "cosine"
    # the fingerprint digits-mlp v1 was published with (its cached ground truths are keyed by it)
    assert digits.fingerprint == "3d55c53762196616df97deac5067bf7e91eb3add36da3dcd5581bde8655470ae"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA path is untested here")
def test_the_batched_engine_on_cuda_follows_the_cpu(digits, digits_data):
    """CPU/CUDA parity: the same models on both devices, to float32 rounding (GPU kernels sum in another order)."""
    recipe = short_recipe(digits, epochs=2)
    members = random_members(3, digits_data.n_train, 500, seed=2)
    on_cpu = train_batched(digits, digits_data, members, [0, 1, 2], recipe)
    on_gpu = train_batched(digits, digits_data, members, [0, 1, 2], recipe, device="cuda")
    for cpu, gpu in zip(on_cpu.weights, on_gpu.weights):
        assert (cpu - gpu.cpu()).abs().max().item() < 1e-4
