"""compress_model(ModelProto, Config) -> (ModelProto, Report), and compress(src, dst)."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import onnx
from onnx import numpy_helper

from onnxq import __version__, jobs, runtime
from onnxq.check import blocks, validate
from onnxq.check import inspect as inspection
from onnxq.check.inspect import Inspection
from onnxq.check.report import Bytes, LevelPicture, Report, SkipReport, WeightReport
from onnxq.check.validate import DEFAULT_BATCH
from onnxq.data import samples as data
from onnxq.data import synthetic
from onnxq.errors import OnnxqError, first_line
from onnxq.graph import constfold, external, io, rewrite
from onnxq.graph.select import FLOAT_TYPES, Weight, find_weights, iter_graphs
from onnxq.quant import kernels, layout
from onnxq.quant.codebooks import CODEBOOKS, DEFAULT_CODEBOOK
from onnxq.quant.quantize import DEFAULT_SEARCH, SCALES, SEARCHES, QuantizedTensor
from onnxq.refine import sensitivity
from onnxq.refine import steps as refine
from onnxq.refine import widths as widths_
from onnxq.refine.widths import Choice
from onnxq.storage import CODEBOOK_ATTRIBUTES, CODEBOOK_SUFFIXES, DEFAULT_FORMAT, FORMATS, INDICES_SUFFIX
from onnxq.storage.base import CONFIG_KEY, DOMAIN, MARK, TENSORS_KEY, VERSION_KEY, stores_whole

GRANULARITIES = ("tensor", "channel")
ROUNDINGS = ("nearest", "gptq")
SENSITIVITIES = widths_.SENSITIVITIES
MIN_TARGET_BITS = 2.0
MAX_DEFAULT_JOBS = 8  # each worker costs about 66 MB before its tensors; few models gain beyond
# progress(done, total, "stage" or "stage: item"): total 0 when the stage's length is unknown.
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Config:
    """What to do. None means "use the default"."""

    bits: int = 5
    codebook: str = ""  # "": DEFAULT_CODEBOOK, or linear where the format needs evenly spaced levels
    granularity: str = "channel"
    scale: str = "lsq"
    search: str = DEFAULT_SEARCH  # how x0 is found (quantize.SEARCHES): auto, grid, exact or fast
    format: str = DEFAULT_FORMAT
    min_elements: int = 128
    exclude: tuple[str, ...] = ()
    validate: bool = True
    inputs: str | None = None  # npz of validation inputs
    dims: dict[str, int] = field(default_factory=dict)
    samples: int | None = None  # random validation runs when no inputs are given; None: _random_samples
    seed: int = 0
    min_sqnr: float | None = None
    min_agreement: float | None = None  # a fraction, 0..1
    min_cosine: float | None = (
        None  # None: validate.DEFAULT_MIN_COSINE on real inputs, no gate on random ones
    )
    batch: int = DEFAULT_BATCH  # samples per validation run
    sensitivity_samples: int | None = None  # --target-bits: samples each tensor's noise is measured on
    sensitivity: str = "auto"  # --target-bits: measured per tensor, by blocks, or auto (SENSITIVITIES)
    target_bits: float | None = None  # average bits per weight; None: every tensor at `bits`
    calibration: str | None = None  # npz of calibration inputs; None: synthetic inputs when needed
    calibration_samples: int | None = None  # None: all of the file, or 32 synthetic samples
    rounding: str | None = None  # nearest or gptq; None: gptq with calibration data, else nearest
    bias_correction: bool | None = None  # None: on with calibration data, else off
    group_size: int | None = None  # per-block parameters along the input dimensions; None: per channel
    packed_rows: bool = True  # large Gather tables keep their rows packed (the format's replace_consumer)
    fold_constants: bool = True  # nodes computing small constants become their values (constfold)
    jobs: int = 1  # worker processes for quantizing; 1: threads in this process (see _quantize_all)
    max_input_bytes: int | None = None  # --inputs/--calibration arrays; None: data.MAX_INPUT_BYTES

    def __post_init__(self) -> None:
        if not self.codebook:
            object.__setattr__(self, "codebook", default_codebook(self.format))

    def resolved_rounding(self) -> str:
        if self.rounding is not None:
            return self.rounding
        return "gptq" if self.calibration else "nearest"

    def resolved_bias_correction(self) -> bool:
        if self.bias_correction is not None:
            return self.bias_correction
        return self.calibration is not None

    def needs_data(self) -> bool:
        return (
            self.target_bits is not None
            or self.resolved_rounding() == "gptq"
            or self.resolved_bias_correction()
        )

    def check(self) -> None:
        """Raise OnnxqError naming the valid values of the first bad option."""
        choices = {
            "codebook": CODEBOOKS,
            "granularity": GRANULARITIES,
            "scale": SCALES,
            "search": SEARCHES,
            "format": FORMATS,
            "rounding": (*ROUNDINGS, None),
            "sensitivity": SENSITIVITIES,
        }
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                names = ", ".join(v for v in valid if v is not None)
                raise OnnxqError(f"--{key} must be one of {names}; got {getattr(self, key)!r}")
        if not 1 <= self.bits <= 8:
            raise OnnxqError(f"--bits must be between 1 and 8; got {self.bits}")
        # Written so that NaN fails too (every comparison with NaN is False).
        if self.target_bits is not None and not MIN_TARGET_BITS <= self.target_bits <= 8:
            raise OnnxqError(
                f"--target-bits must be between {MIN_TARGET_BITS:g} and 8; got {self.target_bits}"
            )
        fmt = FORMATS[self.format]
        widths = [self.bits] if self.target_bits is None else candidate_widths(self.target_bits)
        reasons = [fmt.supports(self.codebook, b) for b in widths]
        reason = reasons[0] if all(reasons) else None  # with --target-bits, one usable width will do
        if reason:
            able = [n for n, f in FORMATS.items() if f.supports(self.codebook, widths[0]) is None]
            fix = f"use --format {' or '.join(able)} for" if able else "no format stores"
            raise OnnxqError(f"{reason}; {fix} --codebook {self.codebook}")
        if self.min_sqnr is not None and math.isnan(self.min_sqnr):
            raise OnnxqError("--min-sqnr must be a number of dB; got nan")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise OnnxqError(f"--min-agreement is a fraction between 0 and 1; got {self.min_agreement}")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise OnnxqError(f"--min-cosine must be between -1 and 1; got {self.min_cosine}")
        for key in ("batch", "sensitivity_samples"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise OnnxqError(f"--{key.replace('_', '-')} must be at least 1; got {getattr(self, key)}")
        if self.group_size is not None and (self.group_size < 2 or self.granularity != "channel"):
            raise OnnxqError(
                f"--group-size must be at least 2 and needs --granularity channel; got {self.group_size} "
                f"with {self.granularity}"
            )
        if self.calibration_samples is not None and self.calibration_samples < 1:
            raise OnnxqError(f"--calibration-samples must be at least 1; got {self.calibration_samples}")
        if self.min_elements < 1:
            raise OnnxqError(f"--min-elements must be at least 1; got {self.min_elements}")
        if self.samples is not None and self.samples < 1:
            raise OnnxqError(f"--samples must be at least 1; got {self.samples}")
        if self.jobs < 1:
            raise OnnxqError(f"--jobs must be at least 1; got {self.jobs}")
        if self.max_input_bytes is not None and self.max_input_bytes < 1:
            raise OnnxqError(f"--max-input-bytes must be at least 1; got {self.max_input_bytes}")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise OnnxqError(f"--exclude {pattern!r} is not a valid regular expression: {exc}") from None


def already_compressed(model: onnx.ModelProto) -> bool:
    """Whether onnxq compressed this model: its decoder functions, or packed indices it named.
    (A decompressed model keeps the biases that bias correction named, and is not.)"""
    if any(f.domain == DOMAIN for f in model.functions):
        return True
    return any(
        MARK in t.name and t.name.endswith(INDICES_SUFFIX)
        for graph in iter_graphs(model.graph)
        for t in graph.initializer
    )


def default_codebook(fmt: str) -> str:
    """DEFAULT_CODEBOOK, or the first codebook the format can store if it cannot store that one at
    any width (linear for qdq and matmulnbits, whose kernels take evenly spaced levels only).
    Not per width: --format matmulnbits --bits 3 is then an error about the width, not the levels."""
    storage = FORMATS.get(fmt)
    if storage is None:
        return DEFAULT_CODEBOOK

    def stored(name: str) -> bool:
        return any(storage.supports(name, bits) is None for bits in range(1, 9))

    return next((n for n in (DEFAULT_CODEBOOK, *CODEBOOKS) if stored(n)), DEFAULT_CODEBOOK)


def default_jobs() -> int:
    """The CLI's worker processes: one per core, at most MAX_DEFAULT_JOBS."""
    return min(os.cpu_count() or 1, MAX_DEFAULT_JOBS)


def candidate_widths(target_bits: float, calibrated: bool = True) -> list[int]:
    """The widths the allocation chooses from: up to three above the target, and one below it
    with calibration data, two without, within 2..8.

    Measured on MobileNetV2 (900 evaluation images, both ends of the range probed in
    onnxruntime): with calibration, allowing two bits below --target-bits 4 cost 1.1
    points of top-1 (GPTQ and bias correction leave little noise at the target, and a
    2-bit tensor's large noise does not add up as the knapsack assumes); without it,
    allowing two bits below --target-bits 5 gained 1.1 points.
    """
    below = 1 if calibrated else 2
    return list(range(max(2, math.floor(target_bits) - below), min(8, math.ceil(target_bits) + 3) + 1))


# Above this many weights --target-bits quantizes every tensor in full at two widths only, the
# target's and the one below (the pair the sensitivity is measured at), and prices the others
# from them at 6 dB per bit; a width the solution takes beyond them is quantized then. At four
# widths the 468M decoder's candidates were 4x the quantizing of --bits 5 and 1.9 GB of codes.
ALL_WIDTHS_UP_TO = 1 << 25


def computed_widths(widths: list[int], target_bits: float, weights: int) -> list[int]:
    """The candidate widths at which every tensor is quantized before the allocation: up to one
    above the target, or on models of more than ALL_WIDTHS_UP_TO weights the target's and one below."""
    exact = [b for b in widths if b <= math.ceil(target_bits) + 1]
    if weights <= ALL_WIDTHS_UP_TO:
        return exact
    first = max(0, exact.index(min(max(round(target_bits), exact[0]), exact[-1])) - 1)
    return exact[first : first + 2]


@dataclass
class _Quantized:
    """What _quantize_all did: the weights it compressed, and how each was rounded and corrected."""

    weights: list[Weight]
    tensors: list[QuantizedTensor]
    biases: dict[str, list[str]] = field(default_factory=dict)
    kept_float: list[Weight] = field(default_factory=list)  # left in float by --target-bits
    notes: list[str] = field(default_factory=list)


def _settings(config: Config, weights: list[Weight], layers: dict) -> jobs.Settings:
    """The quantizer's settings. Where auto takes the exact search under GPTQ (resolved_search),
    only the weights that GPTQ rounds (those with input statistics) get it: the others round to
    nearest as in plain --bits, and on the grid's x0 as there."""
    search = resolved_search(config, sum(w.array.size for w in weights))
    exact_for: frozenset[str] = frozenset()
    if search != config.search:
        search, exact_for = config.search, frozenset(w.name for w in weights if layers.get(w.name))
    return jobs.Settings(
        config.codebook,
        config.granularity,
        config.scale,
        search,
        config.group_size,
        config.jobs,
        config.format,
        kernels.current(),  # _quantize_all's, for the worker processes
        exact_for,
    )


# Above this many weights GPTQ rounds on the stored grid's x0 too: the exact search's cost grows with
# the weights, and on the 134M-weight decoder it was a third of GPTQ with bias correction's time.
EXACT_UNDER_GPTQ = 1 << 25


def resolved_search(config: Config, weights: int = 0) -> str:
    """--search auto keeps the exact search under GPTQ rounding on models of up to EXACT_UNDER_GPTQ
    weights: on EfficientNet-Lite0, --target-bits 4 with calibration lost 2.6 top-1 points with the
    grid against 1.9 with the exact search (900 images, each run alone; docs/RESULTS.md, search).
    There the exact search costs seconds; on larger models the grid's speed is worth more."""
    if config.search == "auto" and config.resolved_rounding() == "gptq" and weights <= EXACT_UNDER_GPTQ:
        return "exact"
    return config.search


def _quantize_all(
    model: onnx.ModelProto,
    weights: list[Weight],
    config: Config,
    report: Report,
    progress: Progress | None,
    plan: synthetic.Plan | None,
) -> _Quantized:
    """Every weight quantized: at --bits, or as chosen for --target-bits; then rounded and corrected.
    Quantize's loops run on the engine the caller set (kernels.use), here and in the workers."""
    if not weights:
        return _Quantized([], [])
    source, layers, notes = _statistics(model, weights, config, report, progress, plan)
    settings = _settings(config, weights, layers)
    gptq = config.resolved_rounding() == "gptq"

    def make(w: Weight, choice: Choice) -> QuantizedTensor:
        (q,) = jobs.run([(w, choice)], settings, layers, None, "quantizing")
        return refine.round_with_gptq(w, q, layers.get(w.name, [])) if gptq else q

    if config.target_bits is None:
        tensors = jobs.run(
            [(w, Choice(config.bits)) for w in weights],
            settings,
            layers,
            progress,
            "quantizing",
            release=not config.needs_data(),  # nothing reads the float values again
            before_release=None if report.pictures is None else partial(_keep_picture, report.pictures),
        )
        t = time.perf_counter()
        if gptq:
            with refine.one_blas_thread():
                for i, w in enumerate(weights):
                    _step(progress, i, len(weights), "rounding with GPTQ", w.name)
                    tensors[i] = refine.round_with_gptq(w, tensors[i], layers.get(w.name, []))
            refine.drop_factored()
            report.seconds["gptq"] = time.perf_counter() - t
        done = _Quantized(weights, tensors)
    else:
        assert source is not None
        done = _allocate(model, weights, config, report, progress, source, layers, make)
    done.notes = notes + done.notes + _group_notes(done.weights, config)
    if config.resolved_bias_correction():
        with refine.one_blas_thread():
            for i, (w, q) in enumerate(zip(done.weights, done.tensors)):
                _step(progress, i, len(done.weights), "correcting biases", w.name)
                done.biases[w.name] = refine.correct_biases(model, w, q, layers.get(w.name, []))
    return done


def _step(progress: Progress | None, done: int, total: int, stage: str, item: str) -> None:
    """Report that item, the next of a stage's total, starts."""
    if progress:
        progress(done, total, f"{stage}: {item}")


def _statistics(model, weights, config: Config, report: Report, progress, plan):
    """The data (calibration or synthetic), each layer's input statistics, and notes; or nothing
    when no step needs data."""
    if not config.needs_data():
        return None, {}, []
    source = refine.load_data(
        model, config.calibration, config.calibration_samples, config.seed, plan, config.max_input_bytes
    )
    if progress:
        progress(0, 0, "collecting layer statistics")
    t = time.perf_counter()
    few = _positions_only(config, weights)
    layers, notes = refine.layer_statistics(model, weights, source, few)
    if few is not None:
        notes.append(
            f"layer statistics on {min(few, len(source.samples))} of the {len(source.samples)} samples: "
            "at this size they give the sensitivity measurement's size (each layer's output positions "
            "per sample), and layer errors only for a width not measured"
        )
    report.seconds["statistics"] = time.perf_counter() - t
    report.calibration = source.describe()
    return source, layers, notes


def _positions_only(config: Config, weights: list[Weight]) -> int | None:
    """How many samples the layer statistics need when --target-bits reads nothing of them but
    each layer's output positions per sample (widths._macs_per_sample): on a model of more than
    ALL_WIDTHS_UP_TO weights, with nearest rounding, no bias correction and a codebook that does
    not rank candidates by layer error; else None (every sample). On the 468M decoder the 32
    samples took 18 CPU-s. Should a weight go unmeasured, the allocation's median gain reads H
    from these few (widths.choose)."""
    large = sum(w.array.size for w in weights) > ALL_WIDTHS_UP_TO
    if config.target_bits is None or not large or config.resolved_rounding() == "gptq":
        return None
    if config.resolved_bias_correction() or CODEBOOKS[config.codebook].candidates():
        return None
    return widths_.MIN_PROBE_SAMPLES


def _allocate(model, weights, config: Config, report: Report, progress, source, layers, make) -> _Quantized:
    """--target-bits: candidates at the widths near the target (per tensor too where per-channel
    parameters cost much), rounded as they will be stored, then a choice per weight."""
    assert config.target_bits is not None
    fmt = FORMATS[config.format]
    settings = _settings(config, weights, layers)
    widths = candidate_widths(config.target_bits, calibrated=config.calibration is not None)
    exact = computed_widths(widths, config.target_bits, sum(w.array.size for w in weights))
    flat = jobs.run(
        [(w, Choice(b)) for w in weights for b in exact], settings, layers, progress, "quantizing"
    )
    computed = {
        w.name: dict(zip(map(Choice, exact), flat[i * len(exact) : (i + 1) * len(exact)]))
        for i, w in enumerate(weights)
    }
    small = [w for w in weights if widths_.offers_per_tensor(computed[w.name][Choice(exact[0])], fmt)]
    extra = jobs.run(
        [(w, Choice(b, True)) for w in small for b in exact],
        settings,
        layers,
        progress,
        "quantizing per tensor",
    )
    for i, w in enumerate(small):
        computed[w.name].update(
            zip((Choice(b, True) for b in exact), extra[i * len(exact) : (i + 1) * len(exact)])
        )
    if config.resolved_rounding() == "gptq":  # measure what will be stored: the GPTQ codes
        t = time.perf_counter()
        with refine.one_blas_thread():
            for w in weights:
                computed[w.name] = refine.round_all_with_gptq(w, computed[w.name], layers.get(w.name, []))
        refine.drop_factored()
        report.seconds["gptq"] = time.perf_counter() - t
    t = time.perf_counter()
    opset = rewrite.default_opset(model)  # compress_model upgraded it for the candidate widths
    allocation = widths_.choose(
        model,
        weights,
        computed,
        layers,
        source,
        config.target_bits,
        widths,
        make,
        fmt,
        storable=lambda b: _min_opset(config, b) <= opset,
        progress=progress,
        probe_samples=config.sensitivity_samples,
        by=config.sensitivity,
    )
    report.seconds["allocation"] = time.perf_counter() - t
    kept = [w for w in weights if allocation.chosen[w.name] == widths_.FLOAT]
    stored = [w for w in weights if w not in kept]
    done = _Quantized(
        stored, [allocation.quantized[w.name] for w in stored], kept_float=kept, notes=allocation.notes
    )
    return done


def _group_notes(weights: list[Weight], config: Config) -> list[str]:
    if not config.group_size:
        return []
    whole = [w.name for w in weights if layout.block_size(w, config.group_size) is None]
    if not whole:
        return []
    note = (
        f"--group-size {config.group_size} does not split {len(whole)} tensors into several "
        f"equal blocks per channel; they keep one codebook per channel (e.g. {whole[0]})"
    )
    return [note]


def _byte_breakdown(model: onnx.ModelProto, exact: bool = True) -> Bytes:
    """What the model's bytes hold. Without exact, the total is left for Bytes.settle: serializing
    a large model to measure it (protobuf's ByteSize) would peak at twice its size."""
    out = Bytes(total=io.model_bytes(model) if exact else 0)
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            for attr in node.attribute:
                if attr.type != onnx.AttributeProto.TENSOR:
                    continue
                size = io.tensor_bytes(attr.t)
                if node.domain == DOMAIN:
                    if attr.name in CODEBOOK_ATTRIBUTES:  # parameter ranges, fitted tables
                        out.codebooks += size
                elif attr.t.data_type in FLOAT_TYPES:
                    out.float_tensors += size
        for t in graph.initializer:
            size = io.tensor_bytes(t)
            if t.name.endswith(INDICES_SUFFIX):
                out.indices += size
            elif t.name.endswith(CODEBOOK_SUFFIXES):
                out.codebooks += size
            elif t.data_type in FLOAT_TYPES:
                out.float_tensors += size
    out.settle(out.total)
    return out


def required_opset(config: Config) -> int:
    """The default-domain opset the format needs for every width the config may use."""
    widths = (
        candidate_widths(config.target_bits, config.calibration is not None)
        if config.target_bits is not None
        else [config.bits]
    )
    return max(_min_opset(config, b) for b in widths)


def _min_opset(config: Config, bits: int) -> int:
    """The default-domain opset the config's format needs to store a weight at this width."""
    return FORMATS[config.format].min_opset(bits, config.granularity, config.group_size)


def _upgrade_opset(model: onnx.ModelProto, opset: int, target: int) -> onnx.ModelProto:
    """The model at opset target, and at the IR version that opset needs if its own is older."""
    import onnx.version_converter

    try:
        upgraded = onnx.version_converter.convert_version(model, target)
        ir = onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", target)])
        upgraded.ir_version = max(upgraded.ir_version, ir)
        onnx.checker.check_model(upgraded)
    except Exception as exc:  # noqa: BLE001 (the converter raises anything; we explain)
        first = first_line(exc, 200)
        raise OnnxqError(
            f"the model uses opset {opset} and onnx could not upgrade it to {target} ({first}); "
            f"convert it to opset {target} or newer first"
        ) from None
    return upgraded


NO_WEIGHTS = "no compressible weights found: no weight is quantized"


def compress_model(
    model: onnx.ModelProto, config: Config | None = None, progress: Progress | None = None
) -> tuple[onnx.ModelProto, Report]:
    """Compress every weight of a model; the input model is not modified. It does not validate:
    the report's validation is None ("not run"); compress() validates."""
    out, report, _ = _compress(model, config or Config(), progress)
    return out, report


def _compress(
    model: onnx.ModelProto,
    config: Config,
    progress: Progress | None,
    source: Path | None = None,
    plan_for_validation: bool = False,
    owned: bool = False,
    pictures: bool = False,
) -> tuple[onnx.ModelProto, Report, synthetic.Plan | None]:
    """compress_model, and the synthetic inputs' plan when one was made (for validation, or for
    data-driven steps without calibration). source: the model's file, for its float session and
    for the values of tensors left in their external files (external.py). owned: the model was
    read for this call alone, and is rewritten in place instead of copied. pictures: keep each
    weight's worst group for the HTML report (Report.pictures)."""
    config.check()
    start = time.perf_counter()
    original = model
    if not owned:
        model = copy.deepcopy(model)
    # An owned model's caller (compress) knows the file's size, and settles the output's from its own.
    report = Report(config=_config_dict(config), input_bytes=0 if owned else io.model_bytes(model))
    report.pictures = {} if pictures else None
    read = external.reader(source.parent) if source is not None else numpy_helper.to_array
    weights, skips = _select(model, config, report, read)
    if source is not None and config.needs_data():
        # The data-driven steps' sessions read the weights in place, from their maps; every other
        # tensor still in its file goes into the model, where those sessions look for it.
        external.load_remaining(model, source.parent, keep=sensitivity.in_place_arrays(model, weights))
    plan = None
    if weights and (plan_for_validation or (config.needs_data() and config.calibration is None)):
        t = time.perf_counter()
        if progress:
            progress(0, 0, "finding inputs the model runs on")
        # Before quantizing: a model that nothing runs fails here.
        plan = _plan(model, config, source, plan_for_validation)
        report.seconds["inputs"] = time.perf_counter() - t
    # The run's weights decide the engine of quantize's loops: in this process (threads, GPTQ,
    # the sensitivity probe) and, through jobs.Settings, in the workers.
    with kernels.use(kernels.for_weights(sum(w.array.size for w in weights))):
        done = _quantize_all(model, weights, config, report, progress, plan)
    report.notes.extend(done.notes)
    quantize_seconds = time.perf_counter() - start
    fmt = FORMATS[config.format]
    report.notes.extend(fmt.notes({q.bits for q in done.tensors}))
    report.weights = [
        _weight_report(w, q, fmt, done.biases.get(w.name, [])) for w, q in zip(done.weights, done.tensors)
    ]
    if report.pictures is not None:
        for w, q in zip(done.weights, done.tensors):
            _keep_picture(report.pictures, w, q)
    # The rewrite takes the only references to the codes, and drops each batch's once it is stored.
    items = list(zip(done.weights, done.tensors))
    done.tensors = []
    if progress:
        progress(0, 0, "rewriting the graph")
    report.notes.extend(rewrite.replace_weights(model, items, fmt, config.group_size, config.packed_rows))
    report.notes.extend(fmt.load_notes([(w.uses, w.elements) for w in report.weights], config.packed_rows))
    if source is not None:
        external.load_remaining(model, source.parent)  # what stays float goes into the output
    inlined = bool(model.functions) and model.ir_version < 8
    if inlined:
        model = rewrite.inline_decoders(model)
        report.notes.append(
            f"IR version {model.ir_version} has no local functions: the decoders were inlined"
        )
    report.skipped = [SkipReport(s.name, list(s.shape), s.reason) for s in skips] + [
        SkipReport(w.name, list(w.array.shape), KEPT_FLOAT) for w in done.kept_float
    ]
    if report.weights:  # a model with nothing compressed is written unchanged
        stamp(model, config, report.weights if inlined else None)
    if not owned:  # compress checks the file it writes instead: a copy of the model the fewer
        io.check_built(model, original)
    report.output = _byte_breakdown(model, exact=not owned)
    rewrite_seconds = time.perf_counter() - start - quantize_seconds
    report.seconds = {"quantize": quantize_seconds, "rewrite": rewrite_seconds, **report.seconds}
    return model, report, plan


KEPT_FLOAT = "left in float by --target-bits: its measured output noise cost more than its float bytes"


def _select(model: onnx.ModelProto, config: Config, report: Report, read):
    """Fold constants, find the weights, upgrade the opset if the format needs it; (weights, skips).
    read: how find_weights reads a weight's values."""
    weights, skips, notes = _find(model, config, read)
    report.notes.extend(notes)
    opset, target = rewrite.default_opset(model), required_opset(config)
    if weights and opset < target:
        ir = model.ir_version
        upgraded = _upgrade_opset(model, opset, target)
        model.CopyFrom(upgraded)
        report.notes.append(
            f"upgraded the default opset from {opset} to {target}: --format {config.format} "
            f"at these widths needs it"
            + (f" (and the IR version from {ir} to {model.ir_version})" if model.ir_version != ir else "")
        )
        weights, skips = find_weights(model, config.min_elements, config.exclude, read)
        _check_blocks(weights, config)
    if not weights:
        report.notes.append(NO_WEIGHTS)
    return weights, skips


def _find(model: onnx.ModelProto, config: Config, read) -> tuple[list[Weight], list, list[str]]:
    """Fold constants (if asked), find the weights, and check that the format can store their
    blocks: (weights, skips, notes). compress and inspect share it."""
    notes = constfold.simplify(model).notes() if config.fold_constants else []
    weights, skips = find_weights(model, config.min_elements, config.exclude, read)
    _check_blocks(weights, config)
    return weights, skips, notes


def _check_blocks(weights: list[Weight], config: Config) -> None:
    if not config.group_size:
        return
    fmt = FORMATS[config.format]
    problems = [
        (w.name, why)
        for w in weights
        if layout.block_size(w, config.group_size)
        and (why := fmt.weight_problem(tuple(w.array.shape), w.axis, config.group_size))
    ]
    if problems:
        name, why = problems[0]
        raise OnnxqError(
            f"--format {config.format} --group-size {config.group_size}: {len(problems)} tensors "
            f"cannot be stored, e.g. {name!r}: {why}; leave them in float with --exclude, "
            "or drop --group-size"
        )


def _plan(model: onnx.ModelProto, config: Config, source: Path | None, validation: bool) -> synthetic.Plan:
    """Synthetic inputs the float model runs on; OnnxqError with the --dim hint when none does.
    A model whose output will be validated unfolded runs block by block here too, on validation's
    runs when it will validate on these inputs (validation then reuses the outputs)."""
    specs = data.input_specs(model)
    if source is not None and validate.runs_in_blocks(model.graph):
        runs = (
            validate.validation_runs(
                specs, _random_samples(config, True), config.batch, config.max_input_bytes
            )
            if validation
            else None
        )
        return validate.synthetic_plan_by_blocks(model, source, specs, config.dims, config.seed, runs)
    sess = runtime.session(source if source is not None else io.serialize(model))
    return validate.synthetic_plan(model, sess, specs, config.dims, config.seed)


def _weight_report(w: Weight, q: QuantizedTensor, fmt, biases: list[str]) -> WeightReport:
    return WeightReport(
        name=w.name,
        shape=list(w.array.shape),
        uses=w.uses,
        groups=q.groups,
        bits=q.bits,
        codebook=q.codebook,
        elements=int(w.array.size),
        index_bytes=fmt.index_bytes(q),
        codebook_bytes=fmt.codebook_bytes(q),
        correlation=q.correlation,
        sqnr_db=q.sqnr_db,
        granularity=_granularity(w, q),
        rounding=q.rounding,
        bias_correction=biases,
    )


# Tensors above this many weights get no picture: the worst-group search would copy them twice.
PICTURE_MAX_WEIGHTS = 1 << 24


def _keep_picture(pictures: dict[str, LevelPicture], w: Weight, q: QuantizedTensor) -> None:
    """The weight's worst group with its levels, for the HTML report, unless it is kept already,
    too large, or let go (a weight read lazily is dropped once quantized: kept before that)."""
    if w.name in pictures or w.array.size > PICTURE_MAX_WEIGHTS or external.is_released(w.array):
        return
    granularity = _granularity(w, q)
    rows = layout.group_rows(w, granularity, q.codes.shape[1] if granularity == "block" else None)
    if rows.shape == q.codes.shape:
        pictures[w.name] = LevelPicture.of(rows, q.level_table(), q.dequantized)


def _granularity(w: Weight, q: QuantizedTensor) -> str:
    channels = w.array.shape[w.axis] if w.array.ndim >= 2 else 1
    if q.groups == 1 and channels > 1:
        return "tensor"
    return "block" if q.groups > channels else "channel"


def _validate(
    report: Report, src: Path, tmp: Path, config: Config, plan: synthetic.Plan | None
) -> validate.Validation:
    """The float model against the written output: on --inputs, else on the calibration data,
    else on the synthetic inputs."""
    gates = validate.Gates(config.min_cosine, config.min_sqnr, config.min_agreement)
    specs = data.input_specs(validate.load_proto(src))
    literal = sum(w.elements for w in report.weights) > validate.UNFOLDED_WEIGHTS
    if config.inputs is not None:
        samples = data.read_samples(config.inputs, specs, "inputs file", config.max_input_bytes)
        what, real = f"{config.inputs} ({len(samples)} samples)", True
    elif config.calibration is not None:
        samples = data.read_samples(config.calibration, specs, "calibration file", config.max_input_bytes)[
            : config.calibration_samples
        ]
        what = (
            f"calibration data {config.calibration} ({len(samples)} samples, the ones it was calibrated on)"
        )
        real = True
    else:
        assert plan is not None
        samples, what, real = (
            plan.feeds(_random_samples(config, literal), config.seed, config.max_input_bytes),
            f"random inputs: {plan.describe()}",
            False,
        )
    known = plan.reference if plan is not None and not real else None
    result = validate.validate_samples(
        src, tmp, specs, samples, what, real, gates, config.batch, literal, by_blocks=literal, known=known
    )
    if literal:
        report.notes.append(_unfolded_note(result, config))
    return result


def _unfolded_note(result: validate.Validation, config: Config) -> str:
    """What the report says of a validation without graph optimizations."""
    how = (
        f", a block of the graph (at most {blocks.BLOCK_BYTES >> 20} MB of weights) at a time"
        if result.by_blocks
        else ""
    )
    fewer = config.samples is None and not result.real
    return (
        f"validated without graph optimizations{how}: onnxruntime would fold the decoders into float "
        "weights while creating the session, at several times the float model's memory; unfolded, "
        "they run on each batch and a session holds packed weights"
        + (
            f" (so {UNFOLDED_SAMPLES} random samples, not {RANDOM_SAMPLES}; --samples N for more)"
            if fewer
            else ""
        )
    )


RANDOM_SAMPLES = 8  # random validation runs by default
UNFOLDED_SAMPLES = 2  # ... when validated unfolded: every run decodes every weight (1.4 s at 468M)


def _random_samples(config: Config, literal: bool) -> int:
    """How many random samples validation runs: --samples, else RANDOM_SAMPLES, or UNFOLDED_SAMPLES
    when the output is validated unfolded. Random inputs only show that the graph runs and how far
    its outputs move; each unfolded run of a large output decodes all of its weights again."""
    if config.samples is not None:
        return config.samples
    return UNFOLDED_SAMPLES if literal else RANDOM_SAMPLES


def compress(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    config: Config | None = None,
    progress: Progress | None = None,
    pictures: bool = False,
    *,
    force: bool = False,
    before_commit: Callable[[Report], list[tuple[Path, Path]]] | None = None,
    **options,
) -> Report:
    """Compress the model at src into dst, validate it, and return the report.

    Options are Config fields (e.g. bits=5); dst is written atomically and src is
    never modified. --inputs is read and checked before any work. pictures: keep what the HTML
    report draws (onnxq.check.html.to_html), at the cost of one more pass over each weight. A
    model onnxq wrote is an error unless force (then only the tensors it left in float can be
    compressed). before_commit is called with the finished report just before dst is renamed
    into place, and returns files it staged, as (temporary, final) pairs, to go into place with
    dst (the CLI's report): all of them or none (io.commit). When it raises, dst is left as it was.
    """
    config = _config(config, options)
    config.check()
    dst_path = io.check_output_path(src, dst)
    if progress:
        progress(0, 0, "reading the model")
    t = time.perf_counter()
    # A weight's values are read from its external file as they are needed (a map, not a copy).
    # Without data-driven steps each is quantized and dropped: memory then holds the quantized
    # model, not the float one.
    model, input_bytes = io.read_model(src, lazy=True)
    load_seconds = time.perf_counter() - t
    if already_compressed(model) and not force:
        raise OnnxqError(
            f"{src} was written by onnxq compress already (its weights are packed indices); compress "
            "the float model, run onnxq decompress on this one first, or pass --force to compress "
            "only what it left in float"
        )
    if config.validate and config.inputs is not None:
        data.read_samples(
            config.inputs, data.input_specs(model), "inputs file", config.max_input_bytes
        )  # fail now, not after the work
    wants_plan = config.validate and config.inputs is None and config.calibration is None
    out, report, plan = _compress(
        model, config, progress, Path(src), wants_plan, owned=True, pictures=pictures
    )
    del model  # out is the same message, rewritten: protobuf frees it only when neither holds it
    report.seconds["load"] = load_seconds
    report.input_bytes = input_bytes
    report.paths = {"input": str(src), "output": str(dst_path)}
    if progress:
        progress(0, 0, "writing the output")
    t = time.perf_counter()
    external_input = io.has_data_files(src, input_bytes)
    tmp = io.write_temp(out, dst_path, external=external_input)
    del out  # the graph and its packed weights are in the file now
    runtime.give_back_memory()  # before validation's sessions, not beside them
    data_beside = io.has_external_data(tmp)
    try:
        if data_beside:
            why = "as the input's were" if external_input else "the output is over 2 GB"
            report.notes.append(f"its tensors are in {io.data_file(dst_path).name} beside it ({why})")
        io.check_written(tmp, Path(src))
        report.output.settle(io.written_size(tmp, dst_path))
        report.seconds["save"] = time.perf_counter() - t
        if config.validate and report.weights:
            # Validate before the rename: an error here leaves no output behind. A failed gate
            # keeps the output: the report (and the CLI) say that it was written and failed.
            if progress:
                progress(0, 0, "validating")
            t = time.perf_counter()
            report.validation = _validate(report, Path(src), tmp, config, plan)
            report.seconds["validate"] = time.perf_counter() - t
        if data_beside:  # the graph names its data file's final name now, a shorter one
            io.finalize(tmp, dst_path)
            report.output.settle(io.written_size(tmp, dst_path))
        staged = before_commit(report) if before_commit is not None else []
        io.commit(tmp, dst_path, staged)
    finally:
        io.discard(tmp, dst_path)
    return report


# The settings an output records (stamp): those that shaped its weights. Not the paths of the
# user's data files, which would travel with the model, nor what only ran validation.
STAMPED = (
    "bits",
    "target_bits",
    "codebook",
    "format",
    "granularity",
    "group_size",
    "scale",
    "search",
    "rounding",
    "bias_correction",
    "min_elements",
    "exclude",
    "packed_rows",
    "fold_constants",
)


def inspect(src: str | os.PathLike, config: Config | None = None, **options) -> Inspection:
    """What onnxq would compress in the float model at src and the output's predicted size at the
    config's settings, or what an onnxq output stores (check/inspect.py). Options are Config fields.
    Nothing is quantized or run; large external tensors are read a part at a time from their files."""
    config = _config(config, options)
    config.check()
    path = Path(src)
    model, file_bytes = io.read_model(path, lazy=True)
    read = external.reader(path.resolve().parent)
    if already_compressed(model):
        return inspection.describe_output(model, path, file_bytes, read)
    before = io.model_bytes(model)
    weights, skips, notes = _find(model, config, read)
    settings = {key: getattr(config, key) for key in PREDICTED}
    folded = file_bytes + io.model_bytes(model) - before  # what constant folding saved counts too
    found = inspection.describe_float(
        path, file_bytes, weights, skips, settings, _assumptions(config), folded
    )
    opset, target = rewrite.default_opset(model), required_opset(config)
    if weights and opset < target:
        notes.append(
            f"compress upgrades the default opset from {opset} to {target} for --format {config.format}"
        )
    found.notes = notes + ([] if weights else [NO_WEIGHTS])
    return found


PREDICTED = ("format", "codebook", "bits", "target_bits", "granularity", "group_size")  # inspect's settings


def _assumptions(config: Config) -> list[str]:
    """What inspect's predicted size takes for granted at these settings."""
    decoders = (
        "not counted: the nodes that decode the weights (some KB, and a few hundred bytes per "
        "weight: 0.6% of EfficientNet-Lite0's output)"
    )
    out = [decoders]
    if config.target_bits is not None:
        out.append(
            f"--target-bits {config.target_bits:g}: the whole budget is counted ({config.target_bits:g} "
            "bits per compressed weight, codebooks included); compress measures which width each "
            "tensor gets, and may spend less"
        )
    if CODEBOOKS[config.codebook].candidates():
        out.append(
            f"--codebook {config.codebook} chooses per tensor: each is counted at its costliest choice"
        )
    return out


def _config(config: Config | None, options: dict) -> Config:
    if config is not None:
        return config
    try:
        return Config(**options)
    except TypeError as exc:
        raise OnnxqError(f"unknown option: {exc}") from None


def stamp(model: onnx.ModelProto, config: Config, tensors: list[WeightReport] | None = None) -> None:
    """Record in the model's metadata_props which onnxq wrote it and with which settings (for
    onnxq inspect), replacing an earlier run's record and keeping the model's own entries.
    tensors: the stored weights, for an output whose inlined decoders no longer show them."""
    settings = {key: value for key, value in _config_dict(config).items() if key in STAMPED}
    settings |= {
        "rounding": config.resolved_rounding(),
        "bias_correction": config.resolved_bias_correction(),
        "calibrated": config.calibration is not None,
    }
    record = {VERSION_KEY: __version__, CONFIG_KEY: json.dumps(settings, sort_keys=True)}
    if tensors is not None:
        whole = stores_whole(FORMATS[config.format]).NAME  # inlined calls are whole-weight decoders
        rows = [
            [w.name, w.shape, whole, w.codebook, w.bits, w.groups, w.index_bytes, w.codebook_bytes]
            for w in tensors
        ]
        record[TENSORS_KEY] = json.dumps(rows)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in (*record, TENSORS_KEY)]
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(kept) | record)


def _config_dict(config: Config) -> dict:
    d = asdict(config)
    d["exclude"] = list(config.exclude)
    return d
