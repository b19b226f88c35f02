"""The onnxq command line: parse, call the library, render the report. Nothing else."""

from __future__ import annotations

import math
import os
import re
import signal
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from onnxq import __version__
from onnxq import sweep as sweep_mod
from onnxq.__main__ import _interrupt, interrupted, one_line
from onnxq.api import (
    GRANULARITIES,
    MAX_DEFAULT_JOBS,
    MIN_TARGET_BITS,
    NO_WEIGHTS,
    ROUNDINGS,
    SENSITIVITIES,
    Config,
    compress,
    default_jobs,
    inspect,
)
from onnxq.check import html
from onnxq.check.decompress import decompress
from onnxq.check.inspect import Inspection
from onnxq.check.report import Report, number
from onnxq.check.validate import DEFAULT_BATCH, DEFAULT_MIN_COSINE, Validation, compare_models
from onnxq.data.samples import MAX_INPUT_BYTES
from onnxq.errors import OnnxqError
from onnxq.graph import io
from onnxq.progress import shown
from onnxq.quant.codebooks import CODEBOOKS, DEFAULT_CODEBOOK
from onnxq.quant.quantize import SCALES, SEARCHES
from onnxq.storage import DEFAULT_FORMAT, FORMATS
from onnxq.sweep import cells as sweep_cells
from onnxq.sweep import front as sweep_front
from onnxq.sweep import runners as sweep_runners
from onnxq.sweep import table as sweep_table

HELP = "Shrink the weights of trained ONNX models to a few bits each, without retraining."
app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, rich_markup_mode=None)
STDOUT_CLOSED = (
    "the standard output was closed before onnxq finished writing to it (a reader such as `head` "
    "stopped early); every file onnxq wrote is complete"
)


def closed_stdout() -> NoReturn:
    """The reader of stdout is gone: nothing more goes to it (so that the final flush does not
    fail either), and the run ends in one error line, not click's or rich's silent exit 1."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor behind stdout
        pass
    raise OnnxqError(STDOUT_CLOSED)


class _Stdout(Console):
    """rich's Console on stdout, whose closed pipe ends the run as closed_stdout says."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        closed_stdout()


def say(text: str) -> None:
    """A line of text on stdout (typer.echo), its closed pipe ending the run as closed_stdout says."""
    try:
        typer.echo(text)
    except BrokenPipeError:
        closed_stdout()


out = _Stdout()
err = Console(stderr=True)

EXIT_ERROR = 1
EXIT_VALIDATION = 3
DECOMPRESS_TOLERANCE = 1e-5


def _choice(name: str, valid) -> Callable[[str], str]:
    """A callback that makes a value outside valid a usage error (exit 2) listing the choices."""

    def check(value: str) -> str:
        if value not in (None, "") and value not in valid:  # "" and None: the default
            raise typer.BadParameter(f"{value!r} is not one of: {', '.join(valid)}")
        return value

    return check


def _choices(valid) -> str:
    """The metavar that shows an option's choices in --help, e.g. [fold|qdq|matmulnbits]."""
    return "[" + "|".join(valid) + "]"


def _number(value: float | None) -> float | None:
    """A callback that makes NaN a usage error (exit 2): a gate of NaN would pass everything."""
    if value is not None and math.isnan(value):
        raise typer.BadParameter("must be a number, not nan")
    return value


def _between(lo: float, hi: float) -> Callable[[float | None], float | None]:
    """A callback for a float option within [lo, hi]: NaN is told apart from a value out of range
    (click's own range check called NaN 'above' the maximum)."""

    def check(value: float | None) -> float | None:
        _number(value)
        if value is not None and not lo <= value <= hi:
            raise typer.BadParameter(f"must be between {lo:g} and {hi:g}; got {value:g}")
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
        metavar=_choices(CODEBOOKS),
        show_default=False,
        help=f"Default: {DEFAULT_CODEBOOK}, or linear for the formats that store only evenly spaced "
        "levels (qdq, matmulnbits).",
    ),
]
_Granularity = Annotated[
    str,
    typer.Option(
        callback=_choice("granularity", GRANULARITIES),
        metavar=_choices(GRANULARITIES),
        help="tensor: one codebook per tensor (the paper); channel: one per output channel.",
    ),
]
_Scale = Annotated[
    str,
    typer.Option(
        callback=_choice("scale", SCALES),
        metavar=_choices(SCALES),
        help="variance: the paper's variance-preserving rescale; lsq: least squares.",
    ),
]
_Search = Annotated[
    str,
    typer.Option(
        callback=_choice("search", SEARCHES),
        metavar=_choices(SEARCHES),
        help="How x0 is found: grid (every value the file can store, scored exactly), exact "
        "(branch and bound, within 1e-6; 3-6x slower), fast (golden section, within 1e-5), or auto: "
        "exact for groups under 64 weights, linear codebooks over 6 bits and the weights GPTQ rounds.",
    ),
]
_Fmt = Annotated[
    str,
    typer.Option(
        "--format",
        callback=_choice("format", FORMATS),
        metavar=_choices(FORMATS),
        help="fold: packed codes that onnxruntime decodes when it loads the model; qdq: "
        "DequantizeLinear of INT2/4/8; matmulnbits: MatMul weights stay packed for onnxruntime's "
        "MatMulNBits (2, 4 or 8 bits), other weights as fold.",
    ),
]
_MinElements = Annotated[int, typer.Option(min=1, help="Leave tensors smaller than this in float.")]
_Exclude = Annotated[
    list[str] | None,
    typer.Option(metavar="REGEX", help="Regex on tensor or node names to leave in float; repeatable."),
]
_Report = Annotated[
    Path | None,
    typer.Option(help="Write the report: .json, .md, or .html (plots; needs the onnxq[report] extra)."),
]
_Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="Print errors alone; the exit code tells the rest.")
]
_Json = Annotated[
    bool,
    typer.Option(
        "--json", help="Print the report as JSON on stdout instead of the summary; progress stays on stderr."
    ),
]
_Inputs = Annotated[Path | None, typer.Option(help="Validation inputs: an .npz keyed by graph input name.")]
_Dim = Annotated[
    list[str] | None,
    typer.Option(
        metavar="NAME=SIZE",
        help="NAME=SIZE of a symbolic input dimension, or INPUT[AXIS]=SIZE, for synthetic inputs; "
        "repeatable. Unset sizes come from the model's hints, else a short search.",
    ),
]
_Validate = Annotated[bool, typer.Option(help="Compare against the float model in onnxruntime.")]
_Samples = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Random validation runs without --inputs (default 8; 2 over 33M compressed weights).",
    ),
]
_Seed = Annotated[int, typer.Option(help="Seed of the random validation inputs.")]
_MinSqnr = Annotated[
    float | None, typer.Option(callback=_number, help="Exit 3 if an output's SQNR (dB) is below this.")
]
_MinAgreement = Annotated[
    float | None,
    typer.Option(
        callback=_between(0.0, 1.0), help="Exit 3 if top-1 agreement falls below this fraction (0..1)."
    ),
]
_MinCosine = Annotated[
    float | None,
    typer.Option(
        callback=_between(-1.0, 1.0),
        help=f"Exit 3 if an output's cosine similarity (-1..1) falls below this. Default: {DEFAULT_MIN_COSINE} "
        "on real inputs (--inputs or --calibration), no gate on random ones.",
    ),
]
_Batch = Annotated[int, typer.Option(min=1, help="Samples per validation run.")]
_SensitivitySamples = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="--target-bits: samples each tensor's output noise is measured on (each tensor runs "
        "them twice). Default: up to 16, fewer when that would exceed 10^12 multiply-adds.",
    ),
]
_Sensitivity = Annotated[
    str,
    typer.Option(
        callback=_choice("sensitivity", SENSITIVITIES),
        metavar=_choices(SENSITIVITIES),
        help="--target-bits: measure each tensor's noise on the whole model, or in its block of "
        "the graph times the block's gain. auto: blocks over 33M weights.",
    ),
]
_TargetBits = Annotated[
    float | None,
    typer.Option(
        callback=_between(MIN_TARGET_BITS, 8.0),
        help="Average bits per weight, counting the indices and the codebooks/scales as the report does; "
        "chooses a width per tensor by measured sensitivity. Overrides --bits. 2..8.",
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
        metavar=_choices(ROUNDINGS),
        help="nearest, or gptq (error-compensating). Default: gptq with --calibration, else nearest.",
    ),
]
_GroupSize = Annotated[
    int | None,
    typer.Option(
        "--group-size",
        "--block-size",
        min=2,
        help="Per-block parameters: blocks of this many of each output channel's weights (a tensor "
        "it does not divide stays per channel); with --format qdq, DequantizeLinear's block_size.",
    ),
]
_PackedRows = Annotated[
    bool,
    typer.Option(
        "--packed-rows/--no-packed-rows",
        help="Keep large embedding tables (Gather data) packed in memory and unpack only the "
        "rows gathered; otherwise the whole table is folded at session creation.",
    ),
]
_FoldConstants = Annotated[
    bool,
    typer.Option(
        "--fold-constants/--no-fold-constants",
        help="Replace the nodes that compute small constants (pad sizes, shapes, axes) by their "
        "values, as onnxruntime does at session creation.",
    ),
]
_BiasCorrection = Annotated[
    bool | None,
    typer.Option(
        "--bias-correction/--no-bias-correction",
        help="Fold each layer's mean output shift into its bias. Default: on with --calibration.",
    ),
]
_Force = Annotated[
    bool,
    typer.Option(
        "--force", help="Compress a model onnxq already compressed: only the tensors it left in float."
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
        help="Refuse --inputs, --calibration or random inputs larger than this once loaded (judged "
        f"from the file headers). Default: {MAX_INPUT_BYTES} (1 GiB).",
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
    samples: _Samples = None,
    seed: _Seed = 0,
    min_sqnr: _MinSqnr = None,
    min_agreement: _MinAgreement = None,
    min_cosine: _MinCosine = None,
    batch: _Batch = DEFAULT_BATCH,
    sensitivity_samples: _SensitivitySamples = None,
    sensitivity: _Sensitivity = "auto",
    target_bits: _TargetBits = None,
    calibration: _Calibration = None,
    calibration_samples: _CalibrationSamples = None,
    rounding: _Rounding = None,
    group_size: _GroupSize = None,
    packed_rows: _PackedRows = True,
    fold_constants: _FoldConstants = True,
    bias_correction: _BiasCorrection = None,
    jobs: _Jobs = None,
    quiet: _Quiet = False,
    as_json: _Json = False,
    force: _Force = False,
    max_input_bytes: _MaxInputBytes = None,
) -> None:
    """Compress the weights of SRC into DST and check the result in onnxruntime."""
    if quiet and as_json:
        raise typer.BadParameter("choose one of --quiet and --json", param_hint="--quiet")
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
        sensitivity=sensitivity,
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
    show = "quiet" if quiet else "json" if as_json else "summary"
    _compress_with_progress(src, dst, config, report, show, force)


REPORT_WRITERS = {".json": Report.to_json, ".md": Report.to_markdown, ".html": html.to_html}


def _check_report_and_excludes(report: Path | None, exclude: list[str] | None) -> None:
    if report is not None and report.suffix not in REPORT_WRITERS:
        raise typer.BadParameter("the report must end in .json, .md or .html", param_hint="--report")
    if report is not None and report.suffix == ".html":
        try:
            html.require()
        except OnnxqError as exc:
            fail(exc)
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


def _compress_with_progress(
    src: Path, dst: Path, config: Config, report: Path | None, show: str, force: bool = False
) -> None:
    """compress with its progress shown (progress.py), the report written, the result rendered.
    show: summary (progress and the summary), quiet (errors alone) or json (the report on stdout).
    The report goes to a temporary file before DST is renamed into place, and both (with
    DST.data) go into place together, or none of them (io.commit)."""
    staged: list[Path] = []

    def stage(result: Report) -> list[tuple[Path, Path]]:
        assert report is not None
        staged.append(io.stage_text(report, REPORT_WRITERS[report.suffix](result)))
        return [(staged[-1], report)]

    pictures = report is not None and report.suffix == ".html"
    try:
        with shown(err) if show != "quiet" else nullcontext() as progress:
            result = compress(
                src, dst, config, progress, pictures, force=force, before_commit=stage if report else None
            )
    except OnnxqError as exc:
        fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(interrupted(f"interrupted: {dst} was not written")) from None
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
    if show == "json":
        say(result.to_json())
    elif show == "summary":
        render(result)
        written = f"wrote {dst}" + (f" and {report}" if report is not None else "")
        out.print(written, markup=False, highlight=False, soft_wrap=True)  # a path to copy, unbroken
    if not result:
        where = (
            " (see above)" if show == "summary" else ": see its validation.failures" if show == "json" else ""
        )
        typer.echo(f"error: {dst} was written, but it failed its validation gate{where}", err=True)
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
    dim: Annotated[
        list[str] | None, typer.Option(metavar="NAME=SIZE", help="Size of a symbolic dimension.")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="Random runs when --inputs is not given.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the random inputs.")] = 0,
    min_sqnr: Annotated[
        float | None, typer.Option(callback=_number, help="Exit 3 below this output SQNR (dB).")
    ] = None,
    min_agreement: Annotated[
        float | None,
        typer.Option(callback=_between(0.0, 1.0), help="Exit 3 below this top-1 agreement (0..1)."),
    ] = None,
    min_cosine: Annotated[
        float | None,
        typer.Option(
            callback=_between(-1.0, 1.0),
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


@app.command("inspect")
def inspect_cmd(
    model: Annotated[Path, typer.Argument(help="A float ONNX model, or one onnxq compressed.")],
    bits: _Bits = 5,
    target_bits: Annotated[
        float | None,
        typer.Option(
            callback=_between(MIN_TARGET_BITS, 8.0), help="Predict the size at this average instead, 2..8."
        ),
    ] = None,
    codebook: _Codebook = "",
    fmt: _Fmt = DEFAULT_FORMAT,
    granularity: _Granularity = "channel",
    group_size: _GroupSize = None,
    min_elements: _MinElements = 128,
    exclude: _Exclude = None,
    fold_constants: _FoldConstants = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout, for scripts.")] = False,
) -> None:
    """Show the weights onnxq would compress and the predicted size, or what an output stores."""
    _check_report_and_excludes(None, exclude)
    config = Config(
        bits=bits,
        target_bits=target_bits,
        codebook=codebook,
        format=fmt,
        granularity=granularity,
        group_size=group_size,
        min_elements=min_elements,
        exclude=tuple(exclude or ()),
        fold_constants=fold_constants,
    )
    try:
        result = inspect(model, config)
    except OnnxqError as exc:
        fail(exc)
    if as_json:
        say(result.to_json())
    else:
        render_inspection(result)


def fail(exc: OnnxqError) -> None:
    """One unwrapped line on stderr, and exit 1."""
    typer.echo(f"error: {one_line(str(exc))}", err=True)
    raise typer.Exit(EXIT_ERROR) from None


ALL_ROWS = 8  # the terminal lists every compressed tensor up to this many
WORST_ROWS = 3  # above it, only the worst by SQNR


WEIGHT_COLUMNS = ("tensor", "shape", "groups", "bits", "rounding", "corr", "SQNR dB", "bytes")


def _weight_cells(w: dict) -> list[str]:
    return [
        "x".join(map(str, w["shape"])),
        str(w["groups"]),
        str(w["bits"]),
        w["rounding"],
        f"{w['correlation']:.5f}",
        number(w["sqnr_db"], 1),
        f"{w['index_bytes'] + w['codebook_bytes']:,}",
    ]


def _print_weights(title: str, shown: list[dict]) -> None:
    """The compressed tensors as a table when their names fit in it whole; else each name on a line
    of its own, above its numbers (the user copies the name)."""
    cells = [_weight_cells(w) for w in shown]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(WEIGHT_COLUMNS[1:])]
    name = max(len("tensor"), *(len(w["name"]) for w in shown))
    if name + sum(widths) + 3 * len(WEIGHT_COLUMNS) + 1 > out.width:
        out.print(title, markup=False, highlight=False)
        for w, c in zip(shown, cells):
            out.print(Text("  " + w["name"]))  # the model's name: never read as rich markup
            shape, groups, bits, rounding, corr, sqnr, size = c
            numbers = (
                f"{shape}, {groups} groups, {bits}-bit, {rounding}, corr {corr}, SQNR {sqnr} dB, {size} B"
            )
            out.print(f"    {numbers}", markup=False, highlight=False)
        return
    table = Table(title=title, title_justify="left")
    for col in WEIGHT_COLUMNS:
        table.add_column(col, justify="left" if col in ("tensor", "shape") else "right", overflow="fold")
    for w, c in zip(shown, cells):
        table.add_row(Text(w["name"]), *c)  # names are the model's: never read as rich markup
    out.print(table)


def render(report: Report) -> None:
    d = report.to_dict()
    s, b = d["summary"], d["bytes"]
    shown = d["weights"]
    title = f"compressed {s['compressed_tensors']} tensors"
    if len(shown) > ALL_ROWS:  # one screen: the worst few; --report lists them all
        shown = sorted(shown, key=lambda w: w["sqnr_db"] if w["sqnr_db"] is not None else math.inf)[
            :WORST_ROWS
        ]
        title += f"; the worst {WORST_ROWS} by SQNR (--report lists all)"
    if d["weights"]:
        _print_weights(title, shown)
    if d["calibration"]:
        corrected = sum(1 for w in d["weights"] for x in w["bias_correction"] if "left alone" not in x)
        gptq = sum(1 for w in d["weights"] if w["rounding"] == "gptq")
        out.print(
            f"data: {d['calibration']}; GPTQ rounding on {gptq} tensors, "
            f"bias correction on {corrected} layers",
            markup=False,
            highlight=False,
        )
    render_skipped(d["skipped"])
    for note in d["notes"]:
        if note == NO_WEIGHTS:  # a warning, on stderr
            typer.echo(f"warning: {note}", err=True)
        else:
            out.print(f"note: {note}", markup=False, highlight=False)
    total = b["total"] or 1
    for role, path in report.paths.items():  # the paths whole, to copy
        out.print(f"{role}: {path}", markup=False, highlight=False, soft_wrap=True)
    out.print(
        f"size: {s['input_bytes']:,} -> {s['output_bytes']:,} bytes, {number(s['ratio'], 2)}x smaller; "
        f"{number(s['bits_per_weight'], 3)} bits per compressed weight\n"
        f"bytes: indices {b['indices']:,} ({100 * b['indices'] / total:.1f}%), "
        f"codebooks {b['codebooks']:,} ({100 * b['codebooks'] / total:.1f}%), "
        f"float tensors {b['float_tensors']:,} ({100 * b['float_tensors'] / total:.1f}%), "
        f"graph {b['graph']:,} ({100 * b['graph'] / total:.1f}%)",
        markup=False,
        highlight=False,
    )
    widths = report.widths()
    if widths:
        total = sum(widths.values())
        shown = ", ".join(f"{k}: {n} ({100 * n / total:.0f}%)" for k, n in widths.items())
        out.print(f"widths (tensors): {shown}", markup=False, highlight=False)
    if report.validation is not None:
        render_validation(report.validation)
    else:
        out.print("validation: skipped")


def render_skipped(skipped: list[dict]) -> None:
    """One row per reason (the full list is in the report or the JSON)."""
    if not skipped:
        return
    by_reason: dict[str, list[str]] = {}
    for x in skipped:
        by_reason.setdefault(x["reason"], []).append(x["name"])
    table = Table(title=f"left in float: {len(skipped)} tensors", title_justify="left")
    table.add_column("reason", overflow="fold")
    table.add_column("tensors", justify="right")
    table.add_column("for example", overflow="fold")
    for reason, names in by_reason.items():
        example = ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
        table.add_row(Text(reason), str(len(names)), Text(example))
    out.print(table)


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
            number(o.sqnr_db, 1),
            number(o.top1_agreement, 3),
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


# The options of sweep.
_Grid = Annotated[
    list[str] | None,
    typer.Option(
        metavar="KEY=V1,V2",
        help="KEY=V1,V2,... of a compress option to vary, e.g. bits=3,4,5 or target_bits=none,4,5; "
        "repeatable, crossed. Keys: " + ", ".join(sweep_cells.AXES) + ". Default: bits=3,4,5,6,8 "
        "and codebook=exponential,linear.",
    ),
]
_Gate = Annotated[
    str | None,
    typer.Option(
        metavar="METRIC>=VALUE",
        help="METRIC>=VALUE: choose the smallest output that meets it, e.g. cosine>=0.99. "
        "Metrics: " + ", ".join(sweep_front.METRICS) + ".",
    ),
]
_MetricCommand = Annotated[
    str | None,
    typer.Option(
        metavar="COMMAND",
        help="A command that evaluates {model} and prints a number last, e.g. "
        "'python eval.py {model}'; its number is the metric 'metric'.",
    ),
]
_Out = Annotated[
    Path | None, typer.Option("--out", help="The sweep's folder. Default: MODEL's name + .sweep, here.")
]
_Parallel = Annotated[
    int | None, typer.Option(min=1, help="Cells compressed at once. Default: one per core, at most 4.")
]
_Ray = Annotated[
    str | None,
    typer.Option(
        metavar="local|auto|ADDRESS",
        help="Run the cells on Ray: local (a cluster on this machine), auto, or ray://HOST:PORT. "
        "Needs onnxq[ray], and the same paths on every node.",
    ),
]


@app.command("sweep")
def sweep_cmd(
    model: _Src,
    inputs: _Inputs = None,
    grid: _Grid = None,
    gate: _Gate = None,
    metric_command: _MetricCommand = None,
    out_dir: _Out = None,
    calibration: _Calibration = None,
    dim: _Dim = None,
    batch: _Batch = DEFAULT_BATCH,
    parallel: _Parallel = None,
    ray: _Ray = None,
) -> None:
    """Compress MODEL over a grid of settings and measure each output; print the size/accuracy
    Pareto front and the smallest setting that meets --gate. Finished cells are kept: a re-run
    skips them."""
    folder = out_dir or Path(model.name.removesuffix(".onnx") + ".sweep")
    try:  # a malformed grid or gate is a usage error
        axes = dict(sweep_cells.parse_axis(g) for g in grid) if grid else None
        if gate:
            sweep_front.Gate.parse(gate)
    except OnnxqError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        workers = parallel or sweep_runners.default_parallel()
        runner = sweep_runners.on_ray(ray, workers) if ray else sweep_runners.local(workers)
        with shown(err) as progress:
            result = sweep_mod.sweep(
                model,
                folder,
                axes,
                gate,
                metric_command,
                runner,
                progress,
                inputs=str(inputs) if inputs else None,
                batch=batch,
                dims=_dims(dim or []),
                calibration=str(calibration) if calibration else None,
            )
    except OnnxqError as exc:
        fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(
            interrupted(f"interrupted: the cells finished so far are kept in {folder}")
        ) from None
    render_sweep(result)
    if not result and not result.measured:
        fail(OnnxqError("every cell failed (see above); fix the first cause and run again"))
    if not result:
        typer.echo(f"error: no setting meets --gate {result.gate}", err=True)
        raise typer.Exit(EXIT_VALIDATION)


SWEEP_HEADERS = {"output_bytes": "MB", "agreement": "agree", "sqnr": "SQNR dB", "rel_l2": "rel L2"}


def render_sweep(result) -> None:
    """The front at 80 columns: the setting wraps, the numbers keep to short columns."""
    cols = [c for c in sweep_table.shown_columns(result) if c not in ("seconds", "bits_per_weight")]
    chosen = result.chosen
    table = Table(title=f"Pareto front: size against {result.metric}", title_justify="left")
    table.add_column("setting", overflow="fold", min_width=24)
    for c in cols:
        table.add_column(SWEEP_HEADERS.get(c, c), justify="right")
    for r in result.front:
        mark = " (chosen)" if chosen and r["key"] == chosen["key"] else ""
        table.add_row(Text(r["options"] + mark), *(sweep_table.cell(r, c).removesuffix(" MB") for c in cols))
    if result.front:
        out.print(table)
    failed = [r for r in result.rows if r.get("error")]
    reused = f", {result.reused} kept from an earlier run" if result.reused else ""
    lines = [f"cells: {len(result.rows)}{reused}, {len(failed)} failed, {len(result.refused)} refused"]
    lines += [f"failed: {r['options']}: {r['error']}" for r in failed]
    lines += [f"refused: {options}: {why}" for options, why in result.refused]
    if result.gate:
        lines.append(
            f"chosen for {result.gate}: {chosen['options']}" if chosen else f"none meets {result.gate}"
        )
    names = ", ".join(p.name for p in result.written)
    lines.append(f"wrote {names} and the models (models/) in {result.folder}")
    for line in lines:
        out.print(line, markup=False, highlight=False, soft_wrap=True)


def render_inspection(result: Inspection) -> None:
    d = result.to_dict()
    version = f", written by onnxq {d['written_by']}" if d["written_by"] else ""
    _say(f"{d['kind']}: {d['path']} ({d['file_bytes']:,} bytes){version}")
    if d["settings"]:
        _say(
            "settings: "
            + ", ".join(f"{k} {v}" for k, v in sorted(d["settings"].items()) if v not in (None, []))
        )
    if result.compressed:
        _render_stored(d)
    else:
        _render_float(d)
    render_skipped(d["skipped"])
    for note in d["notes"]:
        _say(f"note: {note}")
    p = d["prediction"]
    if p is not None and p["weights"]:
        at = ", ".join(
            f"--{k.replace('_', '-')} {v}"
            for k, v in p["settings"].items()
            if v is not None
            and (k, v) != ("granularity", "channel")
            and not (k == "bits" and p["settings"]["target_bits"])
        )
        _say(
            f"predicted at {at}:\n  size {d['file_bytes']:,} -> {p['output_bytes']:,} bytes, "
            f"{number(p['ratio'], 2)}x smaller; {number(p['bits_per_weight'], 3)} bits per compressed weight"
        )
        for assumption in p["assumptions"]:
            _say(f"  assumes: {assumption}")


def _render_float(d: dict) -> None:
    n = sum(math.prod(w["shape"]) for w in d["weights"])
    table = Table(title=f"would compress {len(d['weights'])} tensors, {n:,} weights", title_justify="left")
    for col in ("tensor", "shape", "bytes", "min", "max", "std"):
        text = col in ("tensor", "shape")
        table.add_column(col, justify="left" if text else "right", overflow="fold" if text else "ellipsis")
    for w in d["weights"]:
        table.add_row(
            Text(w["name"]),
            "x".join(map(str, w["shape"])),
            f"{w['bytes']:,}",
            *(_num(w[k]) for k in ("min", "max", "std")),
        )
    if d["weights"]:
        out.print(table)


def _render_stored(d: dict) -> None:
    # A column that is the same on every row goes to the title: the names keep their width.
    same = [k for k in ("format", "codebook") if len({w[k] for w in d["stored"]}) == 1]
    common = f" ({', '.join(d['stored'][0][k] for k in same)})" if d["stored"] and same else ""
    table = Table(title=f"stores {len(d['stored'])} tensors{common}", title_justify="left")
    columns = [
        c for c in ("tensor", "shape", "format", "codebook", "bits", "groups", "bytes") if c not in same
    ]
    for col in columns:
        text = col in ("tensor", "shape", "format", "codebook")
        table.add_column(col, justify="left" if text else "right", overflow="fold")
    for w in d["stored"]:
        cells = {
            "tensor": Text(w["name"]),
            "shape": "x".join(map(str, w["shape"])),
            "format": w["format"],
            "codebook": w["codebook"],
            "bits": str(w["bits"]),
            "groups": f"{w['groups']:,}",
            "bytes": f"{w['index_bytes'] + w['codebook_bytes']:,}",
        }
        table.add_row(*(cells[c] for c in columns))
    if d["stored"]:
        out.print(table)
    s = d["stored_summary"]
    _say(
        f"stored: {s['weights']:,} weights in {', '.join(s['formats']) or 'no format'}: indices "
        f"{s['index_bytes']:,} bytes, codebooks {s['codebook_bytes']:,} bytes, "
        f"{number(s['bits_per_weight'], 3)} bits per weight"
    )


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


def _num(x) -> str:
    return "-" if x is None else f"{x:.3g}"
