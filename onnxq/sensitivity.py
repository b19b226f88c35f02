"""Measured sensitivity: noise_t = sum ||y_t - y||^2 / sum ||y||^2 over the model's outputs y
when only tensor t is replaced by its quantized value.

The weights become graph inputs of one session, so each measurement is a run,
not a new session. Measuring every tensor at every width would take a run per
pair; instead each tensor is measured once, at a reference width, and scaled to
the other widths by its layer's own output error: noise_t(b) = noise_t(ref) *
e_t(b) / e_t(ref), with e_t = tr(dW H dW^T) from the layer's input statistics
(or |dW|^2 where there are none).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxq.validate import session


def weights_as_inputs(
    model: onnx.ModelProto, names: Iterable[str]
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy whose main-graph initializers in names are graph inputs instead, and their values."""
    wanted = set(names)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    values: dict[str, np.ndarray] = {}
    kept = []
    for t in graph.initializer:
        if t.name in wanted:
            values[t.name] = numpy_helper.to_array(t)
            if not any(i.name == t.name for i in graph.input):
                graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            kept.append(t)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out, values


class Probe:
    """Runs the model with some weights swapped and says how far its outputs move."""

    def __init__(self, model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[dict[str, np.ndarray]]):
        swapped, self.weights = weights_as_inputs(model, names)
        self.session = session(swapped.SerializeToString())
        self.feeds = list(feeds)
        self.reference = [self._run(feed, {}) for feed in self.feeds]
        self.energy = sum(float(np.sum(y.astype(np.float64) ** 2)) for ys in self.reference for y in ys)

    @property
    def names(self) -> list[str]:
        return list(self.weights)

    def _run(self, feed: dict[str, np.ndarray], replace: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, {**feed, **self.weights, **replace})

    def noise(self, replace: dict[str, np.ndarray]) -> float:
        """Output noise energy relative to the float outputs, with these weights replaced."""
        err = 0.0
        for feed, ref in zip(self.feeds, self.reference):
            for y, r in zip(self._run(feed, replace), ref):
                err += float(np.sum((y.astype(np.float64) - r) ** 2))
        return err / self.energy if self.energy > 0 else err


def layer_error(delta_rows: np.ndarray, hessians: Sequence[np.ndarray]) -> float:
    """tr(dW H dW^T) summed over the layers that read the weight, or |dW|^2 without any."""
    if not hessians:
        return float(np.sum(delta_rows.astype(np.float64) ** 2))
    total = 0.0
    o, k = delta_rows.shape
    for h in hessians:
        g = h.shape[0]
        d = delta_rows.reshape(g, o // g, k).astype(np.float64)
        total += float(np.sum((d @ h) * d))  # batched matmul: BLAS, not einsum's loops
    return total


def noise_curves(
    measured: dict[str, float], errors: dict[str, dict[int, float]], reference: int
) -> dict[str, dict[int, float]]:
    """noise_t(b) = measured_t * e_t(b) / e_t(reference), for every tensor and width."""
    curves = {}
    for name, per_width in errors.items():
        base = per_width[reference]
        gain = measured[name] / base if base > 0 else 0.0
        curves[name] = {b: gain * e for b, e in per_width.items()}
    return curves
