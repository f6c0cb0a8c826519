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
