"""allocate: widths within budget, and no allocation with a unit per tensor to spare does better."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxq.errors import OnnxqError
from onnxq.refine.allocate import STEPS, allocate

WIDTHS = (2, 3, 4, 5, 6)


def curves(sizes, gains):
    costs = {f"t{i}": {b: n * b / 8 + 16 for b in WIDTHS} for i, n in enumerate(sizes)}
    noise = {f"t{i}": {b: g * 4.0**-b for b in WIDTHS} for i, g in enumerate(gains)}
    return costs, noise


def total(curve, widths):
    return sum(curve[n][b] for n, b in widths.items())


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(8, 4000), min_size=1, max_size=4),
    data=st.data(),
)
def test_it_matches_brute_force_up_to_the_rounding_of_costs(sizes, data):
    gains = data.draw(st.lists(st.floats(0.01, 1000), min_size=len(sizes), max_size=len(sizes)))
    costs, noise = curves(sizes, gains)
    low = total(costs, {n: 2 for n in costs})
    high = total(costs, {n: 6 for n in costs})
    budget = data.draw(st.floats(low, high))
    widths = allocate(costs, noise, budget)
    assert total(costs, widths) <= budget * (1 + 1e-12)
    slack = len(costs) * budget / STEPS
    feasible = [
        total(noise, dict(zip(costs, combo)))
        for combo in itertools.product(WIDTHS, repeat=len(costs))
        if total(costs, dict(zip(costs, combo))) <= budget - slack
    ]
    if feasible:
        assert total(noise, widths) <= min(feasible) * (1 + 1e-9)


def test_noise_curves_that_are_not_convex_are_solved_too():
    costs = {"a": {2: 10.0, 3: 15.0, 4: 20.0}, "b": {2: 10.0, 3: 15.0, 4: 20.0}}
    noise = {"a": {2: 10.0, 3: 9.9, 4: 0.0}, "b": {2: 5.0, 3: 1.0, 4: 0.9}}
    assert allocate(costs, noise, 35.05) == {"a": 4, "b": 3}  # a greedy by rate picks b=3 first, then a=3


def test_a_sensitive_tensor_gets_more_bits_than_a_robust_one():
    costs, noise = curves([1000, 1000], [1000.0, 1.0])
    widths = allocate(costs, noise, total(costs, {"t0": 4, "t1": 4}))
    assert widths["t0"] > widths["t1"]


def test_a_big_budget_buys_the_widest_everywhere():
    costs, noise = curves([100, 200, 300], [1.0, 2.0, 3.0])
    assert set(allocate(costs, noise, 1e12).values()) == {6}


def test_a_budget_below_the_narrowest_widths_is_an_error_that_says_what_to_do():
    costs, noise = curves([1000], [1.0])
    with pytest.raises(OnnxqError, match="raise --target-bits"):
        allocate(costs, noise, 10.0)
