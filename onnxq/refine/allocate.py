"""Mixed precision: bits per tensor minimising sum_t noise_t(b_t) subject to sum_t bytes_t(b_t) <= budget.

A multiple-choice knapsack, solved exactly by dynamic programming over the
budget cut into STEPS units: each tensor's cost is rounded up to whole units,
so the answer always fits, and it is optimal among the allocations that fit
with one unit per tensor to spare.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np

from onnxq.errors import OnnxqError

K = TypeVar("K", bound=Any)  # an option: a width, or any orderable choice
STEPS = 8192


def allocate(
    costs: Mapping[str, Mapping[K, float]], noise: Mapping[str, Mapping[K, float]], budget: float
) -> dict[str, K]:
    """An option per tensor from its cost (bytes) and noise curves, within budget bytes."""
    names = list(costs)
    narrowest = sum(min(costs[n].values()) for n in names)
    if narrowest > budget:
        raise OnnxqError(
            f"the budget is {budget / 1024:.1f} KiB but even the narrowest widths take "
            f"{narrowest / 1024:.1f} KiB; raise --target-bits"
        )
    unit = budget / STEPS
    best = np.zeros(STEPS + 1)  # least noise of the tensors so far, for each whole-unit spend <= c
    choices = []
    for name in names:
        widths = sorted(costs[name])
        units = [int(np.ceil(costs[name][b] / unit - 1e-9)) for b in widths]
        options = np.full((len(widths), STEPS + 1), np.inf)
        for i, (b, c) in enumerate(zip(widths, units)):
            if c <= STEPS:
                options[i, c:] = best[: STEPS + 1 - c] + noise[name][b]
        pick = options.argmin(axis=0)
        best = options[pick, np.arange(STEPS + 1)]
        choices.append((widths, units, pick))
    if not np.isfinite(best[STEPS]):  # rounding up ate the slack: only the narrowest fit
        return {n: min(costs[n], key=lambda b: (costs[n][b], b)) for n in names}
    out: dict[str, K] = {}
    spend = STEPS
    for name, (widths, units, pick) in zip(reversed(names), reversed(choices)):
        i = int(pick[spend])
        out[name] = widths[i]
        spend -= units[i]
    return {n: out[n] for n in names}
