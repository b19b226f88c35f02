"""Data-driven quantization: inputs -> layer statistics -> bits per tensor -> codes -> biases.

    data (--calibration npz, or synthetic inputs)  -> E[x], E[x x^T] per layer   (calibrate.py)
    -> widths minimising measured output noise within --target-bits  (sensitivity.py, allocate.py)
    -> codes by error-compensating rounding on each layer's H        (gptq.py)
    -> biases shifted by -(W_q - W) E[x]                             (bias.py)

Plain --bits without calibration, GPTQ or bias correction needs none of this.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from onnxq import allocate, bias, calibrate, sensitivity
from onnxq.calibrate import LayerSpec, LayerStats
from onnxq.errors import OnnxqError
from onnxq.gptq import damping_for, gptq_codes
from onnxq.quantize import QuantizedTensor, with_codes
from onnxq.select import Weight
from onnxq.storage import fold
from onnxq.validate import conform_inputs

SYNTHETIC_SAMPLES = 32
PROBE_SAMPLES = 16  # calibration samples per sensitivity run
WIDTHS = range(1, 9)  # every width the allocation prices; the fallback's pool is drawn from it


@dataclass
class Data:
    mode: str  # "calibration" or "synthetic"
    source: str  # the npz path, or a description of the synthetic inputs
    arrays: dict[str, np.ndarray]
    units: dict[str, int] = field(default_factory=dict)  # rows per sample, per input (calibrate.input_units)

    @property
    def samples(self) -> int:
        return calibrate.sample_count(self.arrays, units=self.units)

    def describe(self) -> str:
        return f"{self.mode} ({self.source}, {self.samples} samples)"


@dataclass
class Layer:
    spec: LayerSpec
    stats: LayerStats


def load_data(model: onnx.ModelProto, path: str | None, samples: int | None, seed: int, dims) -> Data:
    """The calibration npz, or synthetic standard-normal inputs when there is none."""
    units = calibrate.input_units(model)
    if path is not None:
        arrays = calibrate.load_calibration(path, list(units), units)
        arrays = conform_inputs(arrays, calibrate.input_specs(model), path)
        if samples is not None:
            arrays = {n: a[: samples * units.get(n, 1)] for n, a in arrays.items()}
        return Data("calibration", path, arrays, units)
    count = samples or SYNTHETIC_SAMPLES
    arrays = calibrate.synthetic_calibration(model, count, seed, dims)
    return Data("synthetic", "standard normal inputs, no calibration data", arrays, units)


def layer_statistics(model: onnx.ModelProto, weights: list[Weight], data: Data) -> dict[str, list[Layer]]:
    """Per weight, every main-graph layer that reads it, with its input statistics."""
    specs, _ = calibrate.layer_specs(model, weights)
    stats = calibrate.collect_layer_stats(model, specs, data.arrays)
    out: dict[str, list[Layer]] = {}
    for spec in specs:
        out.setdefault(spec.weight, []).append(Layer(spec, stats[spec.key]))
    return out


def float_rows(weight: Weight) -> np.ndarray:
    """The weight as (output channels, K), the layout of its layer's input statistics."""
    a = weight.array
    if a.ndim < 2:
        return a.reshape(1, -1)
    return np.moveaxis(a, weight.axis, 0).reshape(a.shape[weight.axis], -1)


def _moved(weight: Weight) -> tuple[int, ...]:
    s = weight.array.shape
    return (s[weight.axis], *s[: weight.axis], *s[weight.axis + 1 :])


def to_rows(weight: Weight, values: np.ndarray) -> np.ndarray:
    """Values in a QuantizedTensor's layout (channel rows, or one row in the original order) as (O, K)."""
    a = weight.array
    if a.ndim < 2:
        return values.reshape(1, -1)
    if values.shape[0] == 1:
        return np.moveaxis(values.reshape(a.shape), weight.axis, 0).reshape(a.shape[weight.axis], -1)
    return values.reshape(a.shape[weight.axis], -1)


def from_rows(weight: Weight, rows: np.ndarray, layout: tuple[int, ...]) -> np.ndarray:
    """Inverse of to_rows, for a QuantizedTensor of the given codes shape."""
    if weight.array.ndim < 2 or layout[0] != 1:
        return rows.reshape(layout)
    return to_weight(weight, rows).reshape(layout)


def to_weight(weight: Weight, rows: np.ndarray) -> np.ndarray:
    """(O, K) rows back in the weight's own shape."""
    if weight.array.ndim < 2:
        return rows.reshape(weight.array.shape)
    return np.moveaxis(rows.reshape(_moved(weight)), 0, weight.axis)


def _hessian(layers: list[Layer]) -> np.ndarray | None:
    """The summed H of the layers that read a weight, when they agree on its shape."""
    hs = [layer.stats.hessian for layer in layers]
    if not hs or any(h.shape != hs[0].shape for h in hs):
        return None
    return np.sum(hs, axis=0)


def choose_widths(
    model: onnx.ModelProto,
    weights: list[Weight],
    widths: list[int],
    candidates: dict[str, dict[int, QuantizedTensor]],
    layers: dict[str, list[Layer]],
    data: Data,
    target_bits: float,
    progress: Callable[[int, int, str], None] | None = None,
    fmt=fold,
    storable: Callable[[int], bool] = lambda bits: True,
) -> tuple[dict[str, int], list[str]]:
    """Bits per weight, from widths, within target_bits on average: the indices and the parameters
    (codebooks, scales), as the issue defines the budget and the report counts bits per weight.

    The decoders' graph is not charged: it is a few KB per model, which the file's size
    and ratio show. fmt (a storage format) says what a width costs on disk: qdq stores
    3 bits as 4, for example. storable(bits) says whether the model, at its opset, can
    hold a width narrower than widths when none of widths fits (qdq's 2-bit weights
    need a newer opset than its 4-bit ones).

    candidates holds each weight quantized at some of the widths (at least the
    reference, round(target_bits)); above the widest of them, and below the narrowest for
    the fallback to 1 bit, a layer's error is extrapolated at 6 dB per bit, which is how
    rounding error falls once levels are dense, and saves quantizing every tensor at
    widths it will rarely get.
    """
    notes = []
    computed = sorted(next(iter(candidates.values())))
    reference = max(computed[0], min(computed[-1], round(target_bits)))
    every = list(WIDTHS)
    costs = {w.name: {b: cost_bytes(candidates[w.name][reference], b, fmt) for b in every} for w in weights}
    budget = target_bits * sum(w.array.size for w in weights) / 8
    main = {t.name for t in model.graph.initializer}
    measurable = [w for w in weights if w.name in main and w.graph is model.graph]
    fixed = [w for w in weights if w not in measurable]
    fixed_width = reference
    if fixed:
        notes.append(
            f"{len(fixed)} weights outside the main graph's initializers were not measured "
            f"and take {fixed_width} bits"
        )
    budget -= sum(costs[w.name][fixed_width] for w in fixed)

    errors: dict[str, dict[int, float]] = {}
    for w in measurable:
        rows = float_rows(w)
        hs = [layer.stats.hessian for layer in layers.get(w.name, [])]
        e = {
            b: sensitivity.layer_error(to_rows(w, q.dequantized) - rows, hs)
            for b, q in candidates[w.name].items()
        }
        for b in every:  # outside the computed widths: 6 dB per bit
            if b > computed[-1]:
                e[b] = e[computed[-1]] * 4.0 ** (computed[-1] - b)
            elif b < computed[0]:
                e[b] = e[computed[0]] * 4.0 ** (computed[0] - b)
        errors[w.name] = e
    feeds = probe_feeds(model, data)
    probe = sensitivity.Probe(model, [w.name for w in measurable], feeds)
    # Measured at the reference width and at the narrowest: the gain from layer error
    # to output noise changes at low widths, where extrapolating it misjudged tensors.
    probed = sorted({reference, computed[0]})
    measured: dict[str, dict[int, float]] = {}
    for i, w in enumerate(measurable):
        values = [to_weight(w, to_rows(w, candidates[w.name][b].dequantized)) for b in probed]
        measured[w.name] = dict(zip(probed, probe.noise(w.name, values)))
        if progress:
            progress(i + 1, len(measurable), f"sensitivity {w.name}")
    curves = sensitivity.noise_curves(measured, errors)
    chosen = _allocate_within(costs, curves, measurable, widths, budget, storable)
    chosen.update({w.name: fixed_width for w in fixed})
    notes.append(
        f"bits chosen by measured sensitivity on {min(PROBE_SAMPLES, data.samples)} {data.mode} samples "
        f"(each tensor measured at {' and '.join(map(str, probed))} bits, scaled by its layer's output error)"
    )
    return chosen, notes


def _allocate_within(costs, curves, measurable, widths, budget, storable) -> dict[str, int]:
    """The least-noise allocation of widths that fits the budget; when none does (a budget near
    2 bits, or many parameters per weight), the tensors may go down to 1 bit, at the widths the
    model can store. 2-bit indices alone fill a budget of 2 bits per weight, so --target-bits 2
    needs some 1-bit tensors to pay for the parameters."""
    names = [w.name for w in measurable]
    for pool in (widths, [b for b in WIDTHS if b <= widths[-1] and storable(b)]):
        try:
            return allocate.allocate(
                {n: {b: costs[n][b] for b in pool} for n in names},
                {n: {b: curves[n][b] for b in pool} for n in names},
                budget,
            )
        except OnnxqError:
            continue
    narrowest = min(pool)
    raise OnnxqError(
        f"--target-bits leaves {budget / 1024:.1f} KiB for the weights, too little for their "
        f"parameters even at {narrowest} bit{'s' if narrowest > 1 else ''}; raise --target-bits"
    )


def probe_feeds(model: onnx.ModelProto, data: Data) -> list[dict[str, np.ndarray]]:
    """About PROBE_SAMPLES samples as feeds: one batch if the batch axis is free, else a run per sample.

    The runs are those calibration makes (calibrate.model_batch): a sample is data.units rows
    of each input.
    """
    batch = calibrate.model_batch(model, PROBE_SAMPLES)
    runs = calibrate.iter_batches(data.arrays, batch, data.units)
    return list(itertools.islice(runs, -(-PROBE_SAMPLES // batch)))


def cost_bytes(q: QuantizedTensor, bits: int | None = None, fmt=fold) -> float:
    """What a weight's bits per weight count at q's width (or bits) in a storage format (default
    fold): its indices and its parameters."""
    return fmt.index_bytes(replace(q, bits=bits or q.bits)) + fmt.codebook_bytes(q)


def output_error(weight: Weight, layers: list[Layer]) -> Callable[[QuantizedTensor], float] | None:
    """q -> tr(dW H dW^T) over the layers that read the weight, or None without statistics that fit."""
    rows = float_rows(weight)
    hs = [layer.stats.hessian for layer in layers]
    if not hs or any(h.shape[1:] != (rows.shape[1],) * 2 or rows.shape[0] % h.shape[0] for h in hs):
        return None
    return lambda q: sensitivity.layer_error(to_rows(weight, q.dequantized) - rows, hs)


def round_with_gptq(weight: Weight, q: QuantizedTensor, layers: list[Layer]) -> tuple[QuantizedTensor, str]:
    """q with GPTQ codes, or q itself and why not."""
    h = _hessian(layers)
    if h is None:
        return q, "nearest (no input statistics for this weight)"
    rows = float_rows(weight)
    if h.shape[1] != rows.shape[1] or rows.shape[0] % h.shape[0]:
        return q, "nearest (the weight's layout does not match its layer's input)"
    # A single level table (tensor granularity) serves every row; H's columns seen set the damping.
    codes = gptq_codes(q, rows, h, damping_for(h.shape[1], sum(layer.stats.count for layer in layers)))
    layout = q.codes.shape
    return with_codes(q, from_rows(weight, rows, layout), from_rows(weight, codes, layout)), "gptq"


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
        shift = bias.output_shift(delta, layer.stats.mean)
        fresh = f"{weight.name}.onnxq.bias" + (f"{i}" if i else "")
        how = bias.correct(model.graph, node, shift, weight.array.dtype, fresh)
        done.append(f"{layer.spec.key}: {how or 'left alone (its bias is not a constant of the graph)'}")
    return done
