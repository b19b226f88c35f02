"""--target-bits: a storage choice per tensor (a width per channel or per tensor, or float) that
minimises the model's measured output noise within the budget:

    min sum_t noise_t(c_t)  subject to  sum_t bytes_t(c_t) <= target_bits * sum_t n_t / 8

bytes count the indices, the per-group parameters and, for a tensor left in float, its
float bytes; on a small model, a mix of widths also pays for the decoder each width beyond
the first adds in each graph, which can cost as much as its weights (_solve_with_decoders).
noise_t(c) is measured in onnxruntime with t alone swapped (sensitivity.Probe)
at two widths and scaled to the others by the layer's own output error (sensitivity.py).
The solution is then checked as a whole: the model with every tensor swapped at once is
measured against an allocation blind to sensitivity (each tensor's relative error counts
alike) and against uniform widths where they fit. With calibration data the least noisy is
kept only when it beats that baseline (uniform, else near-uniform widths) by SIGNIFICANCE
standard errors over the samples, so that a ranking that a few samples decide falls back.
On synthetic inputs, whose ranking can be wrong on real ones, uniform widths are kept whenever
they fit the budget, and otherwise the measured allocation only when it beats the near-uniform
widths by a clear margin (SYNTHETIC_MARGIN); and that allocation rounds no tensor more coarsely,
relative to its channels' energy, than the near-uniform widths round their coarsest (_capped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import onnx

from onnxq.errors import OnnxqError
from onnxq.graph import external
from onnxq.graph.rewrite import default_opset, inline_decoders
from onnxq.graph.select import Weight
from onnxq.quant.layout import float_rows, to_rows, weight_array
from onnxq.quant.quantize import QuantizedTensor
from onnxq.refine import allocate, blockwise, sensitivity
from onnxq.refine.calibrate import LayerStats
from onnxq.refine.steps import PROBE_SAMPLES, Data, Layer, probe_feeds
from onnxq.storage.base import DOMAIN, Piece

WIDTHS = range(1, 9)  # every width the allocation prices; the fallback's pool is drawn from it
PER_TENSOR_OFFER = (
    0.25  # offer one codebook per tensor when per-channel parameters cost this many bits per weight
)


@dataclass(frozen=True, order=True)
class Choice:
    """How one tensor is stored: bits per weight (0: left in float), and whether per tensor."""

    bits: int
    per_tensor: bool = False

    def __str__(self) -> str:
        if self.bits == 0:
            return "float"
        return f"{self.bits} bits" + (" per tensor" if self.per_tensor else "")


FLOAT = Choice(0)
Make = Callable[[Weight, Choice], QuantizedTensor]  # quantizes a weight as a choice says (and rounds it)


@dataclass
class Allocation:
    chosen: dict[str, Choice]
    quantized: dict[str, QuantizedTensor]  # every weight not left in float
    notes: list[str]


@dataclass
class _Priced:
    """Per weight and choice: bytes, the layer's output error, and the weight's error relative to
    each output channel's energy (averaged over the channels)."""

    costs: dict[str, dict[Choice, float]]
    errors: dict[str, dict[Choice, float]]
    relative: dict[str, dict[Choice, float]]


def choose(
    model: onnx.ModelProto,
    weights: list[Weight],
    computed: dict[str, dict[Choice, QuantizedTensor]],
    layers: dict[str, list[Layer]],
    source: Data,
    target_bits: float,
    widths: list[int],
    make: Make,
    fmt,
    storable: Callable[[int], bool] = lambda bits: True,
    progress: Callable[[int, int, str], None] | None = None,
    probe_samples: int | None = None,
    by: str = "auto",
) -> Allocation:
    """A Choice per weight within target_bits on average (see the module docstring).

    computed holds each weight quantized at some choices (at least the reference width per
    channel, round(target_bits)); make quantizes any other choice the solution needs.
    widths are the candidate widths; when none of them fits, narrower storable ones may.
    Without real data (source.mode synthetic) no tensor is left in float: a tensor that looks
    fragile on synthetic inputs may not be on real ones. probe_samples: the samples each tensor's
    noise is measured on; None: up to PROBE_SAMPLES, fewer (at least MIN_PROBE_SAMPLES) when
    the measurement would take more than PROBE_MACS multiply-adds. by: how the noise is measured
    (SENSITIVITIES: per tensor, by blocks, or auto).
    """
    elements = sum(w.array.size for w in weights)
    budget = target_bits * elements / 8
    probed = _probed(computed, round(target_bits))
    exact = not _measured_alone(computed, probed)
    priced = _price(weights, computed, layers, fmt, exact)
    if source.mode == "calibration":
        _offer_floats(weights, priced, round(target_bits))
    probe, why = _probe(model, weights, source, probe_samples, layers, by)
    measured = _measure(weights, computed, probe, probed, progress)
    if not exact and any(not any(v > 0 for v in m.values()) for m in measured.values()):
        priced.errors = _price(weights, computed, layers, fmt).errors  # a median gain needs them
    curves = _curves(weights, priced, measured)
    pools = [_pool(priced, widths), _pool(priced, [b for b in WIDTHS if b <= widths[-1] and storable(b)])]
    decoders = decoder_bytes(model, weights, computed, make, fmt, pools[-1])
    if sum(decoders.values()) - max(decoders.values(), default=0.0) <= DECODER_SHARE * budget:
        decoders = {}  # even every width mixed would add too few bytes to count
    graph_of = {w.name: id(w.graph) for w in weights}
    near = _solve_with_decoders(
        priced.costs, _blind(priced.relative), pools, budget, fmt, elements, decoders, graph_of
    )
    costs = priced.costs if source.mode == "calibration" else _capped(priced, near)
    options = {
        MEASURED: _solve_with_decoders(costs, curves, pools, budget, fmt, elements, decoders, graph_of),
        "near-uniform widths": near,
    }
    uniform = {w.name: Choice(round(target_bits)) for w in weights}
    if sum(priced.costs[n][c] for n, c in uniform.items() if c in priced.costs[n]) <= budget * (1 + 1e-9):
        options[f"{UNIFORM} {round(target_bits)} bits"] = uniform
    parts = {
        label: probe.noise_parts(
            _Decoded(
                {
                    w.name: partial(_values_of, w, a[w.name], computed, make)
                    for w in weights
                    if a[w.name] != FLOAT
                }
            )
        )
        for label, a in options.items()
    }
    noise = {label: float(p.sum()) for label, p in parts.items()}
    kept = _keep(parts, source.mode)
    notes = _notes(probe, source, weights, probed, why, noise, kept, len(parts[kept]))
    chosen = options[kept]
    extra = extra_decoders(chosen, decoders, graph_of)
    if extra:
        notes.append(
            f"{extra:.0f} bytes of the budget pay the decoders of the "
            f"{len({c.bits for c in chosen.values() if c.bits})} widths mixed (one per width and graph)"
        )
    quantized = {
        w.name: _quantized(w, chosen[w.name], computed, make) for w in weights if chosen[w.name] != FLOAT
    }
    return Allocation(chosen, quantized, notes)


def _notes(probe, source: Data, weights, probed, why: str, noise: dict, kept: str, samples: int) -> list[str]:
    """What the allocation measured, what it kept, and why, for the report."""
    options = list(noise)
    notes = [
        (
            f"widths chosen by measured sensitivity on {probe.samples} of the {len(source.samples)} "
            f"{source.mode} samples (each of the {len(weights)} tensors runs them at "
            f"{' and '.join(map(str, probed))} bits, its noise scaled to other widths by its layer's "
            f"output error; {why})"
            + (
                f"; measured block by block, in {len(probe.segments)} segments of the graph, each "
                "tensor in its segment and each segment's gain to the outputs"
                if isinstance(probe, blockwise.BlockProbe)
                else ""
            )
        ),
        "output noise on those samples, every tensor swapped, as a share of the outputs' energy: "
        + ", ".join(f"{noise[label]:.3g} with {label}" for label in options)
        + f"; kept {kept}",
    ]
    best = min(noise, key=lambda label: noise[label])
    if kept != best and source.mode == "calibration":
        notes.append(
            f"kept {kept} although {best} measured less noise: on these {samples} samples it "
            f"is not less by {SIGNIFICANCE:g} standard errors of the per-sample difference, and an "
            "allocation chosen on the same few samples it is judged on looks better on them than it is"
        )
    elif kept != best:
        notes.append(
            f"kept {kept} although {best} measured less noise: without "
            "real data uniform widths are kept whenever they fit, and otherwise the measured allocation "
            f"only below {SYNTHETIC_MARGIN:g} of the near-uniform widths' noise, since synthetic inputs can "
            "rank tensors unlike real ones do; pass --calibration to measure on real data"
        )
    return notes


MEASURED = "the measured allocation"
UNIFORM = "uniform"
# Without real data the measured allocation is kept only when uniform widths do not fit the
# budget and it beats the near-uniform widths by this factor in output noise. Synthetic inputs
# can rank an audio or recurrent model's tensors unlike its real inputs do: on the zoo's
# silero_vad_v6 at 4 bits the measured allocation won 0.095 to 0.099 on noise and lost 0.63 to
# 0.80 in cosine on speech; on magika at 5.02 bits per weight it won 0.031 to 0.079 against
# uniform widths and still lost 0.9990 to 0.9999 on real files. Where it wins clearly it is
# usually right: EfficientNet-Lite0 at 5 bits, 0.041 to 0.066 (0.62), loses 2.1 points of
# ImageNet top-1 with it and 2.8 with the near-uniform widths.
SYNTHETIC_MARGIN = 0.7
# Where uniform widths fit, the near-uniform ones (the same bytes spent by each tensor's relative
# error, blind to the measurement) can do much better on real inputs, but no synthetic rule tried
# picks them safely. Forced at the bytes of --bits 4 they gave cosine 0.935 against 0.764 on the
# zoo's ocr_det and 0.690 against 0.412 on ocr_rec, and stayed within 0.0007 of uniform widths on
# seven other zoo models. Taken when their synthetic noise was below SYNTHETIC_MARGIN of uniform's
# and less by SIGNIFICANCE standard errors, they won on ocr_rec at 5 bits (0.966 against 0.928) and
# nudenet (0.9990 against 0.9869), but lost on layout at 5 bits (0.699 against 0.796): below
# uniform widths at the same budget, which mixed precision must never be. So uniform widths stay.


# With calibration data an option other than the baseline (uniform widths where they fit, else
# the near-uniform ones) is kept only when its noise is below the baseline's by this many standard
# errors of the per-sample difference. The allocation is chosen on the samples it is then judged
# on, and a few samples can carry most of the noise: on the zoo's ocr_cls (a two-way classifier)
# near-uniform widths measured a tenth of uniform 4 bits' noise on 16 calibration images, and on
# other images of the same kind gave cosine 0.982 against uniform's 0.9999.
SIGNIFICANCE = 2.0


def _keep(parts: dict[str, np.ndarray], mode: str) -> str:
    """The option to keep: on synthetic inputs uniform widths whenever they fit, and otherwise the
    near-uniform ones unless the measured allocation clearly beats them; on calibration data the
    least noise when it beats the baseline significantly, else the baseline."""
    noise = {label: float(p.sum()) for label, p in parts.items()}
    best = min(noise, key=lambda label: noise[label])
    uniform = [label for label in noise if label.startswith(UNIFORM)]
    blind = {label: v for label, v in noise.items() if label != MEASURED}
    if mode == "calibration":
        base = uniform[0] if uniform else min(blind, key=lambda label: blind[label], default=best)
        return best if _significantly_less(parts[best], parts[base]) else base
    if uniform:
        return uniform[0]
    if best != MEASURED or not blind:
        return best
    fallback = min(blind, key=lambda label: blind[label])
    return MEASURED if noise[MEASURED] <= SYNTHETIC_MARGIN * blind[fallback] else fallback


def _significantly_less(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the noise parts a sum to less than b's by SIGNIFICANCE standard errors (paired)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size < 2:
        return False
    return float(d.mean() + SIGNIFICANCE * d.std(ddof=1) / np.sqrt(d.size)) < 0


# The sensitivity measurement's size, when the sample count is not given, follows the model's
# work, not the clock, so that every machine chooses the same widths: each tensor runs the probe's
# samples twice, and all of it should stay within PROBE_MACS multiply-adds (about 100 s at
# 10^10 a second; EfficientNet-Lite0, 0.4G per image, keeps all 16 samples).
PROBE_MACS = 1e12
MIN_PROBE_SAMPLES = 4


SENSITIVITIES = ("auto", "tensors", "blocks")
BLOCKS_FROM = 1 << 25  # auto measures by blocks from this many weights (a session per tensor is too many)


def _probe(
    model, weights: list[Weight], source: Data, samples: int | None, layers: dict[str, list[Layer]], by: str
) -> tuple[sensitivity.Probe | blockwise.BlockProbe, str]:
    """The probe, on the samples asked for, or on as many as PROBE_MACS allow; and why that many."""
    count = samples or PROBE_SAMPLES
    if samples is None:
        per_sample = _macs_per_sample(weights, layers)
        affordable = int(PROBE_MACS / max(2 * len(weights) * per_sample, 1.0))
        count = max(MIN_PROBE_SAMPLES, min(count, affordable))
    feeds, counts = probe_feeds(source, count)
    probe = _prober(model, weights, by)(model, weights, feeds, mask=_mask(source), counts=counts)
    if samples is not None:
        return probe, "--sensitivity-samples"
    if count == PROBE_SAMPLES or sum(counts) < count:
        return probe, "--sensitivity-samples sets more"
    why = (
        f"{count} rather than {PROBE_SAMPLES}: a sample takes {per_sample / 1e9:.2g}G multiply-adds and "
        f"each tensor runs them twice, within {PROBE_MACS:.0e}; --sensitivity-samples sets more"
    )
    return probe, why


def _prober(model, weights: list[Weight], by: str):
    """The probe class that `by` names; auto: by blocks for a model of BLOCKS_FROM weights or more."""
    able = blockwise.supports(model, weights)
    if by == "blocks" and not able:
        raise OnnxqError(
            "--sensitivity blocks needs a graph without If, Loop or Scan whose weights are all "
            "initializers of the main graph; use --sensitivity tensors"
        )
    large = sum(w.array.size for w in weights) >= BLOCKS_FROM
    return blockwise.BlockProbe if by == "blocks" or (by == "auto" and large and able) else sensitivity.Probe


def _macs_per_sample(weights: list[Weight], layers: dict[str, list[Layer]]) -> float:
    """Multiply-adds of one sample through the weights' layers: each weight's elements times the
    output positions per sample that its layers' statistics counted (one for a weight without)."""
    total = 0.0
    for w in weights:
        positions = [layer.stats.count / max(layer.stats.samples, 1) for layer in layers.get(w.name, [])]
        total += w.array.size * (sum(positions) or 1.0)
    return total


def _mask(source: Data) -> str | None:
    from onnxq.data.samples import mask_input

    return mask_input(source.specs)


def _quantized(w: Weight, choice: Choice, computed, make: Make) -> QuantizedTensor:
    have = computed.setdefault(w.name, {})
    if choice not in have:
        have[choice] = make(w, choice)
    return have[choice]


def _values(w: Weight, q: QuantizedTensor) -> np.ndarray:
    return weight_array(w, to_rows(w, q.dequantized))


def _values_of(w: Weight, choice: Choice, computed, make: Make) -> np.ndarray:
    return _values(w, _quantized(w, choice, computed, make))


class _Decoded(Mapping):
    """Each weight's values under an allocation, decoded when read: by blocks a segment's at a
    time, not every weight's at once (the 468M decoder's would take 1.9 GB)."""

    def __init__(self, makers: dict[str, Callable[[], np.ndarray]]) -> None:
        self._makers = makers

    def __getitem__(self, name: str) -> np.ndarray:
        return self._makers[name]()

    def __contains__(self, name: object) -> bool:
        return name in self._makers

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)


def cost_bytes(q: QuantizedTensor, bits: int, fmt) -> float:
    """What a weight costs stored at a width: its indices and its parameters, in the format fmt."""
    return fmt.index_bytes(replace(q, bits=bits)) + fmt.codebook_bytes(q)


def _price(
    weights: list[Weight], computed, layers: dict[str, list[Layer]], fmt, exact: bool = True
) -> _Priced:
    """Bytes of every quantized choice; its layer error and its error relative to each channel's
    energy: computed where quantized, else 6 dB per bit from the nearest computed width of the
    same granularity. Without exact, the layer error is |dW|^2, not tr(dW H dW^T): for when every
    computed choice's noise is measured and the error's scale cancels (_measured_alone)."""
    priced = _Priced({}, {}, {})
    for w in weights:
        hs = [layer.stats for layer in layers.get(w.name, [])] if exact else []
        step = PRICE_WEIGHTS if exact else CACHED_WEIGHTS
        energy = np.concatenate([np.sum(rows**2, axis=1) for _, rows in _row_parts(w, hs, step=step)])
        energy = np.maximum(energy, np.finfo(np.float64).tiny)
        priced.costs[w.name], priced.errors[w.name], priced.relative[w.name] = {}, {}, {}
        for per_tensor in (False, True):
            known = {c.bits: q for c, q in computed[w.name].items() if c.per_tensor == per_tensor and c.bits}
            if not known:
                continue
            both = {b: _errors(w, q, hs, energy, exact) for b, q in known.items()}
            e = {b: error for b, (error, _) in both.items()}
            r = {b: relative for b, (_, relative) in both.items()}
            for b in WIDTHS:
                c = Choice(b, per_tensor)
                priced.costs[w.name][c] = cost_bytes(known[max(known)], b, fmt)
                priced.errors[w.name][c] = _at(e, b)
                priced.relative[w.name][c] = _at(r, b)
        external.evict(w.array)
    return priced


PRICE_WEIGHTS = 1 << 22  # weights priced at once: their float64 copies and errors take some 40 bytes each
# Without tr(dW H dW^T) (whose products want long parts) a weight is priced this many weights at a
# time, so that its float64 rows and errors stay in the cache (468M decoder: 11.5 -> 7.7 CPU-s).
CACHED_WEIGHTS = 1 << 16


def _row_parts(w: Weight, hs: list[LayerStats], q: QuantizedTensor | None = None, step: int | None = None):
    """(row slice, the weight's rows in float64, or q's error on them) about step (PRICE_WEIGHTS)
    weights at a time: the whole tensor where its layer's statistics are per group, or q is per
    tensor. The 134M decoder's embedding took 1.2 GB at once."""
    step = step or PRICE_WEIGHTS
    rows = float_rows(w)
    o, k = rows.shape
    per = q.groups // o if q is not None and q.groups % o == 0 else (0 if q is not None else 1)
    if o * k <= step or not per or any(h.mean.shape[0] != 1 for h in hs):
        whole = rows.astype(np.float64)
        yield slice(0, o), whole if q is None else to_rows(w, q.dequantized) - whole
        return
    table = q.level_table() if q is not None else np.empty((0, 0))
    step = max(1, step // k)
    for start in range(0, o, step):
        part = slice(start, min(o, start + step))
        values = rows[part].astype(np.float64)
        if q is not None:
            groups = slice(part.start * per, part.stop * per)
            codes = q.codes[groups].astype(np.int64)
            decoded = np.take_along_axis(table[groups], codes, axis=1).astype(np.float32)
            values = decoded.reshape(len(values), k) - values
        yield part, values


def _errors(
    w: Weight, q: QuantizedTensor, hs: list[LayerStats], energy: np.ndarray, exact: bool = True
) -> tuple[float, float]:
    """q's layer error tr(dW H dW^T) (|dW|^2 without exact) and its error relative to each
    channel's energy (the mean)."""
    error = 0.0
    relative = []
    for part, delta in _row_parts(w, hs, q, PRICE_WEIGHTS if exact else CACHED_WEIGHTS):
        squares = np.sum(delta**2, axis=1)
        error += sensitivity.layer_error(delta, hs) if exact else float(squares.sum())
        relative.append(squares / energy[part])
    return error, float(np.mean(np.concatenate(relative)))


FLOAT_WORTH = 0.5  # float is offered where storing the weight quantized saves less than half its bytes


def _offer_floats(weights: list[Weight], priced: _Priced, reference: int) -> None:
    """Float as a choice for the weights that quantizing hardly shrinks: the parameters of tiny
    groups cost about what the weights do. Elsewhere a measurement that makes a tensor look
    fragile is too uncertain a reason to pay its float bytes (EfficientNet-Lite0 at --target-bits
    4 with calibration lost 2.1 points of top-1 with two small tensors in float, 1.9 without)."""
    for w in weights:
        quantized = priced.costs[w.name][Choice(reference)]  # at the granularity asked for
        if quantized >= FLOAT_WORTH * w.array.nbytes:
            priced.costs[w.name][FLOAT] = float(w.array.nbytes)
            priced.errors[w.name][FLOAT] = priced.relative[w.name][FLOAT] = 0.0


def _at(known: dict[int, float], bits: int) -> float:
    """known[bits], or 6 dB per bit from the nearest known width."""
    if bits in known:
        return known[bits]
    lo, hi = min(known), max(known)
    return known[hi] * 4.0 ** (hi - bits) if bits > hi else known[lo] * 4.0 ** (lo - bits)


def offers_per_tensor(q: QuantizedTensor, fmt) -> bool:
    """Whether one codebook per tensor is worth offering for a weight quantized per channel (q):
    its per-channel parameters cost PER_TENSOR_OFFER bits per weight or more."""
    return q.groups > 1 and 8 * fmt.codebook_bytes(q) / q.codes.size >= PER_TENSOR_OFFER


def _probed(computed: dict[str, dict[Choice, QuantizedTensor]], target: int) -> list[int]:
    """The widths each weight's noise is measured at: per channel, the width nearest the target and
    the narrowest computed one. The gain from layer error to output noise changes at low widths,
    where extrapolating it misjudged tensors; hence the second measurement."""
    channel_widths = sorted(
        {c.bits for have in computed.values() for c in have if c.bits and not c.per_tensor}
    )
    reference = max(channel_widths[0], min(channel_widths[-1], target))
    return sorted({channel_widths[0], reference})


def _measured_alone(computed: dict[str, dict[Choice, QuantizedTensor]], probed: list[int]) -> bool:
    """Whether every computed choice is measured and no priced width falls between two measured
    ones: then each curve is the measurements, 6 dB per bit beyond them, whatever the layer error
    (its scale cancels in noise / error * error), and _price can skip tr(dW H dW^T) (on the 468M
    decoder, a product with 512 columns per weight and width)."""
    return probed[-1] - probed[0] <= 1 and all(
        set(have) <= {Choice(b) for b in probed} for have in computed.values()
    )


def _measure(weights, computed, probe, probed: list[int], progress) -> dict[str, dict[int, float]]:
    """Each weight's measured noise at the probed widths it was computed at ({} when onnxruntime
    cannot take it as an input)."""
    at = {w.name: [b for b in probed if Choice(b) in computed[w.name]] for w in weights}
    noises = probe.noises(
        {w.name: partial(_values_at, w, computed[w.name], at[w.name]) for w in weights},
        progress and (lambda done, total, name: progress(done, total, f"measuring sensitivity: {name}")),
    )
    return {w.name: dict(zip(at[w.name], noises.get(w.name, []))) for w in weights}


def _curves(weights, priced: _Priced, measured: dict[str, dict[int, float]]):
    """noise_t(c) for every priced choice: measured per channel (_probed), scaled by layer error to
    the other widths; per tensor with the same gain; float 0. A weight without a measurement
    (onnxruntime cannot take it as an input) is scaled by the others' gain."""
    gains = _gains(measured, priced.errors)
    curves = {}
    for w in weights:
        curves[w.name] = {
            c: (gains[w.name].get(c.bits, 0.0) * e if c.bits else 0.0)
            for c, e in priced.errors[w.name].items()
        }
    return curves


def _values_at(w: Weight, have: dict[Choice, QuantizedTensor], widths: list[int]) -> list[np.ndarray]:
    return [_values(w, have[Choice(b)]) for b in widths]


def _gains(
    measured: dict[str, dict[int, float]], errors: dict[str, dict[Choice, float]]
) -> dict[str, dict[int, float]]:
    """Per weight and width, measured noise over layer error, interpolated geometrically between the
    measured widths (sensitivity.noise_curves). A weight not measured, or whose swap did not move
    the outputs at all (a branch or loop these samples never run), takes the median gain: no
    noise on these samples says nothing about real ones."""
    per_width = {
        n: {c.bits: e for c, e in errs.items() if c.bits and not c.per_tensor} for n, errs in errors.items()
    }
    known = {n: m for n, m in measured.items() if any(v > 0 for v in m.values())}
    curves = sensitivity.noise_curves(known, {n: per_width[n] for n in known})
    gains = {n: {b: (curves[n][b] / e if e > 0 else 0.0) for b, e in per_width[n].items()} for n in known}
    if len(gains) < len(errors):
        pooled = [g for per in gains.values() for g in per.values() if g > 0]
        median = float(np.median(pooled)) if pooled else 1.0
        for n in errors:
            gains.setdefault(n, {b: median for b in per_width[n]})
    return gains


def _blind(relative: dict[str, dict[Choice, float]]) -> dict[str, dict[Choice, float]]:
    """A noise proxy blind to sensitivity: each tensor's error relative to its channels' energy,
    every tensor alike (as if every layer moved the outputs as much). A channel that one codebook
    per tensor rounds to zero costs its whole energy. It offers no float: this fallback stays
    near-uniform widths."""
    return {n: {c: e if c.bits else np.inf for c, e in per.items()} for n, per in relative.items()}


def _capped(priced: _Priced, near: dict[str, Choice]) -> dict[str, dict[Choice, float]]:
    """The choices the measured allocation may make without real data: none that rounds a tensor
    more coarsely, relative to its channels' energy, than the near-uniform widths round their
    coarsest one. Synthetic inputs can leave a layer idle that real ones use, and the allocation
    then starves it: on the zoo's ocr_cls (random 224x224 images for 48x192 text crops) at
    --target-bits 4 it put 19 of 49 tensors at 2 bits, measured a hundredth of the near-uniform
    widths' noise on those inputs, and gave cosine 0.747 on real crops against their 0.984. The
    cap bounds what a wrong ranking can cost, while the ranking still moves bits between tensors.
    A width that a wider one of the same granularity stores in as few bytes is dropped too (qdq
    stores 3 bits as INT4, at 4 bits' cost), so that noise the synthetic inputs cannot tell apart
    never picks it.
    The near-uniform widths' own choices stay, so the measured allocation always has a solution
    (with decoders to pay, in the same range of widths as theirs)."""
    cap = max((priced.relative[n][c] for n, c in near.items() if c.bits), default=np.inf)
    out = {}
    for n, per in priced.costs.items():
        error = priced.relative[n]
        kept = {c: v for c, v in per.items() if not c.bits or error[c] <= cap * (1 + 1e-9)}
        out[n] = {
            c: v
            for c, v in kept.items()
            if not c.bits
            or c == near.get(n)
            or not any(d.bits > c.bits and d.per_tensor == c.per_tensor and u <= v for d, u in kept.items())
        }
    return out


def _pool(priced: _Priced, widths) -> set[Choice]:
    allowed = set(widths)
    return {c for costs in priced.costs.values() for c in costs if c.bits == 0 or c.bits in allowed}


def decoder_bytes(model, weights: list[Weight], computed, make: Make, fmt, pool) -> dict[int, float]:
    """Per width, the bytes one more decoder costs (its function, or its nodes once inlined for an
    IR version without functions, beyond its pieces' own), for a format that rebuilds every weight
    of a width with one shared call; {} for one that replaces the readers. Measured by encoding the
    smallest weight, per channel and per tensor, once and twice."""
    if fmt.WHOLE is not None or not weights:
        return {}
    smallest = min(weights, key=lambda w: w.array.size)
    inline = model.ir_version < 8
    opset = default_opset(model)
    out = {}
    for bits in sorted({c.bits for c in pool if c.bits}):
        pieces = [
            Piece(q, f"w{i}", f"w{i}.out", tuple(q.codes.shape), 0)
            for i, q in enumerate(
                _quantized(smallest, Choice(bits, t), computed, make) for t in (False, True)
            )
        ]
        if fmt.batch_key(pieces[0].q) is None:
            return {}
        again = [p._replace(name=p.name + "b", output=p.output + "b") for p in pieces]
        one = _encoded_bytes(fmt.encode(pieces, opset, "d"), opset, inline)
        two = _encoded_bytes(fmt.encode(pieces + again, opset, "d"), opset, inline)
        out[bits] = float(max(0, 2 * one - two))
    return out


def _encoded_bytes(encoded, opset: int, inline: bool) -> int:
    if not inline:
        return sum(p.ByteSize() for part in encoded for p in part)
    inits, nodes, functions = encoded
    imports = [onnx.helper.make_opsetid("", opset), onnx.helper.make_opsetid(DOMAIN, 1)]
    graph = onnx.helper.make_graph(nodes, "d", [], [], inits)
    return inline_decoders(
        onnx.helper.make_model(graph, functions=functions, opset_imports=imports)
    ).graph.ByteSize()


def extra_decoders(chosen: dict[str, Choice], decoders: dict[int, float], graph_of: dict[str, int]) -> float:
    """The bytes of the decoders a mix of widths adds, in each graph that holds weights (a
    subgraph decodes its own), beyond the one per graph that uniform widths need."""
    used: dict[int, set[int]] = {}
    for name, c in chosen.items():
        if c.bits:
            used.setdefault(graph_of.get(name, 0), set()).add(c.bits)
    costs = [[decoders.get(b, 0.0) for b in widths] for widths in used.values()]
    return sum(sum(c) - max(c) for c in costs)


# The decoders a mix of widths adds are paid from the budget when mixing every width would add
# more than this share of it: a small model's decoders can cost as much as its weights (ocr_cls
# at --target-bits 4 mixed six widths whose decoders took 18 KiB, a tenth of its file, and came
# out larger than uniform --bits 4), while EfficientNet-Lite0's (at most 0.8% of its budget) are
# left out: paid, they cost it 4 of 900 ImageNet images at --target-bits 4 with calibration.
DECODER_SHARE = 0.02


def _solve_with_decoders(
    costs, curves, pools, budget: float, fmt, elements: int, decoders, graph_of: dict[str, int]
) -> dict[str, Choice]:
    """The least-noise choices within budget; with decoders to pay (more than DECODER_SHARE of
    it), the best over every contiguous range of widths, each solved with the extra decoders it
    needs paid from the budget (least predicted noise wins)."""
    if decoders:
        for pool in pools:  # the candidate widths, else the narrower storable ones too
            widths = sorted({c.bits for c in pool if c.bits})
            ranges = [widths[i : j + 1] for i in range(len(widths)) for j in range(i, len(widths))]
            found = [_within(costs, curves, pool, budget, decoders, graph_of, r) for r in ranges]
            solved = [c for c in found if c is not None]
            if solved:
                return min(solved, key=lambda chosen: sum(curves[n][c] for n, c in chosen.items()))
    return _solve(costs, curves, pools, budget, fmt, elements)


def _within(costs, curves, pool: set[Choice], budget: float, decoders, graph_of, widths: list[int]):
    """The least-noise choices from pool at these widths (or float), the extra decoders they could
    need set aside (every width in every graph), then once more with only those the choices do
    need, if that still fits; None when they do not fit."""
    allowed = {c for c in pool if c.bits == 0 or c.bits in widths}
    each = [decoders.get(b, 0.0) for b in widths]
    worst = len(set(graph_of.values())) * (sum(each) - max(each))
    chosen = _allocate_from(costs, curves, allowed, budget - worst)
    if chosen is None:
        return None
    need = extra_decoders(chosen, decoders, graph_of)
    if need < worst:
        wider = _allocate_from(costs, curves, allowed, budget - need)
        if wider is not None and extra_decoders(wider, decoders, graph_of) <= need:
            return wider
    return chosen


def _allocate_from(costs, curves, allowed: set[Choice], budget: float) -> dict[str, Choice] | None:
    """The least-noise choices from allowed within budget; None when none fit, or when a tensor
    has no allowed choice (a range of widths that _capped left it none in)."""
    offered = {n: {c: v for c, v in per.items() if c in allowed} for n, per in costs.items()}
    if budget <= 0 or not all(offered.values()):
        return None
    try:
        return allocate.allocate(
            offered, {n: {c: v for c, v in curves[n].items() if c in offered[n]} for n in costs}, budget
        )
    except OnnxqError:
        return None


def _solve(costs, curves, pools: list[set[Choice]], budget: float, fmt, elements: int) -> dict[str, Choice]:
    """The least-noise choices within budget from the first pool that fits one; an error only when
    even the narrowest storage of every tensor exceeds it."""
    for pool in pools:
        chosen = _allocate_from(costs, curves, pool, budget)
        if chosen is not None:
            return chosen
    least = sum(min(v for c, v in per.items() if c in pools[-1] and c.bits) for per in costs.values())
    need = 8 * least / max(elements, 1)
    raise OnnxqError(
        f"--target-bits leaves {budget / 1024:.1f} KiB, but the narrowest storage --format {fmt.NAME} "
        f"allows takes {least / 1024:.1f} KiB with its scales ({need:.2f} bits per weight); raise "
        f"--target-bits to at least {need + 0.01:.2f}"
    )
