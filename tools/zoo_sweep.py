"""Every onnxq command on every zoo model, in every mode, and the table of what came out.

    python tools/zoo_sweep.py run [--models ...] [--modes ...] [--slow] [--results FILE]
    python tools/zoo_sweep.py report [--results FILE] [--markdown docs/RESULTS.md]

run: for each model and mode, `onnxq compress` as a user runs it (a subprocess: its exit code,
its last stderr line, its wall and CPU time), then the output's cosine against the float
model on the zoo's realistic evaluation inputs (the least over the model's outputs), and
`onnxq decompress` on the output (its exit code: it checks that the decoded float model
gives the same outputs). Rows append to a JSON-lines file; a re-run skips the rows there.
report: writes the section "zoo" of docs/RESULTS.md: ratio and cosine per model and mode, and
--target-bits against uniform --bits at the same width.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_tables
import zoo

DEFAULT_RESULTS = Path(tempfile.gettempdir()) / "onnxq_zoo_sweep.jsonl"
# mode -> the compress options; CAL stands for the model's calibration npz.
MODES = {
    "bits2": ["--bits", "2"],
    "bits4": ["--bits", "4"],
    "bits5": ["--bits", "5"],
    "bits8": ["--bits", "8"],
    "tb4": ["--target-bits", "4"],
    "tb4cal": ["--target-bits", "4", "--calibration", "CAL"],
    "tb5": ["--target-bits", "5"],
    "tb5cal": ["--target-bits", "5", "--calibration", "CAL"],
    # --target-bits at exactly the bits per weight that uniform --bits paid (its parameters too):
    # the comparison at the same budget (BPW:mode stands for that mode's measured bits per weight).
    "tb4@u": ["--target-bits", "BPW:bits4"],
    "tb5@u": ["--target-bits", "BPW:bits5"],
    "tb4cal@u": ["--target-bits", "BPW:bits4", "--calibration", "CAL"],
    "tb5cal@u": ["--target-bits", "BPW:bits5", "--calibration", "CAL"],
    "qdq4": ["--bits", "4", "--format", "qdq", "--codebook", "linear"],
    "qdq8": ["--bits", "8", "--format", "qdq", "--codebook", "linear"],
    "mnb4": ["--bits", "4", "--format", "matmulnbits", "--codebook", "linear"],
}
UNIFORM = {
    "tb4": "bits4", "tb4cal": "bits4", "tb5": "bits5", "tb5cal": "bits5",
    "tb4@u": "bits4", "tb4cal@u": "bits4", "tb5@u": "bits5", "tb5cal@u": "bits5",
}  # fmt: skip


def has_matmul_weights(model: Path) -> bool:
    """Whether matmulnbits applies: a MatMul whose second input is a 2-D initializer."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    shapes = {t.name: len(t.dims) for t in graph.initializer}
    return any(n.op_type == "MatMul" and shapes.get(n.input[1]) == 2 for n in graph.node)


def onnxq(*args: str) -> tuple[int, str, float, float]:
    """Run the onnxq CLI: (exit code, last stderr line, wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "onnxq", *args], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    last = (done.stderr.strip().splitlines() or [""])[-1][:300]
    return done.returncode, last, wall, cpu


def measure(name: str, mode: str, tmp: Path, budgets: dict[str, float]) -> dict:
    """One model in one mode: compress, the cosine on realistic inputs, and decompress.
    budgets: the bits per weight of this model's modes measured so far."""
    import onnxq as lib

    src = zoo.fetch(name)
    calib, evaluation = zoo.inputs(name)
    dst, report, plain = tmp / f"{name}.{mode}.onnx", tmp / f"{name}.{mode}.json", tmp / f"{name}.plain.onnx"
    args = [str(calib) if a == "CAL" else _budget(a, budgets) for a in MODES[mode]]
    code, last, wall, cpu = onnxq("compress", str(src), str(dst), *args, "--report", str(report))
    row = {"model": name, "mode": mode, "exit": code, "stderr": last, "seconds": wall, "cpu_seconds": cpu}
    row["command"] = shlex.join(["onnxq", "compress", f"{name}.onnx", "out.onnx", *MODES[mode]])
    row["command"] = row["command"].replace("BPW:", "BITS_PER_WEIGHT_OF_")
    if not dst.is_file():
        return row
    summary = json.loads(report.read_text()) if report.is_file() else {}
    row.update(
        ratio=summary.get("summary", {}).get("ratio"),
        bits_per_weight=summary.get("summary", {}).get("bits_per_weight"),
        widths=summary.get("summary", {}).get("widths"),
        verdict=(summary.get("validation") or {}).get("verdict"),
    )
    v = lib.compare_models(src, dst, inputs=evaluation, min_cosine=-1)
    row["cosines"] = {o.name: o.cosine for o in v.outputs}
    row["cosine"] = zoo.least_cosine(name, row["cosines"])
    row["decompress_exit"] = onnxq("decompress", str(dst), str(plain))[0]
    for path in (dst, plain, report):
        path.unlink(missing_ok=True)
    return row


def _budget(arg: str, budgets: dict[str, float]) -> str:
    """BPW:mode -> that mode's bits per weight, rounded up at the fourth decimal (so that the
    uniform widths fit; the budget exceeds theirs by less than 1e-4 bits per weight)."""
    if not arg.startswith("BPW:"):
        return arg
    return f"{math.ceil(budgets[arg[4:]] * 10000) / 10000:.4f}"


def run(args: argparse.Namespace) -> None:
    done = {(r["model"], r["mode"]) for r in _rows(args.results)}
    commit = paper_tables.onnxq_commit()
    with tempfile.TemporaryDirectory(prefix="onnxq_zoo_") as tmp:
        for name in args.models or zoo.names(slow=args.slow):
            modes = [m for m in args.modes if m != "mnb4" or has_matmul_weights(zoo.fetch(name))]
            for mode in modes:
                if (name, mode) in done:
                    continue
                needs = [a[4:] for a in MODES[mode] if a.startswith("BPW:")]
                budgets = {
                    r["mode"]: r["bits_per_weight"]
                    for r in _rows(args.results)
                    if r["model"] == name and r.get("bits_per_weight")
                }
                if any(n not in budgets for n in needs):
                    print(f"{name:20} {mode:7} skipped: run {needs} first")
                    continue
                row = {**measure(name, mode, Path(tmp), budgets), "commit": commit}
                with args.results.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                cosine = f"{row['cosine']:.4f}" if "cosine" in row else "-"
                print(
                    f"{name:20} {mode:7} exit {row['exit']} {row['seconds']:7.1f} s cosine {cosine} {row['stderr'][:80]}"
                )


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[(r["model"], r["mode"])] = r
    return list(rows.values())


def cell(row: dict | None) -> str:
    if row is None:
        return "-"
    if row["exit"] not in (0, 3) or "cosine" not in row:
        return f"exit {row['exit']}"
    mark = "" if row["exit"] == 0 else " (exit 3)"
    mark += "" if row.get("decompress_exit", 0) == 0 else " (decompress failed)"
    return f"{row['ratio']:.2f}x {row['cosine']:.4f}{mark}"


def report(args: argparse.Namespace) -> None:
    rows = {(r["model"], r["mode"]): r for r in _rows(args.results)}
    models = [m for m in zoo.names() if any(k[0] == m for k in rows)]
    modes = [m for m in MODES if any(k[1] == m for k in rows)]
    commits = sorted({r["commit"] for r in rows.values()})
    lines = [
        f"## The zoo at onnxq {', '.join(commits)}: every command on {len(models)} real models",
        "",
        "Each cell: the file's compression ratio, then the least cosine similarity between the float",
        "model's outputs and the compressed model's, over the model's outputs, on the zoo's realistic",
        "evaluation inputs (rendered text, documents and tables, ImageNet sample photos, synthesized",
        "speech and music, real files, English sentences; tools/zoo_inputs.py). tb = --target-bits,",
        "cal = with the zoo's calibration npz (a disjoint set of the same kind); qdq and mnb",
        "(matmulnbits, on the models with 2-D MatMul weights) use linear levels. Every command exited 0",
        "and every output went through `onnxq decompress` unless the cell says otherwise.",
        "",
        (
            f"Command: `python tools/zoo_sweep.py run --slow --results {args.results.name}` then "
            f"`python tools/zoo_sweep.py report --results {args.results.name}`."
        ),
        "",
        *([args.note, ""] if args.note else []),
    ]
    lines += paper_tables.markdown_table(
        ["model", *modes], ["---"] + ["---:"] * len(modes),
        [[m, *(cell(rows.get((m, mode))) for mode in modes)] for m in models],
    )  # fmt: skip
    lines += [
        "",
        (
            "--target-bits against uniform --bits (cosine; >= means as close or closer). tbB spends B bits"
            " per weight, parameters included, while --bits B pays B bits of indices plus its parameters;"
            " tbB@u spends what --bits B paid (rounded up at 1e-4), the comparison at the same budget:"
        ),
        "",
    ]
    pairs = [(tb, u) for tb, u in UNIFORM.items() if tb in modes and u in modes]
    table = []
    for m in models:
        cells = []
        for tb, u in pairs:
            a, b = rows.get((m, tb)), rows.get((m, u))
            if a and b and "cosine" in a and "cosine" in b:
                cells.append(
                    f"{a['cosine']:.4f} {'>=' if a['cosine'] >= b['cosine'] else '<'} {b['cosine']:.4f}"
                )
            else:
                cells.append("-")
        table.append([m, *cells])
    lines += paper_tables.markdown_table(
        ["model", *(f"{tb} vs {u}" for tb, u in pairs)], ["---"] + ["---:"] * len(pairs), table
    )
    seconds = sum(r["seconds"] for r in rows.values())
    lines += ["", f"Wall time of the compress commands: {seconds / 60:.1f} minutes in all, on 2 cores."]
    paper_tables.write_section(args.markdown, "zoo", "\n".join(lines))
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--models", nargs="*")
    r.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES))
    r.add_argument("--slow", action="store_true", help="include the models marked slow")
    r.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p = sub.add_parser("report")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--markdown", type=Path, default=paper_tables.RESULTS_MD)
    p.add_argument("--note", help="a paragraph on how the rows were made, written under the command")
    args = parser.parse_args(argv)
    (run if args.command == "run" else report)(args)


if __name__ == "__main__":
    main()
