"""ImageNet sample loading and preprocessing shared by the tools (needs Pillow).

Preprocessing follows ../shared/models/MODELS.md: RGB, bilinear resize of the
short side to round(crop / 0.875), center crop, scale to [0, 1], normalize,
NCHW float32.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NORMALIZATIONS = {
    # name: (scale, offset) applied to x in [0, 1]: x * scale + offset
    "efficientnet": (255.0 / 128.0, -127.0 / 128.0),  # (x*255-127)/128
    "inception": (2.0, -1.0),  # x*2-1
}

_SYNSET = re.compile(r"^(n\d{8})")


@dataclass(frozen=True)
class Preprocess:
    """How to turn an image file into one network input."""

    crop: int
    normalization: str
    label_offset: int = 0  # 1 for 1001-class models whose index 0 is background


def preset_for(model_name: str) -> Preprocess:
    """The MODELS.md preprocessing for a shared model, from its file name."""
    name = Path(model_name).name
    presets = {
        "efficientnet_lite0": Preprocess(224, "efficientnet"),
        "efficientnet_lite2": Preprocess(260, "efficientnet"),
        "mobilenet_v2_1.0_224": Preprocess(224, "inception", 1),
        "mobilenet_v1_0.5_160": Preprocess(160, "inception", 1),
        "mobilenet_v1_0.25_128": Preprocess(128, "inception", 1),
    }
    for prefix, preset in presets.items():
        if name.startswith(prefix):
            return preset
    raise SystemExit(f"error: no preprocessing preset for {name}; pass --crop and --normalization")


def list_images(folder: Path) -> list[tuple[Path, int]]:
    """Image files and their class index (rank of the synset id among all synsets)."""
    files = sorted(p for p in folder.iterdir() if _SYNSET.match(p.name))
    if not files:
        raise SystemExit(f"error: no <synset>_*.JPEG images in {folder}")
    synsets = sorted({_SYNSET.match(p.name).group(1) for p in files})  # type: ignore[union-attr]
    rank = {s: i for i, s in enumerate(synsets)}
    return [(p, rank[_SYNSET.match(p.name).group(1)]) for p in files]  # type: ignore[union-attr]


def select_images(
    items: list[tuple[Path, int]],
    every: int | None = None,
    exclude_every: int | None = None,
    limit: int | None = None,
) -> list[tuple[Path, int]]:
    """The project's splits: every=10 keeps classes 0, 10, 20, ... (calibration);
    exclude_every=10 keeps the others (evaluation). Then the first `limit`."""
    for step in (every, exclude_every):
        if step is not None and step < 1:
            raise SystemExit(f"error: the class step must be at least 1, not {step}")
    if every is not None:
        items = [(p, c) for p, c in items if c % every == 0]
    if exclude_every is not None:
        items = [(p, c) for p, c in items if c % exclude_every != 0]
    return items[:limit]


def load_image(path: Path, prep: Preprocess) -> np.ndarray:
    """One preprocessed image, shape (3, crop, crop), float32."""
    from PIL import Image

    with Image.open(path) as opened:
        img = opened.convert("RGB")
        short = round(prep.crop / 0.875)
        w, h = img.size
        if w < h:
            size = (short, max(short, round(h * short / w)))
        else:
            size = (max(short, round(w * short / h)), short)
        img = img.resize(size, Image.Resampling.BILINEAR)
        # torchvision's center crop rounds the offset to nearest
        left = round((size[0] - prep.crop) / 2.0)
        top = round((size[1] - prep.crop) / 2.0)
        img = img.crop((left, top, left + prep.crop, top + prep.crop))
        x = np.asarray(img, dtype=np.float32) / 255.0
    scale, offset = NORMALIZATIONS[prep.normalization]
    return (x * scale + offset).transpose(2, 0, 1).copy()


def load_batch(paths: list[Path], prep: Preprocess) -> np.ndarray:
    return np.stack([load_image(p, prep) for p in paths])
