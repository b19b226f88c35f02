"""Reproduce the paper's experiments and write them into docs/RESULTS.md.

    python tools/paper_tables.py tables [--n 10000] [--seed 0] [--points 20001]
    python tools/paper_tables.py sweep [--models ...] [--bits 4 5] [--codebooks exponential]
                                       [--granularities channel] [--methods plain mixed]
    python tools/paper_tables.py report [--results /tmp/onnxq_sweep.jsonl] [--section final] [--note TEXT]

Malsagov et al., "Exponential discretization of weights of neural network
connections in pre-trained neural networks", arXiv 2002.00623.

tables: the paper's Tables 1-2. The maximal correlation between n seeded Gaussian
and Laplace numbers and their nearest-level discretization, over x0 in (0, 1],
for bits 2..6 and the linear and exponential codebooks; found both by onnxq's
search (onnxq.search.maximize_correlation) and by a dense brute-force sweep of
ln(x0) over [-16, 0].

sweep: every shared model x bits x codebook x granularity x method, compressed
with onnxq.compress and scored on the evaluation split of the ImageNet sample
(the 900 images whose class index is not a multiple of 10; the other 100 are the
calibration data). One JSON line per config is appended to --results; configs
already there are skipped, so an interrupted sweep resumes.

report: render --results into Markdown tables. When the results hold the methods
mixed and mixed-datafree at 4 and 5 bits (exponential, per channel), the section starts
with the accuracy issue's "done means" table: each model against its targets. --section
names the marked section to write, so the renderings of several results files can
stand side by side.

tables and report replace their own marked section of --markdown
(<!-- paper_tables:NAME:begin --> ... <!-- paper_tables:NAME:end -->), or append
it, and leave the rest of the file alone.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imagenet
import imagenet_eval
import make_calibration
from imagenet_eval import DEFAULT_IMAGES

import onnxq
from onnxq.api import GRANULARITIES
from onnxq.quant.codebooks import CODEBOOKS, Codebook
from onnxq.quant.quantize import SEARCHES
from onnxq.quant.search import LOG_X0_MIN, SortedGroups, level_magnitudes, maximize_correlation

ROOT = Path(__file__).resolve().parent.parent
SHARED_MODELS = ROOT.parent / "shared" / "models"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"
DEFAULT_RESULTS = Path("/tmp/onnxq_sweep.jsonl")
CALIBRATION_DIR = Path(tempfile.gettempdir()) / "onnxq_paper_tables"
SPLIT = 10  # calibration: class index % 10 == 0; evaluation: the rest

# ---------------------------------------------------------------------------
# Provenance and the marked section of RESULTS.md


def onnxq_commit() -> str:
    """git rev-parse --short HEAD, plus "-dirty" when the work tree has changes."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return head + ("-dirty" if status else "")


def command_line(argv: list[str]) -> str:
    return shlex.join(["python", "tools/paper_tables.py", *argv])


def replace_section(text: str, name: str, body: str) -> str:
    """text with the section `name` replaced by body, or with it appended when absent."""
    begin, end = f"<!-- paper_tables:{name}:begin -->", f"<!-- paper_tables:{name}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip() + "\n\n" + block + "\n"


def write_section(path: Path, name: str, body: str) -> None:
    text = path.read_text() if path.is_file() else ""
    path.write_text(replace_section(text, name, body))


def markdown_table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


# ---------------------------------------------------------------------------
# tables: the paper's Tables 1-2

DISTRIBUTIONS = {
    "Gaussian": lambda rng, n: rng.standard_normal(n),
    "Laplace": lambda rng, n: rng.laplace(size=n),
}
# docs/../shared/ALGORITHM.md, "Our own reconstruction" (seed 0, nearest rounding)
REFERENCE = {
    ("Gaussian", "linear"): {2: 0.899, 3: 0.977, 4: 0.994, 5: 0.998, 6: 0.9995},
    ("Gaussian", "exponential"): {2: 0.899, 3: 0.962, 4: 0.992, 5: 0.998, 6: 0.9994},
    ("Laplace", "linear"): {2: 0.859, 3: 0.959, 4: 0.988, 5: 0.996, 6: 0.9989},
    ("Laplace", "exponential"): {2: 0.859, 3: 0.944, 4: 0.989, 5: 0.997, 6: 0.9992},
}


@dataclass(frozen=True)
class Maximum:
    x0: float  # in normalized units u = |w| / max|w|
    correlation: float


def draw_all(n: int, seed: int) -> dict[str, np.ndarray]:
    """n numbers per distribution, drawn in turn from one generator (as ALGORITHM.md's table was)."""
    rng = np.random.default_rng(seed)
    return {name: sample(rng, n) for name, sample in DISTRIBUTIONS.items()}


def draw(distribution: str, n: int, seed: int) -> np.ndarray:
    return draw_all(n, seed)[distribution]


def seed_spread(distribution: str, codebook: Codebook, bits: int, n: int, seeds: int) -> tuple[float, float]:
    """The least and greatest maximal correlation (onnxq's search) over seeds 0 .. seeds-1."""
    found = [search_maximum(draw(distribution, n, s), codebook, bits).correlation for s in range(seeds)]
    return min(found), max(found)


def search_maximum(w: np.ndarray, codebook: Codebook, bits: int) -> Maximum:
    """onnxq's own search on one group."""
    u = np.abs(w) / np.abs(w).max()
    log_x0, corr = maximize_correlation(SortedGroups(u[None, :]), codebook, bits)
    return Maximum(float(np.exp(log_x0[0])), float(corr[0]))


def brute_force_maximum(w: np.ndarray, codebook: Codebook, bits: int, points: int) -> Maximum:
    """The best of `points` evenly spaced ln(x0) in [LOG_X0_MIN, 0], each scored exactly.

    Sorted magnitudes and their prefix sums give, per candidate x0, how many
    magnitudes fall into each level's rounding interval and their sum.
    """
    s = np.sort(np.abs(w) / np.abs(w).max())
    prefix = np.concatenate([[0.0], np.cumsum(s)])
    log_x0 = np.linspace(LOG_X0_MIN, 0.0, points)
    levels = level_magnitudes(codebook, log_x0, bits)  # (points, L), ascending
    below = np.searchsorted(s, 0.5 * (levels[:, 1:] + levels[:, :-1]))
    edges = np.concatenate([np.zeros((points, 1), int), below, np.full((points, 1), s.size)], axis=1)
    sums = np.diff(prefix[edges], axis=1)
    counts = np.diff(edges, axis=1)
    corr = (levels * sums).sum(1) / np.sqrt((s * s).sum() * (levels**2 * counts).sum(1))
    best = int(np.argmax(corr))
    return Maximum(float(np.exp(log_x0[best])), float(corr[best]))


def direct_correlation(w: np.ndarray, codebook: Codebook, bits: int, x0: float) -> float:
    """C(x0) as the paper defines it, by rounding every signed value to its nearest level."""
    u = w / np.abs(w).max()
    levels = level_magnitudes(codebook, np.array([np.log(x0)]), bits)[0]
    y = np.sign(u) * levels[np.abs(np.abs(u)[:, None] - levels[None, :]).argmin(axis=1)]
    return float((u * y).sum() / np.sqrt((u * u).sum() * (y * y).sum()))


def table_rows(n: int, seed: int, points: int, bits: list[int], seeds: int) -> list[dict]:
    rows = []
    for dist, w in draw_all(n, seed).items():
        for b in bits:
            for name in ("linear", "exponential"):
                found = search_maximum(w, CODEBOOKS[name], b)
                brute = brute_force_maximum(w, CODEBOOKS[name], b, points)
                rows.append(
                    {
                        "distribution": dist,
                        "bits": b,
                        "codebook": name,
                        "search": found,
                        "brute": brute,
                        "direct": direct_correlation(w, CODEBOOKS[name], b, found.x0),
                        "reference": REFERENCE.get((dist, name), {}).get(b),
                        "spread": seed_spread(dist, CODEBOOKS[name], b, n, seeds) if seeds else None,
                    }
                )
    return rows


def render_tables(rows: list[dict], command: str, commit: str, seconds: float, seeds: int) -> str:
    n_direct = max(abs(r["direct"] - r["search"].correlation) for r in rows)
    worst = min(r["search"].correlation - r["brute"].correlation for r in rows)
    out = [
        f"## The paper's Tables 1-2 at onnxq {commit}: maximal correlation of discretized random numbers",
        "",
        f"onnxq at commit {commit}. Command, from the repository root ({seconds:.0f} s):",
        "",
        "```",
        command,
        "```",
        "",
        "C = sum(u*y) / sqrt(sum(u^2) sum(y^2)) between the normalized numbers u = w / max|w|",
        "and their nearest-level discretization y; x0 is the first nonzero level in the same",
        "normalized units. **search** is onnxq's own `maximize_correlation`; **brute** is the",
        "best of the evenly spaced ln(x0) grid over [-16, 0] in the command, each point scored",
        "exactly; **search - brute** > 0 means the search found a point between grid points.",
        "Recomputing C at the search's x0 by rounding every number explicitly differs from",
        f"the search's C by at most {n_direct:.1e}. The smallest search - brute is {worst:+.1e}.",
        "**ALGORITHM.md** is the reference reconstruction in ../shared/ALGORITHM.md. Drawing",
        "the Gaussian and then the Laplace numbers from one `numpy.random.default_rng(seed)`",
        "reproduces it within one unit of its last printed digit. The last column shows how much",
        "the maximum moves with the sample alone: the Laplace numbers' largest magnitude,",
        "which sets the normalized units, varies from sample to sample, so at 2-3 bits a",
        "different seed moves C by up to about 0.01.",
    ]
    for dist in DISTRIBUTIONS:
        body = [
            [
                str(r["bits"]),
                r["codebook"],
                f"{r['search'].correlation:.5f}",
                f"{r['search'].x0:.4g}",
                f"{r['brute'].correlation:.5f}",
                f"{r['brute'].x0:.4g}",
                f"{r['search'].correlation - r['brute'].correlation:+.1e}",
                "-" if r["reference"] is None else f"{r['reference']}",
                "-" if r["spread"] is None else f"{r['spread'][0]:.4f} - {r['spread'][1]:.4f}",
            ]
            for r in rows
            if r["distribution"] == dist
        ]
        header = ["bits", "codebook", "C search", "x0 search", "C brute", "x0 brute", "search - brute"]
        out += ["", f"{dist}:", ""]
        header += ["ALGORITHM.md", f"C search, seeds 0-{seeds - 1}" if seeds else "seeds"]
        out += markdown_table(header, ["---:", "---"] + ["---:"] * 7, body)
    return "\n".join(out)


def cmd_tables(args: argparse.Namespace, argv: list[str]) -> None:
    commit = onnxq_commit()
    start = time.perf_counter()
    rows = table_rows(args.n, args.seed, args.points, args.bits, args.seeds)
    text = render_tables(rows, command_line(argv), commit, time.perf_counter() - start, args.seeds)
    print(text)
    if args.markdown:
        write_section(args.markdown, "tables", text)
        print(f"wrote the tables section of {args.markdown}", file=sys.stderr)


# ---------------------------------------------------------------------------
# sweep: the shared models


@dataclass(frozen=True)
class Method:
    """Which of onnxq's levers one sweep column pulls. None: the pipeline's default."""

    summary: str
    calibration: bool
    rounding: str | None
    bias_correction: bool | None
    mixed: bool = False
    sensitivity: str = "auto"  # --sensitivity: how --target-bits measures each tensor's noise


METHODS = {
    "plain": Method("nearest rounding, no data", False, "nearest", False),
    "bias": Method("bias correction only, calibration data", True, "nearest", True),
    "gptq": Method("GPTQ rounding only, calibration data", True, "gptq", False),
    "gptq+bias": Method("GPTQ rounding and bias correction, calibration data", True, "gptq", True),
    "mixed": Method(
        "--target-bits = bits, GPTQ and bias correction, calibration data", True, "gptq", True, True
    ),
    "mixed-datafree": Method(
        "--target-bits = bits, no calibration: the pipeline's defaults", False, None, None, True
    ),
    "mixed-blocks": Method(
        "mixed, its sensitivity measured block by block (--sensitivity blocks)",
        True,
        "gptq",
        True,
        True,
        "blocks",
    ),
    "mixed-datafree-blocks": Method(
        "mixed-datafree, its sensitivity measured block by block", False, None, None, True, "blocks"
    ),
}


def method_config(
    method: Method, bits: int, codebook: str, granularity: str, calibration: Path, search: str | None = None
) -> onnxq.Config:
    return onnxq.Config(
        search=search or onnxq.Config().search,
        bits=bits,
        codebook=codebook,
        granularity=granularity,
        validate=False,
        target_bits=float(bits) if method.mixed else None,
        calibration=str(calibration) if method.calibration else None,
        rounding=method.rounding,
        bias_correction=method.bias_correction,
        sensitivity=method.sensitivity,
    )


def calibration_npz(model: Path) -> Path:
    """The 100 calibration images (class index % 10 == 0) of a model, built once, under /tmp."""
    path = CALIBRATION_DIR / f"{model.stem}_every{SPLIT}.npz"
    if path.is_file():
        return path
    CALIBRATION_DIR.mkdir(parents=True, exist_ok=True)
    items = imagenet.select_images(imagenet.list_images(DEFAULT_IMAGES), every=SPLIT)
    x = imagenet.load_batch([p for p, _ in items], imagenet.preset_for(model.name))
    make_calibration.save_atomically(path, {make_calibration.model_input_name(model): x})
    return path


@dataclass
class Baseline:
    """A model's evaluation split, preprocessed, and the float model's predictions on it."""

    prep: imagenet.Preprocess
    images: np.ndarray
    labels: np.ndarray
    top5: np.ndarray
    score: dict


def baseline(model: Path) -> Baseline:
    prep = imagenet.preset_for(model.name)
    # load_images keeps its result in memory (lru_cache): preprocessing runs once per model
    images, labels = imagenet_eval.load_images(DEFAULT_IMAGES, prep, None, SPLIT)
    top5 = imagenet_eval.predict_top5(model, images)
    return Baseline(prep, images, labels, top5, imagenet_eval.score(top5, labels, prep))


def sweep_key(row: dict) -> tuple:
    return (row["model"], row["bits"], row["codebook"], row["granularity"], row["method"])


def read_rows(path: Path) -> dict[tuple, dict]:
    """The results file's rows by config; a later line for the same config wins."""
    rows: dict[tuple, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[sweep_key(row)] = row
    return rows


def append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def measure(model: Path, base: Baseline, config: onnxq.Config, tmp: Path) -> dict:
    """Compress once, then score the result on the evaluation split."""
    dst = tmp / model.name
    start = time.perf_counter()
    report = onnxq.compress(model, dst, config)
    seconds = time.perf_counter() - start
    top5 = imagenet_eval.predict_top5(dst, base.images)
    s = imagenet_eval.score(top5, base.labels, base.prep, base.top5)
    dst.unlink()
    return {
        "top1": s["top1"],
        "float_top1": base.score["top1"],
        "drop_points": 100.0 * (base.score["top1"] - s["top1"]),
        "agreement": s["agreement"],
        "ratio": report.ratio,
        "bits_per_weight": report.bits_per_weight,
        "seconds": seconds,
        "images": s["images"],
        **paired_counts(top5, base),
        "rounding": config.resolved_rounding(),
        "bias_correction": config.resolved_bias_correction(),
        "data": report.calibration,
        "width_counts": _width_counts(report),
    }


def paired_counts(top5: np.ndarray, base: Baseline) -> dict[str, int]:
    """The images only the float model gets right (top-1), and those only the compressed one does."""
    target = base.labels + base.prep.label_offset
    right, float_right = top5[:, 0] == target, base.top5[:, 0] == target
    return {
        "float_only": int(np.sum(float_right & ~right)),
        "compressed_only": int(np.sum(right & ~float_right)),
    }


def _width_counts(report: onnxq.Report) -> dict[str, int]:
    counts: dict[str, int] = {}
    for w in report.weights:
        counts[str(w.bits)] = counts.get(str(w.bits), 0) + w.elements
    return dict(sorted(counts.items()))


def sweep_configs(args: argparse.Namespace) -> list[tuple[int, str, str, str]]:
    return [
        (b, c, g, m)
        for b in args.bits
        for c in args.codebooks
        for g in args.granularities
        for m in args.methods
    ]


def sweep_model(model: Path, args: argparse.Namespace, command: str, commit: str, tmp: Path) -> None:
    done = {k for k, r in read_rows(args.results).items() if "error" not in r}
    todo = [c for c in sweep_configs(args) if (model.stem, *c) not in done]
    if not todo:
        print(f"{model.stem}: every config already in {args.results}", file=sys.stderr)
        return
    base = baseline(model)
    calibration = calibration_npz(model)
    print(f"{model.stem}: float top-1 {base.score['top1']:.4f} on {len(base.labels)} images", file=sys.stderr)
    for bits, codebook, granularity, method in todo:
        row = {"model": model.stem, "bits": bits, "codebook": codebook, "granularity": granularity}
        row |= {"method": method, "commit": commit, "command": command}
        if args.search:
            row["search"] = args.search
        config = method_config(METHODS[method], bits, codebook, granularity, calibration, args.search)
        try:
            row |= measure(model, base, config, tmp)
        except Exception as exc:  # noqa: BLE001 - a failed config is a result, not the end of the sweep
            row["error"] = f"{type(exc).__name__}: {exc}"
        append_row(args.results, row)
        shown = row.get("error") or (
            f"top-1 {row['top1']:.4f} drop {row['drop_points']:.1f} pts agree {row['agreement']:.3f} "
            f"ratio {row['ratio']:.2f} {row['seconds']:.0f} s"
        )
        print(f"{model.stem} {bits} {codebook} {granularity} {method}: {shown}", file=sys.stderr, flush=True)


def cmd_sweep(args: argparse.Namespace, argv: list[str]) -> None:
    models = [SHARED_MODELS / f"{m}.onnx" for m in args.models] if args.models else None
    models = models or sorted(SHARED_MODELS.glob("*.onnx"))
    missing = [str(m) for m in models if not m.is_file()]
    if missing or not models:
        raise SystemExit(f"error: no such model(s) {missing or SHARED_MODELS}; see {SHARED_MODELS}/MODELS.md")
    commit, command = onnxq_commit(), command_line(argv)
    print(f"onnxq {commit}; results in {args.results}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="onnxq-paper-") as tmp:
        for model in models:
            sweep_model(model, args, command, commit, Path(tmp))
            imagenet_eval.load_images.cache_clear()  # about 540 MB per model at 224x224


# ---------------------------------------------------------------------------
# report: the results file as Markdown

LEVER_BITS = (4, 5)


def drop_interval(row: dict, z: float = 1.96) -> tuple[float, float] | None:
    """The paired 95% interval of the top-1 drop, in points, or None for a row without the counts.

    Per image the drop is d = 1 (only the float model is right), -1 (only the compressed
    one) or 0, so its mean is (a - b) / n and its variance (a + b) / n - mean^2; the
    normal approximation then gives mean +- z * sqrt(variance / n).
    """
    if "float_only" not in row or "error" in row:
        return None
    a, b, n = row["float_only"], row["compressed_only"], row["images"]
    mean = (a - b) / n
    half = z * np.sqrt(max((a + b) / n - mean**2, 0.0) / n)
    return 100.0 * (mean - half), 100.0 * (mean + half)


def _interval_cell(row: dict | None) -> str:
    interval = None if row is None else drop_interval(row)
    return "-" if interval is None else f"{interval[0]:.1f} .. {interval[1]:.1f}"


def _cell(row: dict | None, field: str, fmt: str) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "failed"
    return format(row[field], fmt)


def model_table(model: str, rows: dict[tuple, dict], methods: list[str]) -> list[str]:
    """rows = bits x codebook x granularity; columns = each method's top-1 drop, then ratios."""
    configs = sorted({k[1:4] for k in rows if k[0] == model}, key=lambda k: (k[0], k[1], k[2]))
    ratio_methods = [m for m in methods if METHODS[m].mixed]
    header = ["bits", "codebook", "granularity", *methods, "ratio", *(f"ratio {m}" for m in ratio_methods)]
    body = []
    for config in configs:
        cells = {m: rows.get((model, *config, m)) for m in methods}
        fixed = next((r for m, r in cells.items() if r and not METHODS[m].mixed and "error" not in r), None)
        body.append(
            [str(config[0]), config[1], config[2]]
            + [_cell(cells[m], "drop_points", ".1f") for m in methods]
            + [_cell(fixed, "ratio", ".2f")]
            + [_cell(cells[m], "ratio", ".2f") for m in ratio_methods]
        )
    return markdown_table(header, ["---:", "---", "---"] + ["---:"] * (len(header) - 3), body)


def _levers_used(row: dict) -> str:
    """What actually ran: rounding, bias correction, and which data (if any)."""
    if "error" in row:
        return "-"
    data = row.get("data")
    bias = " + bias" if row.get("bias_correction") else ""
    return f"{row.get('rounding', '?')}{bias}, {data.split(' ')[0] if data else 'no data'}"


def _config_order(item: tuple[tuple, dict]) -> tuple:
    """Rows by bits, codebook and granularity, then in METHODS' order."""
    key = item[0]
    return key[1:4], list(METHODS).index(key[4])


def detail_table(model: str, rows: dict[tuple, dict]) -> list[str]:
    """Every measured field of every row of one model."""
    header = ["bits", "codebook", "granularity", "method", "ran", "top-1", "float", "drop", "agree"]
    header += ["ratio", "bits/weight", "s", "commit"]
    body = []
    for key, r in sorted(rows.items(), key=_config_order):
        if key[0] != model:
            continue
        fields = [("top1", ".4f"), ("float_top1", ".4f"), ("drop_points", ".1f"), ("agreement", ".3f")]
        fields += [("ratio", ".2f"), ("bits_per_weight", ".2f"), ("seconds", ".0f")]
        cells = [str(key[1]), key[2], key[3], key[4], _levers_used(r)]
        body.append([*cells, *(_cell(r, f, s) for f, s in fields), r["commit"]])
    return markdown_table(header, ["---:", "---", "---", "---", "---"] + ["---:"] * 7 + ["---"], body)


def levers_table(rows: dict[tuple, dict], models: list[str]) -> list[str]:
    """Each lever alone and combined: top-1 drop at 4 and 5 bits, exponential, channel."""
    header = ["method", "what it does"] + [f"{m} {b} bits" for m in models for b in LEVER_BITS]
    body = [
        [name, method.summary]
        + [
            _cell(rows.get((m, b, "exponential", "channel", name)), "drop_points", ".1f")
            for m in models
            for b in LEVER_BITS
        ]
        for name, method in METHODS.items()
    ]
    return markdown_table(header, ["---", "---"] + ["---:"] * (len(header) - 2), body)


# The accuracy issue's "done means": (setting, method, bits, max top-1 drop in points, min ratio)
DONE_MEANS = [
    ("--target-bits 5 --calibration", "mixed", 5, 1.0, 6.0),
    ("--target-bits 4 --calibration", "mixed", 4, 2.0, 7.5),
    ("--target-bits 5, no calibration", "mixed-datafree", 5, 3.0, 6.0),
]


def done_verdict(row: dict | None, max_drop: float, min_ratio: float) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "failed"
    missed = [
        what
        for what, ok in (
            ("drop", row["drop_points"] <= max_drop + 1e-9),  # 9 of 900 images is 1.0 points, not 1.0000001
            ("ratio", row["ratio"] >= min_ratio),
        )
        if not ok
    ]
    return "met" if not missed else "**missed** (" + ", ".join(missed) + ")"


def done_table(rows: dict[tuple, dict], models: list[str]) -> list[str]:
    """Per model and setting: drop, ratio, bits per weight and seconds against the targets."""
    header = [
        "model",
        "setting",
        "top-1 drop, pts",
        "95% interval",
        "max drop",
        "ratio",
        "min ratio",
        "bits/weight",
        "compress s",
        "targets",
    ]
    body = []
    for model in models:
        for setting, method, bits, max_drop, min_ratio in DONE_MEANS:
            r = rows.get((model, bits, "exponential", "channel", method))
            body.append(
                [
                    model,
                    f"`{setting}`",
                    _cell(r, "drop_points", ".1f"),
                    _interval_cell(r),
                    f"<= {max_drop:.1f}",
                ]
                + [_cell(r, "ratio", ".2f") + ("x" if r and "error" not in r else ""), f">= {min_ratio:.1f}x"]
                + [_cell(r, "bits_per_weight", ".2f"), _cell(r, "seconds", ".0f")]
                + [done_verdict(r, max_drop, min_ratio)]
            )
    return markdown_table(header, ["---", "---"] + ["---:"] * 7 + ["---"], body)


def has_done_rows(rows: dict[tuple, dict]) -> bool:
    return any(
        (k[1], k[2], k[3], k[4]) == (b, "exponential", "channel", m)
        for k in rows
        for _, m, b, *_ in DONE_MEANS
    )


def library_note(commits: list[str]) -> str:
    """Whether onnxq/ itself differs between the commits the rows were measured at."""
    if len(commits) < 2 or any(c.endswith("-dirty") for c in commits):
        return ""
    for other in commits[1:]:
        diff = subprocess.run(
            ["git", "-C", str(ROOT), "diff", "--quiet", commits[0], other, "--", "onnxq"], check=False
        )
        if diff.returncode == 1:
            return f"onnxq/ differs between {commits[0]} and {other}: compare their rows with care."
        if diff.returncode:
            return ""
    return f"onnxq/ is the same at {', '.join(commits)}."


def render_report(rows: dict[tuple, dict], command: str, note: str = "") -> str:
    models = sorted({k[0] for k in rows})
    methods = [m for m in METHODS if any(k[4] == m for k in rows)]
    commits = list(dict.fromkeys(r["commit"] for r in rows.values()))
    sweeps = list(dict.fromkeys(r["command"] for r in rows.values()))
    seconds = sum(r.get("seconds", 0.0) for r in rows.values())
    floats = {k[0]: r["float_top1"] for k, r in rows.items() if "float_top1" in r}
    out = [
        f"## Paper sweep at onnxq {', '.join(commits)}: the levers on the shared models",
        "",
        f"onnxq at commit(s) {', '.join(commits)}. The rows came from the sweep command(s) below,",
        "run from the repository root (a later run skips configs already in the results file),",
        "and the last command rendered this section." + (f" {note}" if note else ""),
        "",
        "```",
        *sweeps,
        command,
        "```",
        "",
        "Protocol: calibration = the 100 images of ../shared/data/imagenet-sample whose class",
        "index is a multiple of 10; evaluation = the other 900 (`tools/imagenet_eval.py",
        "--exclude-every 10`). **drop** = float top-1 minus compressed top-1, in points",
        "(one image is 0.11 points); **agree** = top-1 agreement with the float model;",
        "**ratio** = input file bytes / output file bytes; **s** = wall seconds of",
        f"`onnxq.compress` (validation off; {seconds / 60:.1f} minutes over all rows, scoring not",
        "included). The machine has 2 cores and other measurements ran beside this one, so the",
        "seconds are noisy: read them as magnitudes. **ran** = the rounding, bias correction and",
        "data the pipeline actually used (mixed-datafree resolves the pipeline's own defaults).",
        "Float top-1 on the 900: " + ", ".join(f"{m} {t:.4f}" for m, t in sorted(floats.items())) + ".",
        "",
        "Methods:",
        "",
        *(f"- **{m}**: {METHODS[m].summary}" for m in methods),
        "",
    ]
    if has_done_rows(rows):
        out += [
            "### Done means: the accuracy issue's targets",
            "",
            "Exponential codebook, per channel. **top-1 drop** on the 900 evaluation images, in points",
            "vs the float model; **ratio** = input file bytes / output file bytes; **compress s** as",
            "**s** above (validation off). A setting meets its targets when its drop is at most",
            "**max drop** and its ratio at least **min ratio**. **95% interval** is the paired interval",
            "of the drop (normal approximation over the images on which exactly one of the two models",
            "is right): how far another 900 images like these could move it. The verdict reads the",
            "drop itself, as the issue states its targets. The same settings from the command line:",
            "",
            "```",
            "onnxq compress MODEL.onnx OUT.onnx --target-bits 5 --calibration CALIB.npz",
            "onnxq compress MODEL.onnx OUT.onnx --target-bits 4 --calibration CALIB.npz",
            "onnxq compress MODEL.onnx OUT.onnx --target-bits 5",
            "```",
            "",
            "where CALIB.npz holds the 100 calibration images (`python tools/make_calibration.py",
            "CALIB.npz --model MODEL.onnx --every 10`; the sweep builds the same file under",
            f"{CALIBRATION_DIR}). With calibration data the pipeline uses GPTQ rounding and bias",
            "correction; without it, nearest rounding, no bias correction, and synthetic inputs",
            "for the width allocation.",
            "",
            *done_table(rows, models),
            "",
        ]
    out += [
        "### Each lever alone and combined (top-1 drop in points, exponential, per channel)",
        "",
        *levers_table(rows, models),
    ]
    for model in models:
        out += ["", f"### {model}: top-1 drop in points", "", *model_table(model, rows, methods)]
        out += ["", f"{model}, every measured field:", "", *detail_table(model, rows)]
        failed = failure_lines(model, rows)
        if failed:
            out += ["", f"{model}, the configs that failed and why:", "", *failed]
    return "\n".join(out)


def failure_lines(model: str, rows: dict[tuple, dict]) -> list[str]:
    """One line per distinct error of a model's failed configs, naming the configs."""
    by_error: dict[str, list[str]] = {}
    for key, r in sorted(rows.items(), key=_config_order):
        if key[0] == model and "error" in r:
            by_error.setdefault(r["error"], []).append(f"{key[1]} bits {key[2]} {key[3]} {key[4]}")
    return [f"- {', '.join(configs)}: `{error}`" for error, configs in by_error.items()]


def cmd_report(args: argparse.Namespace, argv: list[str]) -> None:
    rows = read_rows(args.results)
    if not rows:
        raise SystemExit(f"error: no results in {args.results}; run the sweep subcommand first")
    commits = list(dict.fromkeys(r["commit"] for r in rows.values()))
    note = " ".join(n for n in (library_note(commits), args.note) if n)
    text = render_report(rows, command_line(argv), note)
    print(text)
    if args.markdown:
        write_section(args.markdown, args.section, text)
        print(f"wrote the {args.section} section of {args.markdown}", file=sys.stderr)


# ---------------------------------------------------------------------------
# The command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    tables = sub.add_parser("tables", help="the paper's Tables 1-2 on seeded random numbers")
    tables.add_argument("--n", type=int, default=10_000, help="numbers per distribution")
    tables.add_argument("--seed", type=int, default=0)
    tables.add_argument("--points", type=int, default=20_001, help="brute-force ln(x0) grid points")
    tables.add_argument("--bits", type=int, nargs="+", default=list(range(2, 7)))
    tables.add_argument(
        "--seeds", type=int, default=10, help="also show the search's range over seeds 0..K-1 (0: skip)"
    )
    tables.set_defaults(run=cmd_tables)

    sweep = sub.add_parser("sweep", help="compress and score the shared models")
    sweep.add_argument("--models", nargs="+", help=f"model names in {SHARED_MODELS} (default: all)")
    sweep.add_argument("--bits", type=int, nargs="+", default=list(range(2, 9)))
    sweep.add_argument("--codebooks", nargs="+", choices=list(CODEBOOKS), default=list(CODEBOOKS))
    sweep.add_argument("--granularities", nargs="+", choices=GRANULARITIES, default=list(GRANULARITIES))
    sweep.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    sweep.add_argument(
        "--search",
        choices=SEARCHES,
        help="how x0 is found (default: onnxq's); use one results file per search",
    )
    sweep.set_defaults(run=cmd_sweep)

    report = sub.add_parser("report", help="render the sweep's results file as Markdown")
    report.add_argument(
        "--section", default="final", help="the marked section of --markdown to write (default: %(default)s)"
    )
    report.add_argument("--note", default="", help="a sentence to add to the section's provenance")
    report.set_defaults(run=cmd_report)

    for p in (sweep, report):
        p.add_argument(
            "--results", type=Path, default=DEFAULT_RESULTS, help="JSON lines (default: %(default)s)"
        )
    for p in (tables, report):
        p.add_argument(
            "--markdown", type=Path, default=RESULTS_MD, help="the file to update (default: %(default)s)"
        )
        p.add_argument("--no-markdown", dest="markdown", action="store_const", const=None, help="only print")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.run(args, argv)


if __name__ == "__main__":
    main()
