"""The sweep's answer: which rows are on the size/accuracy Pareto front, and the smallest row
that meets the gate.

A row r is on the front when no other row is at most as large and at least as accurate, and
strictly better in one of the two.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from onnxq.errors import OnnxqError

# Each metric a row carries, and whether higher is better. Over a model's outputs a row keeps
# the worst: the least cosine, SQNR and agreement, the largest errors.
METRICS: dict[str, bool] = {
    "cosine": True,
    "sqnr": True,
    "agreement": True,
    "rel_l2": False,
    "max_abs": False,
    "metric": True,  # what --metric-command printed; a gate with <= says lower is better
}
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Gate:
        """ "cosine>=0.99" and the like."""
        m = re.fullmatch(r"\s*([a-z_0-9]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*", text)
        if not m:
            raise OnnxqError(f"--gate {text!r}: write METRIC>=VALUE (or <=, >, <), such as cosine>=0.99")
        metric, op, raw = m.groups()
        if metric not in METRICS:
            raise OnnxqError(f"--gate {text!r}: {metric!r} is not a metric; choose from {', '.join(METRICS)}")
        try:
            value = float(raw)
        except ValueError:
            raise OnnxqError(f"--gate {text!r}: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise OnnxqError(f"--gate {text!r}: the threshold must be a finite number")
        return cls(metric, op, value)

    @property
    def higher_is_better(self) -> bool:
        """The gate's metric's direction: its own, or for --metric-command's, the gate's."""
        return self.op in (">=", ">") if self.metric == "metric" else METRICS[self.metric]

    def holds(self, row: dict) -> bool:
        x = row.get(self.metric)
        return x is not None and not row.get("error") and OPS[self.op](x, self.value)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"


def pareto_front(rows: list[dict], metric: str, higher_is_better: bool) -> list[dict]:
    """The rows no other row beats on both size and metric, smallest first."""
    scored = [r for r in rows if not r.get("error") and r.get(metric) is not None]
    sign = 1 if higher_is_better else -1
    out = []
    for r in scored:
        size, good = r["output_bytes"], sign * r[metric]
        beaten = any(
            o["output_bytes"] <= size
            and sign * o[metric] >= good
            and (o["output_bytes"] < size or sign * o[metric] > good)
            for o in scored
        )
        if not beaten:
            out.append(r)
    return sorted(out, key=lambda r: (r["output_bytes"], -sign * r[metric]))


def choose(rows: list[dict], gate: Gate) -> dict | None:
    """The smallest output that meets the gate (the more accurate of equal sizes), or None."""
    passing = [r for r in rows if gate.holds(r)]
    sign = 1 if gate.higher_is_better else -1
    return min(passing, key=lambda r: (r["output_bytes"], -sign * r[gate.metric]), default=None)
