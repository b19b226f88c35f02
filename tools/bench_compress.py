"""Compression speed of onnxq on the shared models, as a Markdown table.

    python tools/bench_compress.py [--models a.onnx b.onnx] [--bits 4 5] [--codebooks linear exponential]

One row per model x bits x codebook x granularity. "weights/s" is compressed
weights / (quantize + rewrite seconds, from the report); "wall s" is the whole
onnxq.compress call: load, quantize, rewrite, save and (with --validate) validation.
Outputs go to a temporary folder that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnxq
from onnxq.api import GRANULARITIES
from onnxq.codebooks import CODEBOOKS

ROOT = Path(__file__).resolve().parent.parent
SHARED_MODELS = ROOT.parent / "shared" / "models"
COLUMNS = [
    "model",
    "bits",
    "codebook",
    "granularity",
    "weights",
    "quantize+rewrite s",
    "weights/s",
    "wall s",
    "ratio",
]


def time_compress(src: Path, dst: Path, config: onnxq.Config) -> tuple[onnxq.Report, float]:
    """The report of one compression and its wall time in seconds."""
    start = time.perf_counter()
    report = onnxq.compress(src, dst, config)
    return report, time.perf_counter() - start


def bench_row(src: Path, dst: Path, config: onnxq.Config) -> list[str]:
    report, wall = time_compress(src, dst, config)
    work = report.seconds["quantize"] + report.seconds["rewrite"]
    n = report.compressed_elements
    return [
        src.stem,
        str(config.bits),
        config.codebook,
        config.granularity,
        f"{n:,}",
        f"{work:.2f}",
        f"{n / work:,.0f}",
        f"{wall:.2f}",
        f"{report.ratio:.2f}",
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
        "--validate",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include onnxq's onnxruntime validation in the wall time (default: on)",
    )
    args = parser.parse_args(argv)

    models = args.models or sorted(SHARED_MODELS.glob("*.onnx"))
    for model in models:
        if not model.is_file():
            raise SystemExit(f"error: model {model} does not exist")
    if not models:
        raise SystemExit(f"error: no .onnx models in {SHARED_MODELS}")

    print(markdown_row(COLUMNS))
    print(markdown_row(["---"] * 4 + ["---:"] * (len(COLUMNS) - 4)))
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-") as tmp:
        dst = Path(tmp) / "out.onnx"
        for model in models:
            for bits in args.bits:
                for codebook in args.codebooks:
                    for granularity in args.granularities:
                        config = onnxq.Config(
                            bits=bits, codebook=codebook, granularity=granularity, validate=args.validate
                        )
                        print(markdown_row(bench_row(model, dst, config)), flush=True)


if __name__ == "__main__":
    main()
