"""The sweep's grid: axes of Config fields, crossed into cells, one compression setting each.

grid_cells(grid) = { normalize(c) : c in product(grid's axes) }, minus the settings Config refuses
(each with its reason): --target-bits overrides --bits, so a cell with a budget drops its width.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass

from onnxq.errors import OnnxqError
from onnxq.quant.codebooks import CODEBOOKS, DEFAULT_CODEBOOK

# The settings a sweep may vary, with how a value is read from the command line.
AXES: dict[str, type] = {
    "bits": int,
    "target_bits": float,
    "codebook": str,
    "format": str,
    "rounding": str,
    "granularity": str,
    "group_size": int,
    "search": str,
    "scale": str,
    "bias_correction": bool,
}
# Every width that matters, with the default codebook and the evenly spaced one.
DEFAULT_GRID: dict[str, list] = {
    "bits": [3, 4, 5, 6, 8],
    "codebook": [DEFAULT_CODEBOOK] + [name for name, c in CODEBOOKS.items() if c.evenly_spaced],
}
NONE = "none"  # the value that means "not set" (Config's default), e.g. target_bits=none,4,5


@dataclass(frozen=True)
class Cell:
    """One setting of the grid: the Config fields it sets, in axis order."""

    settings: tuple[tuple[str, object], ...]

    @property
    def key(self) -> str:
        """A file name: readable, and unique by its hash."""
        text = "_".join(f"{k}-{v}" for k, v in self.settings) or "defaults"
        readable = re.sub(r"[^A-Za-z0-9.\-_]", "", text)[:80]
        digest = hashlib.sha256(json.dumps(self.settings).encode()).hexdigest()[:8]
        return f"{readable}-{digest}"

    @property
    def options(self) -> str:
        """The command-line options that reproduce it."""
        parts = []
        for k, v in self.settings:
            flag = "--" + k.replace("_", "-")
            parts.append(flag if v is True else f"--no-{flag[2:]}" if v is False else f"{flag} {v}")
        return " ".join(parts) or "(defaults)"

    def as_dict(self) -> dict:
        return dict(self.settings)


def parse_axis(text: str) -> tuple[str, list]:
    """ "KEY=V1,V2,..." as (key, values), with each value read as the key's type."""
    key, sep, values = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not values.strip():
        raise OnnxqError(f"--grid {text!r}: write KEY=V1,V2,... such as bits=3,4,5")
    if key not in AXES:
        raise OnnxqError(
            f"--grid {text!r}: {key!r} is not a setting a sweep varies; choose from {', '.join(AXES)}"
        )
    return key, [_value(key, v.strip(), text) for v in values.split(",")]


def _value(key: str, raw: str, text: str) -> object:
    if raw.lower() == NONE:
        return None
    kind = AXES[key]
    if kind is bool:
        if raw.lower() not in ("true", "false", "on", "off"):
            raise OnnxqError(f"--grid {text!r}: {key} takes on or off; got {raw!r}")
        return raw.lower() in ("true", "on")
    try:
        return kind(raw)
    except ValueError:
        raise OnnxqError(f"--grid {text!r}: {raw!r} is not a valid {kind.__name__} for {key}") from None


def grid_cells(grid: dict[str, list], check) -> tuple[list[Cell], list[tuple[Cell, str]]]:
    """Every setting of the grid once, and the ones check(settings) refused with its message.
    check raises OnnxqError for a setting that compress would refuse."""
    keys = list(grid)
    out: list[Cell] = []
    refused: list[tuple[Cell, str]] = []
    for values in itertools.product(*(grid[k] for k in keys)):
        settings = {k: v for k, v in zip(keys, values) if v is not None}
        if "target_bits" in settings:
            settings.pop("bits", None)  # --target-bits overrides --bits
        cell = Cell(tuple(settings.items()))
        if cell in out or any(cell == c for c, _ in refused):
            continue
        try:
            check(settings)
        except OnnxqError as exc:
            refused.append((cell, str(exc)))
            continue
        out.append(cell)
    return out, refused
