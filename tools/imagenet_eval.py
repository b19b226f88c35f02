"""Top-1 / top-5 of an ONNX ImageNet classifier on a folder of labeled images.

    python tools/imagenet_eval.py model.onnx [--preset efficientnet_lite0] [--reference float.onnx]

Preprocessing comes from the model's file name (tools/imagenet.py presets), from
--preset, or from --crop/--normalization/--label-offset, which override the preset.
Preprocessed images are cached in memory only, never written to disk.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagenet
from imagenet import NORMALIZATIONS, Preprocess

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = ROOT.parent / "shared" / "data" / "imagenet-sample"


def choose_preprocess(
    model: Path,
    preset: str | None = None,
    crop: int | None = None,
    normalization: str | None = None,
    label_offset: int | None = None,
) -> Preprocess:
    """The preset (or the model name's preset) with any explicit field overriding it."""
    if preset is None and (crop is None or normalization is None):
        preset = model.name
    try:
        base = imagenet.preset_for(preset) if preset else None
    except SystemExit as exc:
        raise SystemExit(f"{exc}, or --preset NAME") from None
    return Preprocess(
        crop=crop if crop is not None else base.crop,  # type: ignore[union-attr]
        normalization=normalization or base.normalization,  # type: ignore[union-attr]
        label_offset=label_offset if label_offset is not None else (base.label_offset if base else 0),
    )


def add_preprocess_arguments(parser: argparse.ArgumentParser, label_offset_help: str) -> None:
    """The image folder and preprocessing flags that choose_preprocess reads."""
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="default: %(default)s")
    parser.add_argument(
        "--preset", help="a shared model name whose preprocessing to use, e.g. efficientnet_lite0"
    )
    parser.add_argument("--crop", type=int)
    parser.add_argument("--normalization", choices=sorted(NORMALIZATIONS))
    parser.add_argument("--label-offset", type=int, help=label_offset_help)


@functools.lru_cache(maxsize=4)
def load_images(
    folder: Path, prep: Preprocess, limit: int | None = None, exclude_every: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The folder's images as one (N, 3, crop, crop) array, and their class indices.

    exclude_every=10 drops the calibration split (classes 0, 10, 20, ...); limit applies after it.
    """
    if not folder.is_dir():
        raise SystemExit(f"error: image folder {folder} does not exist")
    items = imagenet.select_images(imagenet.list_images(folder), exclude_every=exclude_every, limit=limit)
    return imagenet.load_batch([p for p, _ in items], prep), np.array([c for _, c in items])


def open_session(model: str | Path):
    import onnxruntime as ort

    model = Path(model)
    if not model.is_file():
        raise SystemExit(f"error: model {model} does not exist")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise SystemExit(f"error: onnxruntime cannot load {model}: {str(exc).strip().splitlines()[0]}")


def predict_top5(model: str | Path, images: np.ndarray, batch: int = 50) -> np.ndarray:
    """The five highest-scoring class indices per image, best first, shape (N, 5)."""
    sess = open_session(model)
    name = sess.get_inputs()[0].name
    top = []
    for i in range(0, len(images), batch):
        logits = sess.run(None, {name: images[i : i + batch]})[0]
        top.append(np.argsort(-logits, axis=1)[:, :5])
    return np.concatenate(top)


def score(
    top5: np.ndarray, labels: np.ndarray, prep: Preprocess, reference: np.ndarray | None = None
) -> dict:
    """top-1, top-5, and top-1 agreement with the reference's predictions when given."""
    target = labels + prep.label_offset
    result = {
        "images": len(labels),
        "top1": float(np.mean(top5[:, 0] == target)),
        "top5": float(np.mean(np.any(top5 == target[:, None], axis=1))),
    }
    if reference is not None:
        result["agreement"] = float(np.mean(top5[:, 0] == reference[:, 0]))
    return result


def evaluate(
    model: Path,
    prep: Preprocess,
    images: Path = DEFAULT_IMAGES,
    reference: Path | None = None,
    limit: int | None = None,
    batch: int = 50,
    exclude_every: int | None = None,
) -> dict:
    x, labels = load_images(images, prep, limit, exclude_every)
    ref = predict_top5(reference, x, batch) if reference else None
    return score(predict_top5(model, x, batch), labels, prep, ref)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    add_preprocess_arguments(parser, "1 for 1001-class models (index 0 = background)")
    parser.add_argument("--reference", type=Path, help="float model: also report top-1 agreement with it")
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument(
        "--exclude-every",
        type=int,
        metavar="K",
        help="drop images whose class index is a multiple of K; 10 leaves the evaluation split "
        "(the other 900 of the 1000 sample images; tools/make_calibration.py --every 10 takes those 100)",
    )
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)

    for path in [args.model] + ([args.reference] if args.reference else []):
        if not path.is_file():
            raise SystemExit(f"error: model {path} does not exist")
    if not args.images.is_dir():
        raise SystemExit(f"error: image folder {args.images} does not exist")
    prep = choose_preprocess(args.model, args.preset, args.crop, args.normalization, args.label_offset)
    result = evaluate(
        args.model, prep, args.images, args.reference, args.limit, args.batch, args.exclude_every
    )
    result = {"model": str(args.model), "preprocess": asdict(prep), **result}
    if args.exclude_every:
        result["exclude_every"] = args.exclude_every

    print(
        f"{args.model.name}: {result['images']} images, crop {prep.crop}, {prep.normalization}, "
        f"label offset {prep.label_offset}"
    )
    print(f"top-1 {result['top1']:.3f}  top-5 {result['top5']:.3f}", end="")
    print(f"  top-1 agreement with {args.reference.name} {result['agreement']:.3f}" if args.reference else "")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
