"""Compression speed of onnxq on the shared models, as a Markdown table.

    python tools/bench_compress.py [--models a.onnx b.onnx] [--bits 4 5] [--codebooks linear exponential]
                                   [--searches fast exact]
    python tools/bench_compress.py --models m.onnx --bits 5 --target-bits 5 --calibration calib.npz \\
                                   --repeat 3 --stages

One row per model x bits x codebook x granularity x search (x run, with --repeat). "weights/s"
is compressed weights / (quantize + rewrite seconds, from the report); "wall s" is the
whole onnxq.compress call: load, quantize, rewrite, save and (with --validate)
validation. Like the CLI, it quantizes in one worker process per core (--jobs).
Outputs go to a temporary folder that is deleted afterwards.

--calibration and --target-bits are passed to every config as the CLI passes them
(so --calibration alone means GPTQ rounding and bias correction at the uniform --bits,
and validation stays on unless --no-validate). --stages prints instead, per config, the
wall seconds and every stage of report.seconds (load, statistics, gptq, allocation,
quantize, rewrite, save, validate) as the min and median over the --repeat runs.
"quantize" is everything before the rewrite, so it contains statistics, gptq and
allocation. OpenBLAS reads OPENBLAS_NUM_THREADS when numpy loads, so set it in the
environment (e.g. OPENBLAS_NUM_THREADS=1 python tools/bench_compress.py ...); the
--stages table shows the value it ran with.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import onnxq
from onnxq.api import GRANULARITIES, default_jobs
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.quantize import SEARCHES

ROOT = Path(__file__).resolve().parent.parent
SHARED_MODELS = ROOT.parent / "shared" / "models"
COLUMNS = [
    "model",
    "bits",
    "codebook",
    "granularity",
    "search",
    "weights",
    "quantize+rewrite s",
    "weights/s",
    "wall s",
    "ratio",
]
STAGE_COLUMNS = ["model", "options", "OPENBLAS_NUM_THREADS", "stage", "min s", "median s", "runs s"]
STAGES = ["load", "statistics", "gptq", "allocation", "quantize", "rewrite", "save", "validate"]


def time_compress(src: Path, dst: Path, config: onnxq.Config) -> tuple[onnxq.Report, float]:
    """The report of one compression and its wall time in seconds."""
    start = time.perf_counter()
    report = onnxq.compress(src, dst, config)
    return report, time.perf_counter() - start


def throughput_row(src: Path, config: onnxq.Config, report: onnxq.Report, wall: float) -> list[str]:
    work = report.seconds["quantize"] + report.seconds["rewrite"]
    n = report.compressed_elements
    return [
        src.stem,
        str(config.bits) if config.target_bits is None else f"target {config.target_bits:g}",
        config.codebook,
        config.granularity,
        config.search,
        f"{n:,}",
        f"{work:.2f}",
        f"{n / work:,.0f}",
        f"{wall:.2f}",
        f"{report.ratio:.2f}",
    ]


def bench_row(src: Path, dst: Path, config: onnxq.Config) -> list[str]:
    report, wall = time_compress(src, dst, config)
    return throughput_row(src, config, report, wall)


def cli_options(config: onnxq.Config) -> str:
    """The onnxq CLI options that give this config (defaults left out)."""
    defaults = onnxq.Config()
    opts = [f"--target-bits {config.target_bits:g}"] if config.target_bits is not None else []
    if config.target_bits is None or config.bits != defaults.bits:
        opts.append(f"--bits {config.bits}")
    if config.codebook != defaults.codebook:
        opts.append(f"--codebook {config.codebook}")
    if config.granularity != defaults.granularity:
        opts.append(f"--granularity {config.granularity}")
    if config.jobs != default_jobs():
        opts.append(f"--jobs {config.jobs}")
    if config.search != defaults.search:
        opts.append(f"--search {config.search}")
    if config.calibration:
        opts.append(f"--calibration {Path(config.calibration).name}")
    if not config.validate:
        opts.append("--no-validate")
    return " ".join(opts)


def stage_rows(src: Path, config: onnxq.Config, runs: list[tuple[onnxq.Report, float]]) -> list[list[str]]:
    """Per stage: min and median seconds over the runs, and every run's seconds."""
    series = {"wall": [wall for _, wall in runs]}
    for stage in [*STAGES, *sorted({k for r, _ in runs for k in r.seconds} - set(STAGES))]:
        values = [r.seconds[stage] for r, _ in runs if stage in r.seconds]
        if values:
            series[stage] = values
    threads = os.environ.get("OPENBLAS_NUM_THREADS", "unset")
    return [
        [
            src.stem,
            cli_options(config),
            threads,
            stage,
            f"{min(v):.2f}",
            f"{statistics.median(v):.2f}",
            " ".join(f"{x:.2f}" for x in v),
        ]
        for stage, v in series.items()
    ]


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    defaults = onnxq.Config()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=Path, nargs="+", help=f"default: every .onnx in {SHARED_MODELS}")
    parser.add_argument("--bits", type=int, nargs="+", default=list(range(2, 9)))
    parser.add_argument("--codebooks", nargs="+", choices=list(CODEBOOKS), default=[defaults.codebook])
    parser.add_argument("--granularities", nargs="+", choices=GRANULARITIES, default=[defaults.granularity])
    parser.add_argument(
        "--searches", nargs="+", choices=list(SEARCHES), default=[defaults.search], help="x0 searches"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=default_jobs(),
        help="worker processes, as the CLI's --jobs (default: one per core, as the CLI)",
    )
    parser.add_argument(
        "--validate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include onnxq's onnxruntime validation in the wall time (default: on)",
    )
    parser.add_argument(
        "--target-bits", type=float, help="average bits per weight, as the CLI's --target-bits"
    )
    parser.add_argument(
        "--calibration", type=Path, help="an npz of calibration inputs, as the CLI's --calibration"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per config (default: %(default)s)")
    parser.add_argument(
        "--stages", action="store_true", help="print min/median seconds per stage of report.seconds instead"
    )
    args = parser.parse_args(argv)

    models = args.models or sorted(SHARED_MODELS.glob("*.onnx"))
    for model in models:
        if not model.is_file():
            raise SystemExit(f"error: model {model} does not exist")
    if not models:
        raise SystemExit(f"error: no .onnx models in {SHARED_MODELS}")
    if args.calibration is not None and not args.calibration.is_file():
        raise SystemExit(f"error: calibration file {args.calibration} does not exist")
    if args.jobs < 1:
        raise SystemExit(f"error: --jobs must be at least 1; got {args.jobs}")
    if args.repeat < 1:
        raise SystemExit(f"error: --repeat must be at least 1; got {args.repeat}")

    columns = STAGE_COLUMNS if args.stages else COLUMNS
    print(markdown_row(columns))
    text = 4 if args.stages else 5  # the left-aligned columns
    print(markdown_row(["---"] * text + ["---:"] * (len(columns) - text)))
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-") as tmp:
        dst = Path(tmp) / "out.onnx"
        for model in models:
            for bits in args.bits:
                for codebook, granularity, search in itertools.product(
                    args.codebooks, args.granularities, args.searches
                ):
                    config = onnxq.Config(
                        bits=bits,
                        codebook=codebook,
                        granularity=granularity,
                        search=search,
                        jobs=args.jobs,
                        validate=args.validate,
                        target_bits=args.target_bits,
                        calibration=str(args.calibration) if args.calibration else None,
                    )
                    runs = []
                    for _ in range(args.repeat):
                        runs.append(time_compress(model, dst, config))
                        if not args.stages:
                            print(markdown_row(throughput_row(model, config, *runs[-1])), flush=True)
                    if args.stages:
                        for row in stage_rows(model, config, runs):
                            print(markdown_row(row), flush=True)


if __name__ == "__main__":
    main()
