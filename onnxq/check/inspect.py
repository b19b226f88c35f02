"""What a model holds: the weights onnxq would compress and what they would weigh, or what an
onnxq output stores, tensor by tensor. Nothing is quantized and nothing is run.

A float model's predicted output is its file less the float bytes of the weights to compress,
plus what the storage format counts for each at --bits (index_bytes + codebook_bytes of a
quantize.shape_only: shapes only); with --target-bits, the allocation's budget, target * weights / 8.
An output's tensors are read back from its graph by each format's `stored`, and the version and
settings that wrote it from its metadata_props (api.stamp).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxq.check.report import SkipReport, finite
from onnxq.graph.select import Skip, Weight, find_weights, iter_graphs
from onnxq.quant import layout
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.quantize import shape_only
from onnxq.storage import FORMATS
from onnxq.storage import group_size as storage_group_size
from onnxq.storage.base import CONFIG_KEY, MARK, TENSORS_KEY, VERSION_KEY, Read, Stored

CHUNK = 1 << 22  # weights read at once for the ranges: a memory map is read a part at a time


@dataclass
class FloatWeight:
    """A weight onnxq would compress: its values' range, and what it would weigh stored."""

    name: str
    shape: list[int]
    uses: list[str]
    bytes: int  # as float now
    min: float
    max: float
    std: float
    groups: int  # sets of levels at the settings
    stored_bytes: int | None  # index + codebook bytes at --bits; None with --target-bits


@dataclass
class Prediction:
    """The output's size at the settings, and what the figure assumes."""

    settings: dict
    weights: int  # weights compressed
    float_bytes: int  # what those weights take now
    stored_bytes: int  # indices and codebooks, as the format counts them
    output_bytes: int
    ratio: float
    bits_per_weight: float
    assumptions: list[str] = field(default_factory=list)


@dataclass
class Inspection:
    """What `onnxq inspect` found in a model."""

    path: str
    file_bytes: int
    compressed: bool  # an onnxq output
    written_by: str | None = None  # the onnxq version in the metadata, if any
    settings: dict | None = None  # the settings recorded with that version
    weights: list[FloatWeight] = field(default_factory=list)  # float model: the weights to compress
    stored: list[Stored] = field(default_factory=list)  # onnxq output: the weights it stores
    skipped: list[SkipReport] = field(default_factory=list)
    prediction: Prediction | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return "onnxq output" if self.compressed else "float model"

    def stored_summary(self) -> dict:
        """An output's totals: weights, index and codebook bytes, bits per weight, per format."""
        n = sum(math.prod(s.shape) for s in self.stored)
        index = sum(s.index_bytes for s in self.stored)
        codebooks = sum(s.codebook_bytes for s in self.stored)
        return {
            "tensors": len(self.stored),
            "weights": n,
            "index_bytes": index,
            "codebook_bytes": codebooks,
            "bits_per_weight": 8 * (index + codebooks) / n if n else math.nan,
            "formats": sorted({s.format for s in self.stored}),
        }

    def to_dict(self) -> dict:
        d = {
            "path": self.path,
            "kind": self.kind,
            "file_bytes": self.file_bytes,
            "written_by": self.written_by,
            "settings": self.settings,
            "weights": [asdict(w) for w in self.weights],
            "stored": [s._asdict() | {"shape": list(s.shape)} for s in self.stored],
            "stored_summary": self.stored_summary() if self.compressed else None,
            "skipped": [asdict(s) for s in self.skipped],
            "prediction": asdict(self.prediction) if self.prediction is not None else None,
            "notes": self.notes,
        }
        return finite(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def value_range(array: np.ndarray) -> tuple[float, float, float]:
    """(min, max, std) of an array, read CHUNK values at a time (a memory map stays on disk)."""
    flat = array.reshape(-1)
    lo, hi, count, mean, m2 = math.inf, -math.inf, 0, 0.0, 0.0
    for start in range(0, flat.size, CHUNK):
        part = np.asarray(flat[start : start + CHUNK], dtype=np.float64)
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
        m, n = float(part.mean()), part.size
        delta = m - mean  # Chan's parallel update of the mean and the sum of squared deviations
        m2 += float(((part - m) ** 2).sum()) + delta * delta * count * n / (count + n)
        mean += delta * n / (count + n)
        count += n
    if count == 0:
        return math.nan, math.nan, math.nan
    return lo, hi, math.sqrt(m2 / count)


def float_weight(w: Weight, fmt_name: str, codebook: str, bits: int | None, granularity: str, group_size):
    """A weight's range and, at bits, its stored bytes as the format counts them."""
    fmt = FORMATS[fmt_name]
    if bits is not None:
        group_size = storage_group_size(w, fmt_name, codebook, bits, granularity, group_size)
    groups, n = layout.rows_shape(w, granularity, group_size)
    stored = None
    if bits is not None:
        q = shape_only(CODEBOOKS[codebook], bits, groups, n)
        stored = sum(fmt.file_bytes(q, tuple(w.array.shape), w.uses))
    lo, hi, std = value_range(w.array)
    shape = [int(d) for d in w.array.shape]
    return FloatWeight(w.name, shape, w.uses, int(w.array.nbytes), lo, hi, std, groups, stored)


def describe_float(
    path: Path,
    file_bytes: int,
    weights: list[Weight],
    skips: Sequence[Skip],
    settings: dict,
    assumptions: list[str],
    folded_bytes: int | None = None,
) -> Inspection:
    """A float model's weights at the settings (format, codebook, bits or target_bits,
    granularity, group_size), and the predicted output. folded_bytes: the model's size once
    its constants are folded, as compress writes the rest of it (default: file_bytes)."""
    target = settings.get("target_bits")
    bits = None if target is not None else settings["bits"]
    found = [
        float_weight(
            w, settings["format"], settings["codebook"], bits, settings["granularity"], settings["group_size"]
        )
        for w in weights
    ]
    out = Inspection(str(path), file_bytes, compressed=False, weights=found, skipped=_skips(skips))
    base = file_bytes if folded_bytes is None else folded_bytes
    out.prediction = _predict(found, file_bytes, base, settings, assumptions)
    return out


def _predict(found: list[FloatWeight], file_bytes: int, base: int, settings: dict, assumptions) -> Prediction:
    n = sum(math.prod(w.shape) for w in found)
    before = sum(w.bytes for w in found)
    target = settings.get("target_bits")
    if target is not None:
        stored = math.floor(target * n / 8)
    else:
        stored = sum(w.stored_bytes or 0 for w in found)
    output = base - before + stored
    return Prediction(
        settings=settings,
        weights=n,
        float_bytes=before,
        stored_bytes=stored,
        output_bytes=output,
        ratio=file_bytes / output if output > 0 else math.nan,
        bits_per_weight=8 * stored / n if n else math.nan,
        assumptions=assumptions,
    )


def _skips(skips: Sequence[Skip]) -> list[SkipReport]:
    return [SkipReport(s.name, list(s.shape), s.reason) for s in skips]


def describe_output(model: onnx.ModelProto, path: Path, file_bytes: int, read: Read) -> Inspection:
    """What an onnxq output stores, tensor by tensor, and what it left in float."""
    props = {p.key: p.value for p in model.metadata_props}
    out = Inspection(str(path), file_bytes, compressed=True, written_by=props.get(VERSION_KEY))
    if CONFIG_KEY in props:
        try:
            out.settings = json.loads(props[CONFIG_KEY])
        except json.JSONDecodeError:
            out.notes.append(f"its {CONFIG_KEY} metadata is not JSON; the settings are unknown")
    if out.written_by is None:
        out.notes.append("its metadata names no onnxq version: an onnxq that did not record it wrote it")
    for graph in iter_graphs(model.graph):
        for fmt in FORMATS.values():
            out.stored += fmt.stored(model, graph, read)
    if TENSORS_KEY in props or not out.stored:  # inlined decoders: the graph shows only the rest
        seen = {t.name for t in out.stored}
        out.stored += [t for t in _recorded(props, out.notes) if t.name not in seen]
    out.skipped = _left_float(model, int((out.settings or {}).get("min_elements", 1)))
    return out


def _recorded(props: dict[str, str], notes: list[str]) -> list[Stored]:
    """The stored tensors as compress recorded them, for an output whose decoders were inlined."""
    try:
        rows = json.loads(props[TENSORS_KEY])
        stored = [Stored(r[0], tuple(r[1]), *r[2:8]) for r in rows]
    except (KeyError, ValueError, TypeError, IndexError):
        notes.append("onnxq's decoders are here, but no call of them was recognised, and no record of them")
        return []
    notes.append(
        f"the tensors as compress recorded them ({TENSORS_KEY}): this output's decoders were inlined "
        "(IR version before 8), so the graph no longer shows which call rebuilds which weight"
    )
    return stored


def _left_float(model: onnx.ModelProto, min_elements: int) -> list[SkipReport]:
    """The float tensors an output kept, with why (onnxq's own codebook tensors aside)."""
    weights, skips = find_weights(model, min_elements, read=_shape_only)
    kept = [SkipReport(s.name, list(s.shape), s.reason) for s in skips if MARK not in s.name]
    return kept + [
        SkipReport(w.name, list(w.array.shape), "a weight this output keeps in float")
        for w in weights
        if MARK not in w.name
    ]


def _shape_only(tensor: onnx.TensorProto) -> np.ndarray:
    """A stand-in with the tensor's shape and no memory: find_weights' read, where no value is used."""
    return np.broadcast_to(np.zeros((), np.float32), tuple(int(d) for d in tensor.dims))
