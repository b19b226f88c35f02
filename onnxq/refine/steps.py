"""Data-driven quantization: inputs -> layer statistics -> bits per tensor -> codes -> biases.

    data (--calibration npz, or synthetic inputs)  -> E[x], E[x x^T] per layer   (calibrate.py)
    -> widths minimising measured output noise within --target-bits  (sensitivity.py, allocate.py)
    -> codes by error-compensating rounding on each layer's H        (gptq.py)
    -> biases shifted by -(W_q - W) E[x], shrunk by its standard error (bias.py)

Plain --bits without calibration, GPTQ or bias correction needs none of this.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import onnx
from threadpoolctl import threadpool_limits

from onnxq.data import samples as data
from onnxq.data import synthetic
from onnxq.data.samples import InputSpec, Sample
from onnxq.errors import OnnxqError
from onnxq.graph import external
from onnxq.graph.select import Weight
from onnxq.quant.layout import float_rows, from_rows, to_rows
from onnxq.quant.quantize import QuantizedTensor, with_codes
from onnxq.refine import bias, calibrate, sensitivity
from onnxq.refine.calibrate import LayerSpec, LayerStats
from onnxq.refine.gptq import Factored, damping_for, gptq_codes

SYNTHETIC_SAMPLES = 32
PROBE_SAMPLES = 16  # calibration samples per sensitivity run
Key = TypeVar("Key", bound=Hashable)  # what round_all_with_gptq's caller names each quantization by


@dataclass
class Data:
    mode: str  # "calibration" or "synthetic"
    source: str  # the npz path, or a description of the synthetic inputs
    samples: list[Sample]
    specs: list[InputSpec]

    def describe(self) -> str:
        return f"{self.mode} ({self.source}, {len(self.samples)} samples)"


@dataclass
class Layer:
    spec: LayerSpec
    stats: LayerStats


def load_data(
    model: onnx.ModelProto,
    path: str | None,
    samples: int | None,
    seed: int,
    plan: synthetic.Plan | None,
    limit: int | None = None,
) -> Data:
    """The calibration samples (at most `samples`), or synthetic ones from plan when there is no file;
    limit: the most bytes the file's arrays may take (data.read_samples)."""
    specs = data.input_specs(model)
    if path is not None:
        found = data.read_samples(path, specs, "calibration file", limit)
        return Data("calibration", path, found[:samples] if samples else found, specs)
    if plan is None:
        raise OnnxqError("synthetic calibration needs the synthetic inputs' plan; pass --calibration")
    count = samples or SYNTHETIC_SAMPLES
    return Data("synthetic", f"random inputs: {plan.describe()}", plan.feeds(count, seed, limit), specs)


def layer_statistics(
    model: onnx.ModelProto, weights: list[Weight], source: Data, count: int | None = None
) -> tuple[dict[str, list[Layer]], list[str]]:
    """Per weight, every main-graph layer that reads it, with its input statistics; and notes on
    the layers that saw no input. count: on about that many of the samples, spread over them."""
    specs, _ = calibrate.layer_specs(model, weights)
    arrays = sensitivity.in_place_arrays(model, weights)  # read in place, not copied with the model
    samples = source.samples if count is None else _spread(source.samples, count)
    stats = calibrate.collect_layer_stats(model, specs, samples, source.specs, arrays=arrays)
    external.evict(*(w.array for w in weights))  # its session read them all
    out: dict[str, list[Layer]] = {}
    for spec in specs:
        if spec.key in stats:
            out.setdefault(spec.weight, []).append(Layer(spec, stats[spec.key]))
    unseen = [spec.key for spec in specs if spec.key not in stats]
    notes = []
    if unseen:
        notes.append(
            f"{len(unseen)} layers saw no input in the {source.mode} data (e.g. {unseen[0]}: a branch not "
            "taken, or no output position); their weights are ranked by weight-space error and rounded "
            "to the nearest level"
        )
    return out, notes


def _hessian(layers: list[Layer]) -> np.ndarray | None:
    """The summed H of the layers that read a weight, when they agree on its shape."""
    hs = [layer.stats.hessian for layer in layers]
    if not hs or any(h.shape != hs[0].shape for h in hs):
        return None
    return np.sum(hs, axis=0)


# The last factorised H, by the statistics it came from: a transformer's q, k and v projections
# (and gate and up) read one input and share one LayerStats, so one factorisation serves them.
_FACTORED: weakref.WeakKeyDictionary[LayerStats, tuple[tuple[int, ...], Factored]] = (
    weakref.WeakKeyDictionary()
)


def _factored(layers: list[Layer], rows: np.ndarray) -> Factored | str:
    """The prepared H of the layers that read a weight (rows), or why there is none."""
    key = tuple(id(layer.stats) for layer in layers)
    cached = _FACTORED.get(layers[0].stats) if layers else None
    factored = cached[1] if cached is not None and cached[0] == key else None
    if factored is None:
        h = _hessian(layers)
        if h is None:
            return "nearest (no input statistics for this weight)"
        # H's columns seen set the damping.
        factored = Factored(h, damping_for(h.shape[1], sum(layer.stats.count for layer in layers)))
        _FACTORED.clear()
        _FACTORED[layers[0].stats] = (key, factored)
    g, k = factored.h.shape[:2]
    if k != rows.shape[1] or rows.shape[0] % g:
        return "nearest (the weight's layout does not match its layer's input)"
    return factored


def one_blas_thread():
    """BLAS on one thread, for a pass that interleaves its products with one-threaded work (GPTQ's
    column loop, bias correction): BLAS's other thread would spin between the products, CPU time
    that does no work."""
    return threadpool_limits(limits=1, user_api="blas")


def drop_factored() -> None:
    """Let the last factorised H go (a 4096-wide one holds 192 MB) once a pass over the weights ends."""
    _FACTORED.clear()


def _spread(samples: list[Sample], count: int) -> list[Sample]:
    """About count of the samples, spread evenly over them."""
    n = len(samples)
    return [samples[i] for i in sorted({int(i) for i in np.linspace(0, n - 1, min(count, n)).round()})]


def probe_feeds(source: Data, count: int = PROBE_SAMPLES) -> tuple[list[Sample], list[int]]:
    """About count samples spread evenly over the data, as runs; and how many samples each holds."""
    picked = _spread(source.samples, count)
    runs = list(data.batches(picked, source.specs, len(picked)))
    return [feed for feed, _ in runs], [k for _, k in runs]


def output_error(weight: Weight, layers: list[Layer]) -> Callable[[QuantizedTensor], float] | None:
    """q -> tr(dW H dW^T) over the layers that read the weight, or None without statistics that fit."""
    rows = float_rows(weight)
    stats = [layer.stats for layer in layers]
    if not stats or any(s.mean.shape[1] != rows.shape[1] or rows.shape[0] % s.mean.shape[0] for s in stats):
        return None
    return lambda q: sensitivity.layer_error(to_rows(weight, q.dequantized) - rows, stats)


def round_with_gptq(weight: Weight, q: QuantizedTensor, layers: list[Layer]) -> QuantizedTensor:
    """q with GPTQ codes, or q itself with its rounding saying why not."""
    return round_all_with_gptq(weight, {0: q}, layers)[0]


def round_all_with_gptq(
    weight: Weight, qs: dict[Key, QuantizedTensor], layers: list[Layer]
) -> dict[Key, QuantizedTensor]:
    """Each of one weight's quantizations with GPTQ codes (or itself, its rounding saying why
    not); the layer's H is factorised once for all of them."""
    rows = float_rows(weight)
    factored = _factored(layers, rows)
    if isinstance(factored, str):
        return {c: replace(q, rounding=factored) for c, q in qs.items()}
    out = {}
    for c, q in qs.items():
        codes = gptq_codes(q, rows, factored)
        layout = q.codes.shape
        out[c] = replace(
            with_codes(q, from_rows(weight, rows, layout), from_rows(weight, codes, layout)), rounding="gptq"
        )
    external.evict(weight.array)
    return out


def correct_biases(
    model: onnx.ModelProto, weight: Weight, q: QuantizedTensor, layers: list[Layer]
) -> list[str]:
    """Fold each reading layer's mean output shift into its bias; what was done, per layer."""
    done = []
    delta = to_rows(weight, q.dequantized).astype(np.float64) - float_rows(weight).astype(np.float64)
    nodes = {(n.name or n.output[0]): n for n in model.graph.node}
    by_output = {n.output[0]: n for n in model.graph.node if n.output}
    for i, layer in enumerate(layers):
        node = nodes.get(layer.spec.key) or by_output.get(layer.spec.key)
        if node is None:
            continue
        stats = layer.stats
        shift = bias.shrunk_shift(delta, stats.mean, stats.row_energy(delta), stats.samples)
        fresh = f"{weight.name}.onnxq.bias" + (f"{i}" if i else "")
        how = bias.correct(model.graph, node, shift, weight.array.dtype, fresh)
        done.append(f"{layer.spec.key}: {how or 'left alone (its bias is not a constant of the graph)'}")
    external.evict(weight.array)
    return done
