"""Issue 2: size, ImageNet-sample accuracy and compress time over bits x codebook x granularity.

    python tools/sweep_issue2.py [--models efficientnet_lite0 mobilenet_v2_1.0_224] [--bits 2 3] [--limit N]

For each shared model and config: compress with onnxq's defaults otherwise
(validation on, --scale lsq, one worker process per core as the CLI), then run
the compressed model in onnxruntime on the images. Columns per model: size ratio,
top-1, top-1 agreement with the float model, and the wall time of the whole
onnxq.compress call. Prints a Markdown
table on stdout and progress on stderr; compressed models go to a temporary
folder that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compress import SHARED_MODELS, markdown_row, time_compress
from imagenet import preset_for
from imagenet_eval import DEFAULT_IMAGES, load_images, predict_top5, score

import onnxq
from onnxq.api import GRANULARITIES, default_jobs
from onnxq.quant.codebooks import CODEBOOKS

MODELS = ["efficientnet_lite0", "mobilenet_v2_1.0_224"]
Key = tuple[int, str, str]


def sweep_model(
    name: str, configs: list[Key], images: Path, limit: int | None, tmp: Path
) -> tuple[dict, dict]:
    """The float model's scores, and per config the cells (ratio, top-1, agreement, seconds)."""
    src = SHARED_MODELS / f"{name}.onnx"
    if not src.is_file():
        raise SystemExit(f"error: model {src} does not exist")
    prep = preset_for(name)
    x, labels = load_images(images, prep, limit)
    float_top5 = predict_top5(src, x)
    float_score = score(float_top5, labels, prep)
    cells = {}
    for bits, codebook, granularity in configs:
        dst = tmp / f"{name}.onnx"
        config = onnxq.Config(bits=bits, codebook=codebook, granularity=granularity, jobs=default_jobs())
        try:
            report, wall = time_compress(src, dst, config)
        except Exception as exc:  # noqa: BLE001 - a failed config is a result, not the end of the sweep
            print(f"{name} {bits} {codebook} {granularity}: FAILED: {exc}", file=sys.stderr)
            cells[bits, codebook, granularity] = ["failed"] * 4
            continue
        s = score(predict_top5(dst, x), labels, prep, float_top5)
        cells[bits, codebook, granularity] = [
            f"{report.ratio:.2f}",
            f"{s['top1']:.3f}",
            f"{s['agreement']:.3f}",
            f"{wall:.1f}",
        ]
        print(
            f"{name} {bits} {codebook} {granularity}: {' '.join(cells[bits, codebook, granularity])}",
            file=sys.stderr,
            flush=True,
        )
    load_images.cache_clear()  # 600 MB per model at 224x224
    return float_score, cells


def render_table(models: list[str], configs: list[Key], results: dict[str, dict]) -> list[str]:
    header = ["bits", "codebook", "granularity"]
    for name in models:
        header += [f"{name} ratio", f"{name} top-1", f"{name} agree", f"{name} s"]
    lines = [markdown_row(header), markdown_row(["---:", "---", "---"] + ["---:"] * (len(header) - 3))]
    for key in configs:
        cells = [str(key[0]), key[1], key[2]]
        for name in models:
            cells += results[name][key]
        lines.append(markdown_row(cells))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=MODELS, help="shared model names")
    parser.add_argument("--bits", type=int, nargs="+", default=list(range(2, 9)))
    parser.add_argument("--codebooks", nargs="+", choices=list(CODEBOOKS), default=["linear", "exponential"])
    parser.add_argument("--granularities", nargs="+", choices=GRANULARITIES, default=list(GRANULARITIES))
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit", type=int, help="only the first N images")
    args = parser.parse_args(argv)

    configs = list(itertools.product(args.bits, args.codebooks, args.granularities))
    results, floats = {}, {}
    with tempfile.TemporaryDirectory(prefix="onnxq-sweep-") as tmp:
        for name in args.models:
            floats[name], results[name] = sweep_model(name, configs, args.images, args.limit, Path(tmp))
    n = next(iter(floats.values()))["images"]
    print(
        f"Float top-1 on these {n} images: "
        + ", ".join(f"{name} {s['top1']:.3f}" for name, s in floats.items())
        + ".\n"
    )
    print("\n".join(render_table(args.models, configs, results)))


if __name__ == "__main__":
    main()
