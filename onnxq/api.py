"""compress_model(ModelProto, Config) -> (ModelProto, Report), and compress(src, dst)."""

from __future__ import annotations

import copy
import math
import multiprocessing
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxq import constfold, io, refine, rewrite
from onnxq.codebooks import CODEBOOKS
from onnxq.errors import OnnxqError, WeightError
from onnxq.quantize import DEFAULT_SEARCH, SCALES, SEARCHES, QuantizedTensor, quantize
from onnxq.report import Bytes, Report, SkipReport, WeightReport
from onnxq.select import FLOAT_TYPES, Weight, find_weights, iter_graphs
from onnxq.storage import CODEBOOK_ATTRIBUTES, CODEBOOK_SUFFIXES, FORMATS, INDICES_SUFFIX
from onnxq.storage.fold import DOMAIN
from onnxq.validate import compare_models

GRANULARITIES = ("tensor", "channel")
ROUNDINGS = ("nearest", "gptq")
MIN_TARGET_BITS = 2.0
MAX_DEFAULT_JOBS = 8  # each worker costs about 66 MB before its tensors; few models gain beyond
Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Config:
    """What to do. None means "use the default"."""

    bits: int = 5
    codebook: str = "exponential"
    granularity: str = "channel"
    scale: str = "lsq"
    search: str = DEFAULT_SEARCH  # how x0 is found: exact (proven within 1e-6), or fast (quantize.SEARCHES)
    format: str = "fold"
    min_elements: int = 128
    exclude: tuple[str, ...] = ()
    validate: bool = True
    inputs: str | None = None  # npz of validation inputs
    dims: dict[str, int] = field(default_factory=dict)
    samples: int = 8  # random validation runs when no inputs are given
    seed: int = 0
    min_sqnr: float | None = None
    min_agreement: float | None = None
    target_bits: float | None = None  # average bits per weight; None: every tensor at `bits`
    calibration: str | None = None  # npz of calibration inputs; None: synthetic inputs when needed
    calibration_samples: int | None = None  # None: all of the file, or 32 synthetic samples
    rounding: str | None = None  # nearest or gptq; None: gptq with calibration data, else nearest
    bias_correction: bool | None = None  # None: on with calibration data, else off
    group_size: int | None = None  # per-block parameters along the input dimensions; None: per channel
    packed_rows: bool = True  # large Gather tables keep their rows packed (fold.replace_consumer)
    fold_constants: bool = True  # nodes computing small constants become their values (constfold)
    jobs: int = 1  # worker processes for quantizing; 1: threads in this process (see _quantize_all)

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
        }
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                names = ", ".join(v for v in valid if v is not None)
                raise OnnxqError(f"--{key} must be one of {names}; got {getattr(self, key)!r}")
        fmt = FORMATS[self.format]
        widths = [self.bits] if self.target_bits is None else candidate_widths(self.target_bits)
        reasons = [fmt.supports(self.codebook, b) for b in widths]
        reason = reasons[0] if all(reasons) else None  # with --target-bits, one usable width will do
        if reason:
            able = [n for n, f in FORMATS.items() if f.supports(self.codebook, widths[0]) is None]
            fix = f"use --format {' or '.join(able)} for" if able else "no format stores"
            raise OnnxqError(f"{reason}; {fix} --codebook {self.codebook}")
        if not 1 <= self.bits <= 8:
            raise OnnxqError(f"--bits must be between 1 and 8; got {self.bits}")
        if self.target_bits is not None and not MIN_TARGET_BITS <= self.target_bits <= 8:
            raise OnnxqError(f"--target-bits must be between {MIN_TARGET_BITS} and 8; got {self.target_bits}")
        if self.group_size is not None and (self.group_size < 2 or self.granularity != "channel"):
            raise OnnxqError(
                f"--group-size must be at least 2 and needs --granularity channel; got {self.group_size} "
                f"with {self.granularity}"
            )
        if self.calibration_samples is not None and self.calibration_samples < 1:
            raise OnnxqError(f"--calibration-samples must be at least 1; got {self.calibration_samples}")
        if self.min_elements < 1:
            raise OnnxqError(f"--min-elements must be at least 1; got {self.min_elements}")
        if self.samples < 1:
            raise OnnxqError(f"--samples must be at least 1; got {self.samples}")
        if self.jobs < 1:
            raise OnnxqError(f"--jobs must be at least 1; got {self.jobs}")
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise OnnxqError(f"--exclude {pattern!r} is not a valid regular expression: {exc}") from None


def default_jobs() -> int:
    """The CLI's worker processes: one per core, at most MAX_DEFAULT_JOBS."""
    return min(os.cpu_count() or 1, MAX_DEFAULT_JOBS)


def _weight_rows(weight, config: Config) -> np.ndarray:
    """The weight's rows as the quantizer groups them; NaN or Inf is an error naming it."""
    if not np.all(np.isfinite(weight.array)):
        raise WeightError(
            f"weight {weight.name!r} contains NaN or Inf; fix the model, or leave the tensor "
            f"in float with --exclude '^{re.escape(weight.name)}$'"
        )
    return rewrite.group_rows(weight, config.granularity, config.group_size)


def _quantize_weight(weight, config: Config, bits: int | None = None, layers=None) -> QuantizedTensor:
    """layers: per weight name, its layers' input statistics (auto then ranks by output error)."""
    error = refine.output_error(weight, (layers or {}).get(weight.name, []))  # None: |dW|^2
    return _quantize_rows(_weight_rows(weight, config), config, bits or config.bits, error)


def _quantize_rows(rows: np.ndarray, config: Config, bits: int, error=None) -> QuantizedTensor:
    """quantize as the config says; without error (weight-space error), everything is picklable
    and it runs in a worker process."""
    return quantize(rows, CODEBOOKS[config.codebook], bits, config.scale, error, config.search)


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


def _quantize_all(
    model: onnx.ModelProto,
    weights: list,
    config: Config,
    report: Report,
    progress: Progress | None,
    rounding_done: dict[str, str],
    biases_done: dict[str, list[str]],
) -> tuple[list[QuantizedTensor], list[str]]:
    """Every weight quantized: at --bits, or at widths chosen for --target-bits; then refined.

    Fills rounding_done and biases_done with what GPTQ and bias correction did per weight.
    """
    notes: list[str] = []
    if not weights:
        return [], notes
    layers: dict[str, list[refine.Layer]] = {}
    data = None
    if config.needs_data():
        data = refine.load_data(
            model, config.calibration, config.calibration_samples, config.seed, config.dims
        )
        if progress:
            progress(0, 1, "collecting layer statistics")
        t = time.perf_counter()
        layers = refine.layer_statistics(model, weights, data)
        report.seconds["statistics"] = time.perf_counter() - t
        report.calibration = data.describe()

    def run(jobs: list[tuple[Weight, int]], stage: str) -> list[QuantizedTensor]:
        # Largest first, so that no large tensor starts last while the other workers idle.
        order = sorted(range(len(jobs)), key=lambda i: -jobs[i][0].array.size)
        out: list[QuantizedTensor | None] = [None] * len(jobs)
        if progress:
            progress(0, len(jobs), stage)
        # The x0 searches run many small numpy calls that hold the GIL, so threads share
        # about one core between them; worker processes use every core. Spawned workers
        # import the caller's main module, so only a caller that guards it (the CLI) asks
        # for them. Ranking auto's candidates by output error needs the layers' statistics:
        # that stays here.
        ranked = bool(layers) and bool(CODEBOOKS[config.codebook].candidates())  # auto, by output error
        processes = config.jobs > 1 and len(jobs) > 1 and not ranked
        pool: Executor
        if processes:
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(min(config.jobs, len(jobs)), mp_context=context)
        else:
            pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
        with pool:
            if processes:
                rows = [_weight_rows(jobs[i][0], config) for i in order]
                results = pool.map(_quantize_rows, rows, [config] * len(order), [jobs[i][1] for i in order])
            else:
                results = pool.map(lambda i: _quantize_weight(jobs[i][0], config, jobs[i][1], layers), order)
            try:
                for done, (i, q) in enumerate(zip(order, results)):
                    out[i] = q
                    if progress:
                        progress(done + 1, len(jobs), f"{stage} {jobs[i][0].name}")
            except BrokenProcessPool:
                raise OnnxqError(
                    "a quantizing worker process died (out of memory, or it could not import the "
                    "caller's main module); retry with --jobs 1"
                ) from None
        return out  # type: ignore[return-value]

    if config.target_bits is None:
        quantized = run([(w, config.bits) for w in weights], "quantizing")
    else:
        assert data is not None
        widths = candidate_widths(config.target_bits, calibrated=config.calibration is not None)
        exact = [b for b in widths if b <= math.ceil(config.target_bits) + 1]
        flat = run([(w, b) for w in weights for b in exact], "quantizing")
        candidates = {
            w.name: dict(zip(exact, flat[i * len(exact) : (i + 1) * len(exact)]))
            for i, w in enumerate(weights)
        }
        if config.resolved_rounding() == "gptq":
            # Measure what will be stored: sensitivity and errors of the GPTQ codes.
            t = time.perf_counter()
            for w in weights:
                for b, q in candidates[w.name].items():
                    candidates[w.name][b], rounding_done[f"{w.name}@{b}"] = refine.round_with_gptq(
                        w, q, layers.get(w.name, [])
                    )
            report.seconds["gptq"] = time.perf_counter() - t
        t = time.perf_counter()
        opset = rewrite.default_opset(model)  # compress_model upgraded it for the candidate widths
        chosen, notes = refine.choose_widths(
            model,
            weights,
            widths,
            candidates,
            layers,
            data,
            config.target_bits,
            progress,
            fmt=FORMATS[config.format],
            storable=lambda b: _min_opset(config, b) <= opset,
        )
        report.seconds["allocation"] = time.perf_counter() - t
        wider = [(w, chosen[w.name]) for w in weights if chosen[w.name] not in candidates[w.name]]
        for (w, b), q in zip(wider, run(wider, "quantizing wider")):
            candidates[w.name][b] = q
        quantized = [candidates[w.name][chosen[w.name]] for w in weights]

    if config.group_size:
        whole = [w.name for w in weights if rewrite.block_size(w, config.group_size) is None]
        if whole:
            notes.append(
                f"--group-size {config.group_size} does not split {len(whole)} tensors into several "
                f"equal blocks per channel; they keep one codebook per channel (e.g. {whole[0]})"
            )
    rounding = config.resolved_rounding()
    t = time.perf_counter()
    for i, (w, q) in enumerate(zip(weights, quantized)):
        how = rounding_done.pop(f"{w.name}@{q.bits}", None)
        if how is None:
            how = "nearest"
            if rounding == "gptq":
                q, how = refine.round_with_gptq(w, q, layers.get(w.name, []))
                quantized[i] = q
                if progress:
                    progress(i + 1, len(weights), f"gptq {w.name}")
        rounding_done[w.name] = how
    for key in [k for k in rounding_done if "@" in k]:
        del rounding_done[key]
    if rounding == "gptq":
        report.seconds["gptq"] = report.seconds.get("gptq", 0.0) + time.perf_counter() - t
    if config.resolved_bias_correction():
        for w, q in zip(weights, quantized):
            biases_done[w.name] = refine.correct_biases(model, w, q, layers.get(w.name, []))
    return quantized, notes


def _byte_breakdown(model: onnx.ModelProto) -> Bytes:
    out = Bytes(total=io.model_bytes(model))
    for graph in iter_graphs(model.graph):
        for node in graph.node:
            for attr in node.attribute:
                if attr.type != onnx.AttributeProto.TENSOR:
                    continue
                size = len(attr.t.raw_data) or attr.t.ByteSize()
                if node.domain == DOMAIN:
                    if attr.name in CODEBOOK_ATTRIBUTES:  # parameter ranges, fitted tables
                        out.codebooks += size
                elif attr.t.data_type in FLOAT_TYPES:
                    out.float_tensors += size
        for t in graph.initializer:
            size = len(t.raw_data) or t.ByteSize()
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
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise OnnxqError(
            f"the model uses opset {opset} and onnx could not upgrade it to {target} ({first}); "
            f"convert it to opset {target} or newer first"
        ) from None
    return upgraded


NO_WEIGHTS = "no compressible weights found: no weight is quantized"


def compress_model(
    model: onnx.ModelProto, config: Config | None = None, progress: Progress | None = None
) -> tuple[onnx.ModelProto, Report]:
    """Compress every weight of a model; the input model is not modified."""
    config = config or Config()
    config.check()
    times: dict[str, float] = {}
    start = time.perf_counter()
    model = copy.deepcopy(model)
    report = Report(config=_config_dict(config), input_bytes=io.model_bytes(model))
    if config.fold_constants:
        report.notes.extend(constfold.simplify(model).notes())
    weights, skips = find_weights(model, config.min_elements, config.exclude)
    fmt = FORMATS[config.format]
    opset, target = rewrite.default_opset(model), required_opset(config)
    if weights and opset < target:
        ir = model.ir_version
        model = _upgrade_opset(model, opset, target)
        report.notes.append(
            f"upgraded the default opset from {opset} to {target}: --format {config.format} "
            f"at these widths needs it"
            + (f" (and the IR version from {ir} to {model.ir_version})" if model.ir_version != ir else "")
        )
        weights, skips = find_weights(model, config.min_elements, config.exclude)
    if config.group_size:
        problems = [
            (w.name, why)
            for w in weights
            if rewrite.block_size(w, config.group_size)
            and (why := fmt.weight_problem(tuple(w.array.shape), w.axis, config.group_size))
        ]
        if problems:
            name, why = problems[0]
            raise OnnxqError(
                f"--format {config.format} --group-size {config.group_size}: {len(problems)} tensors "
                f"cannot be stored, e.g. {name!r}: {why}; leave them in float with --exclude, "
                "or drop --group-size"
            )
    report.skipped = [SkipReport(s.name, list(s.shape), s.reason) for s in skips]
    if not weights:
        report.notes.append(NO_WEIGHTS)

    rounding_done: dict[str, str] = {}
    biases_done: dict[str, list[str]] = {}
    quantized, widths_notes = _quantize_all(
        model, weights, config, report, progress, rounding_done, biases_done
    )
    report.notes.extend(widths_notes)
    times["quantize"] = time.perf_counter() - start

    report.notes.extend(fmt.notes({q.bits for q in quantized}))
    report.notes.extend(
        rewrite.replace_weights(
            model, list(zip(weights, quantized)), fmt, config.group_size, config.packed_rows
        )
    )
    if model.functions and model.ir_version < 8:
        model = rewrite.inline_decoders(model)
        report.notes.append(
            f"IR version {model.ir_version} has no local functions: the decoders were inlined"
        )
    for weight, q in zip(weights, quantized):
        report.weights.append(
            WeightReport(
                name=weight.name,
                shape=list(weight.array.shape),
                uses=weight.uses,
                groups=q.groups,
                bits=q.bits,
                codebook=q.codebook,
                elements=int(weight.array.size),
                index_bytes=fmt.index_bytes(q),
                codebook_bytes=fmt.codebook_bytes(q),
                correlation=q.correlation,
                sqnr_db=q.sqnr_db,
                rounding=rounding_done.get(weight.name, "nearest"),
                bias_correction=biases_done.get(weight.name, []),
            )
        )
    io.check_built(model)
    report.output = _byte_breakdown(model)
    times["rewrite"] = time.perf_counter() - start - times["quantize"]
    report.seconds = {**times, **report.seconds}
    return model, report


def validate_into(
    report: Report,
    reference: bytes | str | Path,
    candidate: bytes | str | Path,
    config: Config,
) -> None:
    t = time.perf_counter()
    report.validation = compare_models(
        reference,
        candidate,
        inputs=config.inputs,
        dims=config.dims,
        samples=config.samples,
        seed=config.seed,
        min_sqnr=config.min_sqnr,
        min_agreement=config.min_agreement,
    )
    report.seconds["validate"] = time.perf_counter() - t


def compress(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    config: Config | None = None,
    progress: Progress | None = None,
    **options,
) -> Report:
    """Compress the model at src into dst, validate it, and return the report.

    Options are Config fields (e.g. bits=5); dst is written atomically and src is
    never modified.
    """
    if config is None:
        try:
            config = Config(**options)
        except TypeError as exc:
            raise OnnxqError(f"unknown option: {exc}") from None
    config.check()
    dst_path = io.check_output_path(src, dst)
    t = time.perf_counter()
    model, input_bytes = io.read_model(src)
    load_seconds = time.perf_counter() - t
    out, report = compress_model(model, config, progress)
    report.seconds["load"] = load_seconds
    report.input_bytes = input_bytes
    t = time.perf_counter()
    tmp = io.write_temp(out, dst_path)
    try:
        if io.has_external_data(tmp):
            report.notes.append(f"the output is over 2 GB: its tensors are in {io.data_file(dst_path).name}")
        report.output.settle(io.written_size(tmp, dst_path))
        report.seconds["save"] = time.perf_counter() - t
        if config.validate and report.weights:
            # Validate before the rename: an error here leaves no output behind.
            validate_into(report, Path(src), tmp, config)
        io.commit(tmp, dst_path)
    finally:
        io.discard(tmp, dst_path)
    return report


def _config_dict(config: Config) -> dict:
    d = asdict(config)
    d["exclude"] = list(config.exclude)
    return d
