"""The sweep's table (sweep.json, sweep.md) and plot (sweep.svg, with the report extra), written
atomically into its folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from onnxq import __version__
from onnxq.check import html
from onnxq.errors import OnnxqError
from onnxq.graph import io

if TYPE_CHECKING:
    from onnxq.sweep import Sweep

COLUMNS = ("output_bytes", "ratio", "bits_per_weight", "cosine", "sqnr", "agreement", "metric", "seconds")


def write(s: Sweep) -> list[Path]:
    written = [s.folder / "sweep.json", s.folder / "sweep.md"]
    io.write_text(written[0], json.dumps(to_dict(s), indent=1))
    io.write_text(written[1], to_markdown(s))
    svg = plot(s)
    if svg:
        written.append(s.folder / "sweep.svg")
        io.write_text(written[-1], svg)
    return written


def to_dict(s: Sweep) -> dict:
    on_front = {r["key"] for r in s.front}
    chosen = s.chosen
    return {
        "onnxq_version": __version__,
        "metric": s.metric,
        "gate": str(s.gate) if s.gate else None,
        "chosen": chosen["key"] if chosen else None,
        "rows": [{**r, "on_front": r["key"] in on_front} for r in s.rows],
        "refused": [{"options": o, "reason": why} for o, why in s.refused],
    }


def shown_columns(s: Sweep) -> list[str]:
    """The columns some row has a value in."""
    return [c for c in COLUMNS if any(r.get(c) is not None for r in s.rows)]


def cell(row: dict, column: str) -> str:
    x = row.get(column)
    if x is None:
        return "-"
    if column == "output_bytes":
        return f"{x / 1e6:.3f} MB"
    digits = {"cosine": 5, "sqnr": 1, "agreement": 3, "ratio": 2, "bits_per_weight": 3, "seconds": 1}
    return f"{x:.{digits.get(column, 4)}f}" if isinstance(x, float) else str(x)


def to_markdown(s: Sweep) -> str:
    cols = shown_columns(s)
    on_front = {r["key"] for r in s.front}
    chosen = s.chosen
    lines = [
        "# onnxq sweep",
        "",
        f"- onnxq {__version__}; accuracy axis: {s.metric}; gate: {s.gate or 'none'}",
        f"- chosen: `{chosen['options']}`"
        if chosen
        else f"- chosen: {'none meets the gate' if s.gate else '-'}",
        "",
        "| setting | " + " | ".join(cols) + " | front | gate |",
        "|---|" + "---:|" * len(cols) + "---|---|",
    ]
    for r in sorted(s.rows, key=lambda r: r.get("output_bytes") or 0):
        if r.get("error"):
            lines.append(f"| `{r['options']}` | failed: {r['error']} |" + " |" * (len(cols) + 1))
            continue
        meets = "-" if not s.gate else "meets" if s.gate.holds(r) else "fails"
        values = " | ".join(cell(r, c) for c in cols)
        lines.append(f"| `{r['options']}` | {values} | {'yes' if r['key'] in on_front else ''} | {meets} |")
    lines += [f"- refused `{o}`: {why}" for o, why in s.refused]
    return "\n".join(lines) + "\n"


def plot(s: Sweep) -> str | None:
    """Size against the accuracy axis, the front as a line, the chosen point ringed; None without
    matplotlib."""
    try:
        html.require()
    except OnnxqError:
        return None
    rows = [r for r in s.rows if not r.get("error") and r.get(s.metric) is not None]
    if not rows:
        return None
    with html.figure(7, 4.2) as fig:
        ax = fig.subplots()
        ax.scatter(
            [r["output_bytes"] / 1e6 for r in rows], [r[s.metric] for r in rows], color="#7f8c8d", s=18
        )
        f = s.front
        ax.plot(
            [r["output_bytes"] / 1e6 for r in f],
            [r[s.metric] for r in f],
            "o-",
            color="#2e86c1",
            label="front",
        )
        if s.gate:
            ax.axhline(s.gate.value, color="#c0392b", linewidth=0.8, linestyle="--", label=f"gate {s.gate}")
        if s.chosen:
            c = s.chosen
            ax.scatter(
                [c["output_bytes"] / 1e6], [c[s.metric]], s=140, facecolors="none", edgecolors="#c0392b"
            )
            ax.annotate(
                c["options"],
                (c["output_bytes"] / 1e6, c[s.metric]),
                textcoords="offset points",
                xytext=(6, -12),
            )
        ax.set_xlabel("output size, MB")
        ax.set_ylabel(s.metric)
        ax.legend(loc="lower right", fontsize=8)
        return html.svg_file(fig)
