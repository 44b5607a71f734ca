"""The vectorised sum tree against brute-force prefix sums."""

import numpy as np
import pytest

from agent.sum_tree import SumTree


def test_find_matches_brute_force_cumulative_sums():
    rng = np.random.default_rng(0)
    values = rng.random(1000) * (rng.random(1000) > 0.3)
    tree = SumTree(1000)
    tree.set_all(values)
    assert tree.total == pytest.approx(values.sum())
    prefix = rng.random(5000) * values.sum()
    expected = np.searchsorted(np.cumsum(values), prefix, side="right")
    np.testing.assert_array_equal(tree.find(prefix), expected)


def test_set_updates_ancestors_and_keeps_the_first_of_duplicate_leaves():
    tree = SumTree(5)
    tree.set(np.array([0, 1, 2, 3, 4]), np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert tree.total == pytest.approx(15.0)
    tree.set(np.array([4, 4, 0]), np.array([0.5, 7.0, 2.0]))
    np.testing.assert_allclose(tree.get(np.arange(5)), [2.0, 2.0, 3.0, 4.0, 0.5])
    assert tree.total == pytest.approx(11.5)
    assert tree.prefix_total(3) == pytest.approx(7.0)
    assert tree.prefix_total(0) == 0.0


def test_many_delta_updates_match_an_exact_rebuild():
    rng = np.random.default_rng(1)
    tree = SumTree(300)
    for _ in range(3000):
        leaves = rng.integers(0, 300, 32)
        tree.set(leaves, rng.random(32))
    exact = SumTree(300)
    exact.set_all(tree.get(np.arange(300)))
    np.testing.assert_allclose(tree.tree, exact.tree, rtol=1e-9, atol=1e-9)


def test_find_never_returns_a_zero_leaf_for_prefixes_inside_the_total():
    tree = SumTree(8)
    tree.set_all(np.array([0.0, 1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0]))
    leaves = tree.find(np.linspace(0.0, 2.999999, 50))
    assert set(leaves.tolist()) == {1, 4}


def test_a_deep_tree_agrees_with_cumulative_sums():
    # 40,000 leaves in a tree of 65,536 (16 levels), so a quarter of it is zero padding.
    rng = np.random.default_rng(2)
    values = rng.random(40_000) * (rng.random(40_000) < 0.7)  # 30% zero leaves
    tree = SumTree(40_000)
    assert tree.depth == 16
    tree.set_all(values)
    changed = rng.choice(40_000, 500, replace=False)
    values[changed] = rng.random(500)
    for start in range(0, 500, 50):  # delta updates through every level
        tree.set(changed[start : start + 50], values[changed[start : start + 50]])
    cumulative = np.cumsum(values)
    assert tree.total == pytest.approx(cumulative[-1], rel=1e-12)
    prefix = rng.random(2_000) * cumulative[-1]
    np.testing.assert_array_equal(tree.find(prefix), np.searchsorted(cumulative, prefix, side="right"))
    for end in (1, 31, 32, 33, 1_024, 1_025, 12_345, 39_999):
        assert tree.prefix_total(end) == pytest.approx(cumulative[end - 1], rel=1e-12)
