"""Write an npz of preprocessed images for onnxq's calibration (samples along axis 0).

    python tools/make_calibration.py calib.npz --model efficientnet_lite0.onnx --every 10

The project's protocol: --every 10 keeps the images whose class index is a
multiple of 10 (100 of the 1000 sample images); tools/imagenet_eval.py
--exclude-every 10 evaluates on the other 900. Preprocessing is chosen as in
tools/imagenet_eval.py: from the model's file name, --preset, or
--crop/--normalization. The array is stored under --input-name, by default the
model's only input, or "input" without --model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagenet
from imagenet_eval import add_preprocess_arguments, choose_preprocess


def model_input_name(model: Path) -> str:
    """The model's single fed input (initializers listed as inputs do not count)."""
    import onnx

    if not model.is_file():
        raise SystemExit(f"error: model {model} does not exist")
    graph = onnx.load(model, load_external_data=False).graph
    inits = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in inits]
    if len(names) != 1:
        raise SystemExit(f"error: {model.name} takes inputs {names}; pass --input-name NAME")
    return names[0]


def save_atomically(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the npz next to its destination, then rename it, so no half-written file remains."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path, help="the .npz to write")
    parser.add_argument(
        "--model", type=Path, help="its file name picks the preset; its input names the array"
    )
    add_preprocess_arguments(parser, "accepted for parity with imagenet_eval.py; unused")
    parser.add_argument(
        "--every",
        type=int,
        metavar="K",
        help="keep images whose class index is a multiple of K (10: calibration)",
    )
    parser.add_argument("--limit", type=int, help="only the first N images (after --every)")
    parser.add_argument("--input-name", help="the npz key; default: the model's input, else 'input'")
    args = parser.parse_args(argv)

    if args.model is None and args.preset is None and (args.crop is None or args.normalization is None):
        parser.error("pass --model, --preset, or both --crop and --normalization")
    if not args.images.is_dir():
        raise SystemExit(f"error: image folder {args.images} does not exist")
    if not args.output.parent.is_dir():
        raise SystemExit(f"error: folder {args.output.parent} does not exist")
    name = args.input_name or (model_input_name(args.model) if args.model else "input")
    prep = choose_preprocess(
        args.model or Path(""), args.preset, args.crop, args.normalization, args.label_offset
    )
    items = imagenet.select_images(imagenet.list_images(args.images), every=args.every, limit=args.limit)
    if not items:
        raise SystemExit(f"error: no images left in {args.images} after --every/--limit")
    x = imagenet.load_batch([p for p, _ in items], prep)
    save_atomically(args.output, {name: x})
    print(
        f"{args.output}: {name} {x.shape} {x.dtype}, {len(items)} images, crop {prep.crop}, "
        f"{prep.normalization}"
    )


if __name__ == "__main__":
    main()
