"""The onnxq command line: parse, call the library, render the report. Nothing else."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from onnxq import __version__
from onnxq.__main__ import _interrupt, interrupted, one_line
from onnxq.api import (
    GRANULARITIES,
    MAX_DEFAULT_JOBS,
    MIN_TARGET_BITS,
    NO_WEIGHTS,
    ROUNDINGS,
    Config,
    compress,
    default_jobs,
)
from onnxq.check.decompress import decompress
from onnxq.check.report import Report
from onnxq.check.validate import DEFAULT_BATCH, DEFAULT_MIN_COSINE, Validation, compare_models
from onnxq.data.samples import MAX_INPUT_BYTES
from onnxq.errors import OnnxqError
from onnxq.graph import io
from onnxq.progress import shown
from onnxq.quant.codebooks import CODEBOOKS, DEFAULT_CODEBOOK
from onnxq.quant.quantize import SCALES, SEARCHES
from onnxq.storage import DEFAULT_FORMAT, FORMATS

HELP = "Shrink the weights of trained ONNX models to a few bits each, without retraining."
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, rich_markup_mode=None)
out = Console()
err = Console(stderr=True)

EXIT_ERROR = 1
EXIT_VALIDATION = 3
DECOMPRESS_TOLERANCE = 1e-5


def _choice(name: str, valid) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in (None, "") and value not in valid:  # "" and None: the default
            raise typer.BadParameter(f"{value!r} is not one of: {', '.join(valid)}")
        return value

    return check


MAX_DIM = 1 << 24


def _dims(values: list[str]) -> dict[str, int]:
    """--dim NAME=SIZE (a symbolic dimension) or INPUT[AXIS]=SIZE (any free axis of an input)."""
    dims = {}
    for item in values:
        m = re.fullmatch(r"(.+)=(\d+)", item)
        if not m or not 1 <= int(m.group(2)) <= MAX_DIM:
            raise typer.BadParameter(
                f"{item!r} is not NAME=SIZE with a size from 1 to {MAX_DIM}, e.g. --dim batch=1 or "
                "--dim 'x[2]=224'",
                param_hint="--dim",
            )
        dims[m.group(1)] = int(m.group(2))
    return dims


def _version(value: bool) -> None:
    if value:
        out.print(f"onnxq {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Shrink the weights of trained ONNX models to a few bits each, without retraining."""
    # SIGTERM ends a run as Ctrl-C does: the temporary files are removed on the way out.
    signal.signal(signal.SIGTERM, _interrupt)


# The options of compress, one alias each, so that its signature fits on a screen.
_Src = Annotated[Path, typer.Argument(help="The float ONNX model.")]
_Dst = Annotated[Path, typer.Argument(help="Where to write the compressed model.")]
_Bits = Annotated[int, typer.Option(min=1, max=8, help="Bits per weight, 1..8.")]
_Codebook = Annotated[
    str,
    typer.Option(
        callback=_choice("codebook", CODEBOOKS),
        show_default=False,
        help=f"One of: {', '.join(CODEBOOKS)}. Default: {DEFAULT_CODEBOOK}, or linear for the formats "
        "that store only evenly spaced levels (qdq, matmulnbits).",
    ),
]
_Granularity = Annotated[
    str,
    typer.Option(
        callback=_choice("granularity", GRANULARITIES),
        help="tensor: one codebook per tensor (the paper); channel: one per output channel.",
    ),
]
_Scale = Annotated[
    str,
    typer.Option(
        callback=_choice("scale", SCALES),
        help="variance: the paper's variance-preserving rescale; lsq: least squares.",
    ),
]
_Search = Annotated[
    str,
    typer.Option(
        callback=_choice("search", SEARCHES),
        help="How x0 is found: grid (every value the file can store, scored exactly), exact "
        "(branch and bound, proven within 1e-6 of the maximum correlation; 3-6x slower), fast "
        "(grid and golden section, within about 1e-5), or auto: grid for groups of 64 weights or "
        "more, exact for smaller ones, for linear codebooks over 6 bits and under GPTQ rounding.",
    ),
]
_Fmt = Annotated[
    str,
    typer.Option(
        "--format",
        callback=_choice("format", FORMATS),
        help=f"One of: {', '.join(FORMATS)}.",
    ),
]
_MinElements = Annotated[int, typer.Option(min=1, help="Leave tensors smaller than this in float.")]
_Exclude = Annotated[
    list[str] | None, typer.Option(help="Regex on tensor or node names to leave in float; repeatable.")
]
_Report = Annotated[Path | None, typer.Option(help="Write the report: .json or .md.")]
_Inputs = Annotated[Path | None, typer.Option(help="Validation inputs: an .npz keyed by graph input name.")]
_Dim = Annotated[
    list[str] | None,
    typer.Option(
        help="NAME=SIZE of a symbolic input dimension, or INPUT[AXIS]=SIZE, for synthetic inputs; "
        "repeatable. Unset sizes come from the model's hints, else a short search."
    ),
]
_Validate = Annotated[bool, typer.Option(help="Compare against the float model in onnxruntime.")]
_Samples = Annotated[int, typer.Option(min=1, help="Random validation runs when --inputs is not given.")]
_Seed = Annotated[int, typer.Option(help="Seed of the random validation inputs.")]
_MinSqnr = Annotated[float | None, typer.Option(help="Exit 3 if an output's SQNR (dB) is below this.")]
_MinAgreement = Annotated[
    float | None,
    typer.Option(min=0.0, max=1.0, help="Exit 3 if top-1 agreement falls below this fraction (0..1)."),
]
_MinCosine = Annotated[
    float | None,
    typer.Option(
        min=-1.0,
        max=1.0,
        help=f"Exit 3 if an output's cosine similarity falls below this. Default: {DEFAULT_MIN_COSINE} "
        "on real inputs (--inputs or --calibration), no gate on random ones.",
    ),
]
_Batch = Annotated[int, typer.Option(min=1, help="Samples per validation run.")]
_SensitivitySamples = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="--target-bits: samples each tensor's output noise is measured on (each tensor runs "
        "them twice). Default: up to 16, fewer when that would take more than a minute.",
    ),
]
_TargetBits = Annotated[
    float | None,
    typer.Option(
        min=MIN_TARGET_BITS,
        max=8.0,
        help="Average bits per weight, counting the indices and the codebooks/scales as the report does; "
        "chooses a width per tensor by measured sensitivity. Overrides --bits.",
    ),
]
_Calibration = Annotated[
    Path | None,
    typer.Option(help="Calibration inputs: an .npz keyed by graph input name, samples along axis 0."),
]
_CalibrationSamples = Annotated[
    int | None,
    typer.Option(min=1, help="Use at most this many calibration samples (default: all, or 32 synthetic)."),
]
_Rounding = Annotated[
    str | None,
    typer.Option(
        callback=_choice("rounding", ROUNDINGS),
        help="nearest, or gptq (error-compensating). Default: gptq with --calibration, else nearest.",
    ),
]
_GroupSize = Annotated[
    int | None,
    typer.Option(
        "--group-size",
        "--block-size",
        min=2,
        help="Per-block parameters: cut each output channel's weights into blocks of this many "
        "(input dimensions); tensors it does not divide stay per channel. With --format qdq, "
        "DequantizeLinear's block_size.",
    ),
]
_PackedRows = Annotated[
    bool,
    typer.Option(
        "--packed-rows/--no-packed-rows",
        help="Keep the rows of large embedding tables (Gather data) packed in memory and unpack "
        "only the rows gathered, at run time; --no-packed-rows folds the whole table at session "
        "creation instead.",
    ),
]
_FoldConstants = Annotated[
    bool,
    typer.Option(
        "--fold-constants/--no-fold-constants",
        help="Replace the nodes that compute small constants (pad sizes, shapes, axes) by their "
        "values, as onnxruntime does at session creation; --no-fold-constants keeps the graph's "
        "other nodes as they are.",
    ),
]
_BiasCorrection = Annotated[
    bool | None,
    typer.Option(
        "--bias-correction/--no-bias-correction",
        help="Fold each layer's mean output shift into its bias. Default: on with --calibration.",
    ),
]
_Jobs = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Worker processes that quantize the tensors (default: one per core, at most "
        f"{MAX_DEFAULT_JOBS}; 1: threads in this process).",
    ),
]

_MaxInputBytes = Annotated[
    int | None,
    typer.Option(
        min=1,
        show_default=False,
        help="Refuse --inputs or --calibration files, or random inputs, whose arrays would take more "
        f"than this many bytes once loaded, judged from their headers before anything is inflated. "
        f"Default: {MAX_INPUT_BYTES} (1 GiB).",
    ),
]


@app.command("compress")
def compress_cmd(
    src: _Src,
    dst: _Dst,
    bits: _Bits = 5,
    codebook: _Codebook = "",
    granularity: _Granularity = "channel",
    scale: _Scale = "lsq",
    search: _Search = "auto",
    fmt: _Fmt = DEFAULT_FORMAT,
    min_elements: _MinElements = 128,
    exclude: _Exclude = None,
    report: _Report = None,
    inputs: _Inputs = None,
    dim: _Dim = None,
    validate: _Validate = True,
    samples: _Samples = 8,
    seed: _Seed = 0,
    min_sqnr: _MinSqnr = None,
    min_agreement: _MinAgreement = None,
    min_cosine: _MinCosine = None,
    batch: _Batch = DEFAULT_BATCH,
    sensitivity_samples: _SensitivitySamples = None,
    target_bits: _TargetBits = None,
    calibration: _Calibration = None,
    calibration_samples: _CalibrationSamples = None,
    rounding: _Rounding = None,
    group_size: _GroupSize = None,
    packed_rows: _PackedRows = True,
    fold_constants: _FoldConstants = True,
    bias_correction: _BiasCorrection = None,
    jobs: _Jobs = None,
    max_input_bytes: _MaxInputBytes = None,
) -> None:
    """Compress the weights of SRC into DST and check the result in onnxruntime."""
    _check_report_and_excludes(report, exclude)
    _check_report_path(report, src, dst)
    config = Config(
        bits=bits,
        codebook=codebook,
        granularity=granularity,
        scale=scale,
        search=search,
        format=fmt,
        min_elements=min_elements,
        exclude=tuple(exclude or ()),
        validate=validate,
        inputs=str(inputs) if inputs else None,
        dims=_dims(dim or []),
        samples=samples,
        seed=seed,
        min_sqnr=min_sqnr,
        min_agreement=min_agreement,
        min_cosine=min_cosine,
        batch=batch,
        sensitivity_samples=sensitivity_samples,
        target_bits=target_bits,
        calibration=str(calibration) if calibration else None,
        calibration_samples=calibration_samples,
        rounding=rounding,
        bias_correction=bias_correction,
        group_size=group_size,
        packed_rows=packed_rows,
        fold_constants=fold_constants,
        jobs=jobs or default_jobs(),
        max_input_bytes=max_input_bytes,
    )
    _compress_with_progress(src, dst, config, report)


def _check_report_and_excludes(report: Path | None, exclude: list[str] | None) -> None:
    if report is not None and report.suffix not in (".json", ".md"):
        raise typer.BadParameter("the report must end in .json or .md", param_hint="--report")
    if report is not None and not report.parent.resolve().is_dir():
        fail(OnnxqError(f"report folder {report.parent} does not exist; create it or choose another path"))
    for pattern in exclude or ():
        try:
            re.compile(pattern)
        except re.error as exc:
            raise typer.BadParameter(
                f"{pattern!r} is not a valid regular expression: {exc}", param_hint="--exclude"
            ) from None


def _check_report_path(report: Path | None, src: Path, dst: Path) -> None:
    """The report may overwrite neither the input model's files nor the output's."""
    if report is None:
        return
    if report.is_dir():
        fail(OnnxqError(f"--report {report} is a folder; give a file name such as {report}/report.json"))
    try:
        io.check_special(report, "--report")
        io.check_name_length(report, "report")
    except OnnxqError as exc:
        fail(exc)
    taken = io.input_files(src)
    if io.is_one_of(report, taken):
        fail(OnnxqError(f"--report {report} is a file of the input model; choose another report path"))
    if io.is_one_of(report, {dst.resolve(), io.data_file(dst).resolve()}):
        fail(OnnxqError(f"--report {report} is where the output goes; choose another report path"))


def _compress_with_progress(src: Path, dst: Path, config: Config, report: Path | None) -> None:
    """compress with its progress shown (progress.py), the report written, the result rendered.
    The report goes to a temporary file before DST is renamed into place, and is renamed after
    it: a report that cannot be written leaves no output."""
    staged: list[Path] = []

    def stage(result: Report) -> None:
        assert report is not None
        staged.append(
            io.stage_text(report, result.to_json() if report.suffix == ".json" else result.to_markdown())
        )

    try:
        with shown(err) as progress:
            result = compress(src, dst, config, progress, **({"before_commit": stage} if report else {}))
        if staged:
            os.replace(staged[0], report)  # type: ignore[arg-type]
    except OnnxqError as exc:
        fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(interrupted(f"interrupted: {dst} was not written")) from None
    except OSError as exc:  # the rename of the report alone failed: DST is in place
        fail(OnnxqError(f"{dst} was written, but the report {report} could not be: {exc.strerror}"))
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
    render(result)
    written = f"wrote {dst}" + (f" and {report}" if report is not None else "")
    out.print(written, markup=False, highlight=False, soft_wrap=True)  # a path to copy, unbroken
    if not result:
        typer.echo(f"error: {dst} was written, but it failed its validation gate (see above)", err=True)
        raise typer.Exit(EXIT_VALIDATION)


@app.command("decompress")
def decompress_cmd(
    src: Annotated[Path, typer.Argument(help="A model written by onnxq compress.")],
    dst: Annotated[Path, typer.Argument(help="Where to write the plain float model.")],
    validate: Annotated[bool, typer.Option(help="Check that both models give the same outputs.")] = True,
    samples: Annotated[int, typer.Option(min=1, help="Random validation runs.")] = 4,
) -> None:
    """Write a plain float model whose weights are the compressed model's decoded values."""
    try:
        count = decompress(src, dst)
        out.print(f"decoded {count} weights; wrote {dst} ({dst.stat().st_size:,} bytes)", markup=False)
        if validate:
            # An equivalence check, not an accuracy one: random inputs serve it as well as real ones,
            # and both models run as their graphs state (fused integer kernels round differently).
            result = compare_models(src, dst, samples=samples, literal=True)
            worst = max((o.relative_l2_error for o in result.outputs), default=0.0)
            verdict = "passed" if worst <= DECOMPRESS_TOLERANCE else "FAILED"
            out.print(
                f"check: both models' outputs on {result.samples} random inputs differ by {worst:.3g} "
                f"(relative L2, at most {DECOMPRESS_TOLERANCE:g} allowed): {verdict}",
                markup=False,
                highlight=False,
            )
            if verdict == "FAILED":
                typer.echo(f"error: {dst} was written, but its outputs differ from {src}'s", err=True)
                raise typer.Exit(EXIT_VALIDATION)
    except OnnxqError as exc:
        fail(exc)


@app.command("validate")
def validate_cmd(
    float_model: Annotated[Path, typer.Argument(help="The reference model.")],
    compressed_model: Annotated[Path, typer.Argument(help="The model to check against it.")],
    inputs: Annotated[Path | None, typer.Option(help="An .npz keyed by graph input name.")] = None,
    dim: Annotated[list[str] | None, typer.Option(help="NAME=VALUE for a symbolic dimension.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Random runs when --inputs is not given.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    min_sqnr: Annotated[float | None, typer.Option(help="Exit 3 below this output SQNR (dB).")] = None,
    min_agreement: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Exit 3 below this top-1 agreement (0..1).")
    ] = None,
    min_cosine: Annotated[
        float | None,
        typer.Option(
            min=-1.0,
            max=1.0,
            help=f"Exit 3 below this output cosine. Default: {DEFAULT_MIN_COSINE} with --inputs, none on "
            "random inputs.",
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Samples per run.")] = DEFAULT_BATCH,
    max_input_bytes: _MaxInputBytes = None,
) -> None:
    """Run two models with the same inputs in onnxruntime and compare their outputs."""
    try:
        for path in (float_model, compressed_model):
            if not path.is_file():
                raise OnnxqError(f"{path} does not exist; check the path")
        result = compare_models(
            float_model,
            compressed_model,
            inputs,
            _dims(dim or []),
            samples,
            seed,
            min_sqnr=min_sqnr,
            min_agreement=min_agreement,
            min_cosine=min_cosine,
            batch=batch,
            max_input_bytes=max_input_bytes,
        )
    except OnnxqError as exc:
        fail(exc)
    render_validation(result)
    if not result:
        typer.echo(f"error: {compressed_model} failed the validation gate (see above)", err=True)
        raise typer.Exit(EXIT_VALIDATION)


def fail(exc: OnnxqError) -> None:
    """One unwrapped line on stderr, and exit 1."""
    typer.echo(f"error: {one_line(str(exc))}", err=True)
    raise typer.Exit(EXIT_ERROR) from None


def render(report: Report) -> None:
    d = report.to_dict()
    s, b = d["summary"], d["bytes"]
    weights = Table(title=f"compressed {s['compressed_tensors']} tensors", title_justify="left")
    for col in ("tensor", "shape", "groups", "bits", "rounding", "corr", "SQNR dB", "bytes"):
        text = col in ("tensor", "shape")
        # A long name wraps within its cell rather than losing its end: the user copies it.
        weights.add_column(col, justify="left" if text else "right", overflow="fold" if text else "ellipsis")
    for w in d["weights"]:
        weights.add_row(
            Text(w["name"]),  # names are the model's: never read as rich markup
            "x".join(map(str, w["shape"])),
            str(w["groups"]),
            str(w["bits"]),
            w["rounding"],
            f"{w['correlation']:.5f}",
            _fmt(w["sqnr_db"], 1),
            f"{w['index_bytes'] + w['codebook_bytes']:,}",
        )
    if d["weights"]:
        out.print(weights)
    if d["calibration"]:
        corrected = sum(1 for w in d["weights"] for x in w["bias_correction"] if "left alone" not in x)
        gptq = sum(1 for w in d["weights"] if w["rounding"] == "gptq")
        out.print(
            f"data: {d['calibration']}; GPTQ rounding on {gptq} tensors, "
            f"bias correction on {corrected} layers",
            markup=False,
            highlight=False,
        )
    if d["skipped"]:
        # The full list is in --report; the terminal gets one row per reason.
        by_reason: dict[str, list[str]] = {}
        for x in d["skipped"]:
            by_reason.setdefault(x["reason"], []).append(x["name"])
        skipped = Table(title=f"left in float: {len(d['skipped'])} tensors", title_justify="left")
        skipped.add_column("reason", overflow="fold")
        skipped.add_column("tensors", justify="right")
        skipped.add_column("for example", overflow="fold")
        for reason, names in by_reason.items():
            example = ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
            skipped.add_row(Text(reason), str(len(names)), Text(example))
        out.print(skipped)
    for note in d["notes"]:
        if note == NO_WEIGHTS:  # a warning, on stderr
            typer.echo(f"warning: {note}", err=True)
        else:
            out.print(f"note: {note}", markup=False, highlight=False)
    total = b["total"] or 1
    out.print(
        f"size: {s['input_bytes']:,} -> {s['output_bytes']:,} bytes, {_fmt(s['ratio'], 2)}x smaller; "
        f"{_fmt(s['bits_per_weight'], 3)} bits per compressed weight\n"
        f"bytes: indices {b['indices']:,} ({100 * b['indices'] / total:.1f}%), "
        f"codebooks {b['codebooks']:,} ({100 * b['codebooks'] / total:.1f}%), "
        f"float tensors {b['float_tensors']:,} ({100 * b['float_tensors'] / total:.1f}%), "
        f"graph {b['graph']:,} ({100 * b['graph'] / total:.1f}%)",
        markup=False,
        highlight=False,
    )
    widths = report.widths()
    if len(widths) > 1 or "float" in widths:
        total = sum(widths.values())
        shown = ", ".join(f"{k}: {n} ({100 * n / total:.0f}%)" for k, n in widths.items())
        out.print(f"widths (tensors): {shown}", markup=False, highlight=False)
    if report.validation is not None:
        render_validation(report.validation)
    else:
        out.print("validation: skipped")


def render_validation(v: Validation) -> None:
    table = Table(
        title=f"validation against the float model ({v.samples} samples): {v.verdict}",
        title_justify="left",
    )
    for col in ("output", "max abs", "rel L2", "cosine", "SQNR dB", "top-1 agree"):
        table.add_column(
            col,
            justify="left" if col == "output" else "right",
            overflow="fold" if col == "output" else "ellipsis",
        )
    for o in v.outputs:
        table.add_row(
            Text(o.name),
            f"{o.max_abs_error:.4g}",
            f"{o.relative_l2_error:.4g}",
            f"{o.cosine:.5f}",
            _fmt(o.sqnr_db, 1),
            _fmt(o.top1_agreement, 3),
        )
    out.print(table)
    out.print(f"inputs: {v.inputs}", markup=False, highlight=False)
    out.print(f"gates: {'; '.join(v.gates) or 'none'}", markup=False, highlight=False)
    for failure in v.failures:
        out.print(f"FAILED: {failure}", markup=False, highlight=False)
    if not v.real:
        out.print(
            "hint: pass real inputs with --inputs FILE.npz to check accuracy; random inputs only show "
            "that the graph runs",
            markup=False,
            highlight=False,
        )


def _fmt(x, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
