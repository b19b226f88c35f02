"""The Report of one compression: what was done, what it cost, how close it is.

Serialized as JSON (schema_version 2, documented in docs/FORMATS.md), Markdown, and HTML
(check/html.py).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from onnxq import __version__
from onnxq.check.validate import Validation

SCHEMA_VERSION = 2  # 2: validation says what it ran on (inputs, real, shapes), its gates and verdict


@dataclass
class WeightReport:
    name: str
    shape: list[int]
    uses: list[str]
    groups: int
    bits: int
    codebook: str
    elements: int
    index_bytes: int
    codebook_bytes: int
    correlation: float
    sqnr_db: float
    granularity: str = "channel"  # "channel", "tensor" (one codebook for the whole tensor) or "block"
    rounding: str = "nearest"  # or "gptq", or "nearest (why GPTQ could not run)"
    bias_correction: list[str] = field(default_factory=list)  # per reading layer, what was done


@dataclass
class SkipReport:
    name: str
    shape: list[int]
    reason: str


@dataclass
class Bytes:
    """Where the output file's bytes go."""

    indices: int = 0  # packed codes: bits/8 bytes per weight
    codebooks: int = 0  # per-group parameters and their ranges
    float_tensors: int = 0  # tensors left in float (biases, skipped weights)
    graph: int = 0  # everything else: nodes, names, shapes, decoder functions
    total: int = 0

    def settle(self, total: int) -> None:
        """Set the total; the graph gets whatever the itemized parts do not account for."""
        self.total = total
        self.graph = total - self.indices - self.codebooks - self.float_tensors


@dataclass
class LevelPicture:
    """One group of a weight (its worst, by SQNR) as a histogram, with the levels its codes take:
    what the HTML report draws. Kept in memory only, never in the JSON."""

    group: int  # which row of the (groups, n) layout
    counts: list[int]
    edges: list[float]  # len(counts) + 1 bin edges
    levels: list[float]  # the group's 2^bits levels
    sqnr_db: float  # of this group alone

    @classmethod
    def of(cls, rows: np.ndarray, levels: np.ndarray, restored: np.ndarray, bins: int = 80) -> LevelPicture:
        """rows, restored: (groups, n) weights and what the codes rebuild; levels: (groups, 2^bits)."""
        signal = np.einsum("ij,ij->i", rows, rows, dtype=np.float64)
        error = rows - restored
        noise = np.einsum("ij,ij->i", error, error, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            sqnr = 10 * np.log10(signal / noise)
        sqnr = np.where(np.isnan(sqnr), np.inf, sqnr)
        g = int(np.argmin(sqnr))
        counts, edges = np.histogram(rows[g], bins=bins)
        return cls(g, counts.tolist(), edges.tolist(), sorted(set(levels[g].tolist())), float(sqnr[g]))


@dataclass
class Report:
    """Truthy when validation passed (or did not run)."""

    config: dict
    weights: list[WeightReport] = field(default_factory=list)
    skipped: list[SkipReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    input_bytes: int = 0
    output: Bytes = field(default_factory=Bytes)
    validation: Validation | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    calibration: str | None = None  # which data the data-driven steps ran on, if any
    paths: dict[str, str] = field(default_factory=dict)  # input, output: set by api.compress
    # For the HTML report, per weight name; None when compress was not asked to keep them.
    pictures: dict[str, LevelPicture] | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return self.validation is None or bool(self.validation)

    @property
    def compressed_elements(self) -> int:
        return sum(w.elements for w in self.weights)

    @property
    def ratio(self) -> float:
        return self.input_bytes / self.output.total if self.output.total else math.nan

    def widths(self) -> dict[str, int]:
        """How many tensors got each storage: "5 bits", "4 bits per tensor", "float" (left in float
        by --target-bits), in that order: by width, then per tensor, then float."""
        counts: dict[str, int] = {}
        for w in sorted(self.weights, key=lambda w: (w.granularity == "tensor", w.bits)):
            key = f"{w.bits} bits" + (" per tensor" if w.granularity == "tensor" else "")
            counts[key] = counts.get(key, 0) + 1
        floats = sum(1 for s in self.skipped if s.reason.startswith("left in float by --target-bits"))
        if floats:
            counts["float"] = floats
        return counts

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per compressed weight: indices plus codebooks."""
        n = self.compressed_elements
        return 8 * (self.output.indices + self.output.codebooks) / n if n else math.nan

    def to_dict(self) -> dict:
        return finite(
            {
                "schema_version": SCHEMA_VERSION,
                "onnxq_version": __version__,
                "paths": self.paths,
                "config": self.config,
                "summary": {
                    "input_bytes": self.input_bytes,
                    "output_bytes": self.output.total,
                    "ratio": self.ratio,
                    "compressed_tensors": len(self.weights),
                    "compressed_weights": self.compressed_elements,
                    "skipped_tensors": len(self.skipped),
                    "bits_per_weight": self.bits_per_weight,
                    "widths": self.widths(),
                    "passed": bool(self),
                },
                "bytes": asdict(self.output),
                "weights": [asdict(w) for w in self.weights],
                "skipped": [asdict(s) for s in self.skipped],
                "validation": self.validation.to_dict() if self.validation is not None else None,
                "calibration": self.calibration,
                "notes": self.notes,
                "seconds": self.seconds,
            }
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_markdown(self) -> str:
        d = self.to_dict()
        s = d["summary"]
        b = d["bytes"]
        lines = [
            "# onnxq compression report",
            "",
            f"- onnxq {__version__}",
            *[f"- {role}: `{path}`" for role, path in self.paths.items()],
            f"- data: {self.calibration or 'none (no step needed calibration data)'}",
            (
                f"- size: {s['input_bytes']:,} -> {s['output_bytes']:,} bytes "
                f"({number(s['ratio'], 2)}x smaller), {number(s['bits_per_weight'], 3)} bits per weight"
            ),
            (
                f"- compressed {s['compressed_tensors']} tensors ({s['compressed_weights']:,} weights), "
                f"skipped {s['skipped_tensors']}"
            ),
            "",
            "| bytes | count | share |",
            "|---|---:|---:|",
        ]
        for key in ("indices", "codebooks", "float_tensors", "graph"):
            lines.append(f"| {key} | {b[key]:,} | {_pct(b[key], b['total'])} |")
        lines += ["", "## Settings", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {_cell(v)} |" for k, v in self.config.items()]
        if self.seconds:
            lines += ["", "## Time", "", "| stage | seconds |", "|---|---:|"]
            lines += [f"| {k} | {v:.2f} |" for k, v in self.seconds.items()]
        if d["validation"]:
            v = d["validation"]
            lines += [
                "",
                f"## Validation: {v['verdict']}",
                "",
                f"- inputs: {v['inputs']} ({v['samples']} samples)",
                f"- gates: {'; '.join(v['gates']) or 'none'}",
                "",
                "| output | max abs | rel L2 | cosine | SQNR dB | top-1 agreement |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for o in v["outputs"]:
                lines.append(
                    f"| {o['name']} | {number(o['max_abs_error'], 4)} | {number(o['relative_l2_error'], 4)}"
                    f" | {number(o['cosine'], 5)} | {number(o['sqnr_db'], 1)} | {number(o['top1_agreement'], 3)} |"
                )
            lines += [f"- {f}" for f in v["failures"]]
        lines += [
            "",
            "## Compressed weights",
            "",
            (
                "| name | shape | groups | bits | codebook | rounding | bias correction "
                "| index bytes | codebook bytes | corr | SQNR dB |"
            ),
            "|---|---|---:|---:|---|---|---|---:|---:|---:|---:|",
        ]
        for w in d["weights"]:
            lines.append(
                f"| {w['name']} | {w['shape']} | {w['groups']} | {w['bits']} | {w['codebook']} "
                f"| {w['rounding']} | {'; '.join(w['bias_correction']) or '-'} "
                f"| {w['index_bytes']:,} | {w['codebook_bytes']:,} | {number(w['correlation'], 5)} "
                f"| {number(w['sqnr_db'], 1)} |"
            )
        lines += self._skipped_markdown()
        if d["notes"]:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in d["notes"]]
        return "\n".join(lines) + "\n"

    def _skipped_markdown(self) -> list[str]:
        """Biases as one count line per reason (they all stay float, by design); every other
        skipped tensor as a row with its reason."""
        biases: dict[str, int] = {}
        rows = []
        for x in self.skipped:
            if x.reason.startswith("bias of "):
                biases[x.reason] = biases.get(x.reason, 0) + 1
            else:
                rows.append(f"| {x.name} | {list(x.shape)} | {x.reason} |")
        lines = ["", "## Skipped float tensors", ""]
        lines += [f"- {n} tensor{'s' * (n != 1)}: {reason}" for reason, n in biases.items()]
        if rows:
            lines += ["", "| name | shape | reason |", "|---|---|---|", *rows]
        return lines


def _cell(value) -> str:
    """A config value in a Markdown cell: JSON, with the pipe escaped."""
    return f"`{json.dumps(value)}`".replace("|", "\\|")


def number(x, digits: int) -> str:
    """A figure to fixed digits, or '-' for one that is missing (a null in the JSON)."""
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(part: int, total: int) -> str:
    return f"{100 * part / total:.1f}%" if total else "-"


def finite(obj):
    """JSON has no inf or nan: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite(v) for v in obj]
    return obj
