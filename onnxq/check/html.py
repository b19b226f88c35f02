"""The HTML report: one self-contained file with the report's tables and four plots, drawn by
matplotlib (the `report` extra) as inline SVG: per-layer SQNR and width, the worst layers' weights
against their levels, where the bytes go, and the output error. Nothing is fetched when it opens."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from html import escape

from onnxq import __version__
from onnxq.check.report import LevelPicture, Report, number
from onnxq.errors import OnnxqError

EXTRA_HINT = "the HTML report draws its plots with matplotlib: pip install 'onnxq[report]'"
WORST = 3  # layers whose weights the report draws against their levels
MB = 1e6


def require() -> None:
    """Raise OnnxqError unless the plotting library is installed (check before the work)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OnnxqError(f"{EXTRA_HINT}, or write the report as .json or .md") from None


def to_html(report: Report) -> str:
    require()
    d = report.to_dict()
    worst = sorted(report.weights, key=lambda w: _sortable(w.sqnr_db))[:WORST]
    sections = [
        _summary(report, d),
        _figure("Per-layer SQNR and width", _per_layer(report)),
        _figure(
            "The worst layers' weights and their levels",
            _levels(report, [w.name for w in worst]),
            "Each plot is the tensor's worst group (output channel or block) by SQNR: a histogram of "
            "its float weights, and a line at each level its codes can take.",
        ),
        _figure("Where the bytes go", _bytes(report)),
        _figure("Output error", _output_error(report)) if report.validation else "",
        _validation_table(d),
        _weights_table(report, worst),
        _skipped_table(report),
        _settings_table(report),
    ]
    title = f"onnxq report: {escape(report.paths.get('input', 'model'))}"
    return PAGE.format(title=title, body="\n".join(s for s in sections if s))


def _sortable(x: float) -> float:
    return x if x is not None and not math.isnan(x) else math.inf


# ---------------------------------------------------------------------------
# Plots


@contextmanager
def figure(width: float, height: float) -> Iterator:
    """A matplotlib Figure (no pyplot state), text kept as text in the SVG; save it (svg_file)
    within the block, where those settings hold. The sweep's plot draws with it too."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "onnxq"}):
        yield Figure(figsize=(width, height), layout="constrained")


def svg_file(fig) -> str:
    """The figure as an SVG document, with no date in it (the same plot, the same bytes)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def _svg(fig) -> str:
    text = svg_file(fig)
    return text[text.index("<svg") :]  # inline: no XML declaration or DOCTYPE


def _per_layer(report: Report) -> str:
    if not report.weights:
        return ""
    with figure(9, 4.2) as fig:
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        widths = sorted({w.bits for w in report.weights})
        colors = _palette(len(widths))
        for bits, color in zip(widths, colors):
            idx = [i for i, w in enumerate(report.weights) if w.bits == bits]
            sqnr = [_finite(report.weights[i].sqnr_db) for i in idx]
            top.bar(idx, sqnr, color=color, width=1.0, label=f"{bits} bits")
            bottom.bar(idx, [bits] * len(idx), color=color, width=1.0)
        top.set_ylabel("SQNR dB")
        top.legend(loc="upper right", ncols=min(len(widths), 6), fontsize=8)
        bottom.set_ylabel("bits")
        bottom.set_xlabel("compressed tensor, in graph order (names in the table below)")
        bottom.set_xlim(-0.5, len(report.weights) - 0.5)
        return _svg(fig)


def _levels(report: Report, names: list[str]) -> str:
    kept = report.pictures or {}
    shown = [(n, kept[n]) for n in names if n in kept]
    if not shown:
        return ""
    bits = {w.name: w.bits for w in report.weights}
    with figure(9, 2.4 * len(shown)) as fig:
        axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
        for ax, (name, pic) in zip(axes, shown):
            _draw_levels(ax, pic)
            ax.set_title(
                f"{_short(name)}: group {pic.group}, {bits[name]} bits, SQNR {pic.sqnr_db:.1f} dB",
                loc="left",
                fontsize=9,
            )
        return _svg(fig)


def _draw_levels(ax, pic: LevelPicture) -> None:
    ax.stairs(pic.counts, pic.edges, fill=True, color="#8fa8c8", label="weights")
    top = max(pic.counts) if pic.counts else 1
    ax.vlines(pic.levels, 0, top, colors="#c0392b", linewidth=0.7, label="levels")
    ax.set_ylabel("weights")
    ax.legend(loc="upper right", fontsize=8)


def _bytes(report: Report) -> str:
    b = report.output
    parts = [
        ("indices", b.indices, "#2e86c1"),
        ("codebooks", b.codebooks, "#f39c12"),
        ("float tensors", b.float_tensors, "#7f8c8d"),
        ("graph", b.graph, "#27ae60"),
    ]
    with figure(9, 1.9) as fig:
        ax = fig.subplots()
        ax.barh(["input"], [report.input_bytes / MB], color="#bdc3c7")
        left = 0.0
        for label, value, color in parts:
            share = 100 * value / b.total if b.total else 0
            ax.barh(["output"], [value / MB], left=left, color=color, label=f"{label} ({share:.1f}%)")
            left += value / MB
        ax.set_xlabel("MB")
        ax.legend(loc="lower right", ncols=2, fontsize=8)
        ax.invert_yaxis()
        return _svg(fig)


def _output_error(report: Report) -> str:
    v = report.validation
    assert v is not None
    names = [_short(o.name, 24) for o in v.outputs]
    with figure(9, 0.6 + 0.35 * len(names) + 1.2) as fig:
        sqnr_ax, cos_ax = fig.subplots(1, 2, sharey=True)
        sqnr_ax.barh(names, [_finite(o.sqnr_db) for o in v.outputs], color="#2e86c1", height=0.5)
        sqnr_ax.set_xlabel("SQNR dB (higher is closer)")
        cos_ax.barh(names, [1 - o.cosine for o in v.outputs], color="#c0392b", height=0.5)
        cos_ax.set_xlabel("1 - cosine (lower is closer)")
        sqnr_ax.invert_yaxis()
        return _svg(fig)


def _palette(n: int) -> list[str]:
    base = ["#2e86c1", "#27ae60", "#f39c12", "#8e44ad", "#c0392b", "#16a085", "#d35400", "#7f8c8d"]
    return [base[i % len(base)] for i in range(n)]


def _finite(x: float | None) -> float:
    return x if x is not None and math.isfinite(x) else 0.0


def _short(name: str, keep: int = 48) -> str:
    """The name's middle abbreviated, for a plot title; the tables give it whole."""
    return name if len(name) <= keep else f"{name[: keep // 2 - 1]}…{name[-(keep // 2 - 1) :]}"


# ---------------------------------------------------------------------------
# Tables


def _summary(report: Report, d: dict) -> str:
    s = d["summary"]
    v = report.validation
    verdict = "not run" if v is None else v.verdict
    items = [
        f"onnxq {__version__}",
        *[f"{role}: <code>{escape(path)}</code>" for role, path in report.paths.items()],
        (
            f"size: {s['input_bytes']:,} → {s['output_bytes']:,} bytes, <b>{number(s['ratio'], 2)}x</b> smaller; "
            f"{number(s['bits_per_weight'], 3)} bits per compressed weight"
        ),
        (
            f"compressed {s['compressed_tensors']} tensors ({s['compressed_weights']:,} weights); "
            f"{s['skipped_tensors']} left in float"
        ),
        "widths: " + escape(", ".join(f"{k}: {n}" for k, n in report.widths().items()) or "none"),
        f"data: {escape(report.calibration or 'none (no step needed calibration data)')}",
        f"validation: <b class='{_verdict_class(report)}'>{escape(verdict)}</b>"
        + (f"; gates: {escape('; '.join(v.gates) or 'none')}" if v else ""),
    ]
    notes = [f"<li>{escape(n)}</li>" for n in report.notes]
    body = "".join(f"<li>{i}</li>" for i in items)
    notes_html = f"<h3>Notes</h3><ul>{''.join(notes)}</ul>" if notes else ""
    return f"<section><h1>onnxq compression report</h1><ul>{body}</ul>{notes_html}</section>"


def _verdict_class(report: Report) -> str:
    """Green when real inputs passed, red when a gate failed, amber when nothing real was checked."""
    v = report.validation
    if v is not None and not v:
        return "bad"
    return "ok" if v is not None and v.real else "warn"


def _figure(title: str, svg: str, caption: str = "") -> str:
    if not svg:
        return ""
    note = f"<p class='caption'>{escape(caption)}</p>" if caption else ""
    return f"<section><h2>{escape(title)}</h2>{note}<div class='plot'>{svg}</div></section>"


def _validation_table(d: dict) -> str:
    v = d["validation"]
    if not v:
        return ""
    head = ["output", "max abs", "rel L2", "cosine", "SQNR dB", "top-1 agreement"]
    rows = [
        [o["name"], number(o["max_abs_error"], 4), number(o["relative_l2_error"], 4), number(o["cosine"], 5)]
        + [number(o["sqnr_db"], 1), number(o["top1_agreement"], 3)]
        for o in v["outputs"]
    ]
    fails = "".join(f"<p class='bad'>FAILED: {escape(f)}</p>" for f in v["failures"])
    intro = f"<p>inputs: {escape(v['inputs'])} ({v['samples']} samples)</p>"
    return f"<section><h2>Validation: {escape(v['verdict'])}</h2>{intro}{_table(head, rows)}{fails}</section>"


def _weights_table(report: Report, worst: list) -> str:
    head = ["#", "tensor", "shape", "groups", "bits", "codebook", "rounding", "corr", "SQNR dB", "bytes"]

    def row(i: int, w) -> list[str]:
        return [
            str(i),
            w.name,
            "x".join(map(str, w.shape)),
            str(w.groups),
            str(w.bits),
            w.codebook,
            w.rounding,
            f"{w.correlation:.5f}",
            number(w.sqnr_db, 1),
            f"{w.index_bytes + w.codebook_bytes:,}",
        ]

    index = {w.name: i for i, w in enumerate(report.weights)}
    worst_rows = _table(head, [row(index[w.name], w) for w in worst])
    all_rows = _table(head, [row(i, w) for i, w in enumerate(report.weights)])
    return (
        f"<section><h2>Worst tensors by SQNR</h2>{worst_rows}"
        f"<details><summary>All {len(report.weights)} compressed tensors</summary>{all_rows}</details></section>"
    )


def _skipped_table(report: Report) -> str:
    if not report.skipped:
        return ""
    by_reason: dict[str, list[str]] = {}
    for x in report.skipped:
        by_reason.setdefault(x.reason, []).append(x.name)
    rows = [[reason, str(len(names)), ", ".join(names)] for reason, names in by_reason.items()]
    table = _table(["reason", "tensors", "names"], rows)
    return f"<section><h2>Left in float: {len(report.skipped)} tensors</h2>{table}</section>"


def _settings_table(report: Report) -> str:
    settings = _table(["setting", "value"], [[k, _value(v)] for k, v in report.config.items()])
    times = _table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in report.seconds.items()])
    return f"<section><h2>Settings</h2>{settings}<h2>Time</h2>{times}</section>"


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Every cell escaped: names are the model's, never markup."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _value(v) -> str:
    return "-" if v is None else re.sub(r"\s+", " ", str(v))


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 62em; padding: 0 1em;
  color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ font-size: 1.2em; margin-top: 1.6em; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top;
  overflow-wrap: anywhere; }}
th {{ background: #f4f6f8; }}
code {{ overflow-wrap: anywhere; }}
.plot svg {{ max-width: 100%; height: auto; }}
.ok {{ color: #1e8449; }} .warn {{ color: #b9770e; }} .bad {{ color: #c0392b; }} .caption {{ color: #555; }}
</style></head>
<body>
{body}
</body></html>
"""
