"""onnxq against onnxruntime's MatMulNBitsQuantizer on Llama-shaped decoders, side by side.

    python tools/bench_scale.py [--presets 30m 125m 500m 1.5b] [--folder /tmp/onnxq-scale] [--write]

The decoders come from ../shared/scale/make_llama.py (random weights with outlier channels,
external data); they are generated once into --folder and reused. For each preset, one after
the other in fresh processes (never side by side: timings would lie on a small machine):

- onnxq's default, `--bits 5`, with validation and with --no-validate;
- onnxq `--bits 4 --codebook linear --format matmulnbits --no-validate`;
- both `--no-validate` runs again on numpy's loops (ONNXQ_KERNELS=numpy), when numba is installed;
- onnxruntime's MatMulNBitsQuantizer: RTN, 4 bits, block 128, asymmetric (its defaults);
- onnxruntime session creation for the float model and for each output;
- with --methods naming them, the data-driven modes on synthetic inputs (DATA_DRIVEN).

Each run reports CPU seconds (user + system of the whole process tree, from the reaped
children's rusage), weights per CPU-second, the peak RSS of the whole process tree (the sum of
every descendant's RSS, sampled every 20 ms), and the output's size. --write puts the table into
docs/RESULTS.md, section "scale". Needs onnx_ir for onnxruntime's quantizer (pip install onnx_ir).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(HERE))

ORT_RTN = """
import sys, onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
q = MatMulNBitsQuantizer(onnx.load(sys.argv[1]), bits=4, block_size=128)
q.process()
q.model.save_model_to_file(sys.argv[2], use_external_data_format=True)
"""

SESSION = """
import json, sys, time, onnxruntime as ort
t = time.process_time()
ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
print(json.dumps({"cpu": time.process_time() - t}))
"""


@dataclass
class Run:
    cpu_s: float
    wall_s: float
    peak_rss: int  # bytes, whole process tree
    stdout: str
    killed: bool = False  # its tree went over the memory cap, and was killed


def _tree_rss(root: int) -> int:
    """The summed RSS in bytes of root and all its descendants, read from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry.name), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


CAP = 16e9  # a run whose process tree goes over this many bytes of RSS is killed (--memory-cap)


def measured(cmd: list[str], env: dict[str, str] | None = None) -> Run:
    """Run cmd to its end (env: variables to set); its CPU time, wall time and the peak RSS of its
    process tree. A tree that goes over CAP is killed, and the run says so."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # Files, not pipes: a child that writes more than a pipe holds would wait for a reader.
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(
            cmd,
            stdout=out_file,
            stderr=err_file,
            text=True,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        peak, killed = 0, False
        while proc.poll() is None:
            peak = max(peak, _tree_rss(proc.pid))
            if peak > CAP and not killed:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.02)
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if killed:
        return Run(float("nan"), wall, peak, out, killed=True)
    if proc.returncode not in (0, 3):
        tail = (err.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(cpu, wall, peak, out)


def model(preset: str, folder: Path, shared: Path = SHARED) -> tuple[Path, int]:
    """The decoder of this preset (generated on first use) and its parameter count."""
    path = folder / f"llama_{preset}.onnx"
    info = folder / f"llama_{preset}.json"
    if not info.exists():
        done = subprocess.run(
            [sys.executable, str(shared / "scale" / "make_llama.py"), str(path), "--preset", preset],
            check=True,
            capture_output=True,
            text=True,
        )
        info.write_text(done.stdout.strip().splitlines()[-1])
    return path, int(json.loads(info.read_text())["params"])


def size(path: Path) -> int:
    data = [p for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path]
    return path.stat().st_size + sum(p.stat().st_size for p in data)


def onnxq_cmd(src: Path, dst: Path, options: list[str]) -> list[str]:
    return [sys.executable, "-m", "onnxq", "compress", str(src), str(dst), *options]


CONFIGS = {
    "onnxq --bits 5": ["--bits", "5"],
    "onnxq --bits 5 --no-validate": ["--bits", "5", "--no-validate"],
    "onnxq --bits 4 --codebook linear --format matmulnbits --no-validate": [
        "--bits",
        "4",
        "--codebook",
        "linear",
        "--format",
        "matmulnbits",
        "--no-validate",
    ],
}


# The data-driven modes, on synthetic inputs (no calibration file): measured when --methods names
# them, against the default's row (issue 16: at most 3x its time, within its memory bound).
DATA_DRIVEN = {
    "onnxq --target-bits 5": ["--target-bits", "5"],
    "onnxq --bits 5 --rounding gptq --bias-correction": [
        "--bits",
        "5",
        "--rounding",
        "gptq",
        "--bias-correction",
    ],
}


# The same runs on numpy's loops (onnxq/quant/kernels.py), to show what the compiled ones buy; their
# outputs are the same files, so their sessions are not measured again.
NUMPY_LOOPS = {"ONNXQ_KERNELS": "numpy"}
ON_NUMPY = {
    "onnxq --bits 5 --no-validate": "onnxq --bits 5 --no-validate, numpy loops",
    "onnxq --bits 4 --codebook linear --format matmulnbits --no-validate": "onnxq matmulnbits --no-validate, numpy loops",
}


def session(path: Path) -> Run:
    run = measured([sys.executable, "-c", SESSION, str(path)])
    if not run.killed:
        run.cpu_s = json.loads(run.stdout)["cpu"]  # the session's own CPU time, not the interpreter's start
    return run


ORT_LABEL = "ORT MatMulNBitsQuantizer RTN 4-bit block 128"
METHODS = [*CONFIGS, *ON_NUMPY.values(), ORT_LABEL]  # the default set
ALL_METHODS = [*METHODS, *DATA_DRIVEN]


def measure(
    preset: str, folder: Path, work: Path, log, shared: Path = SHARED, methods: list[str] = METHODS
) -> list[dict]:
    src, params = model(preset, folder, shared)
    base = {"preset": preset, "params": params, "float_bytes": size(src)}
    float_session = session(src)
    rows = [
        {
            **base,
            "method": "float model (session only)",
            "out_bytes": base["float_bytes"],
            **_session_cells(float_session, None),
        }
    ]
    log(rows[-1])
    runs = {
        label: (onnxq_cmd(src, work / f"{preset}.{i}.onnx", options), work / f"{preset}.{i}.onnx", None)
        for i, (label, options) in enumerate({**CONFIGS, **DATA_DRIVEN}.items())
    }
    for i, (label, numpy_label) in enumerate(ON_NUMPY.items()):
        dst = work / f"{preset}.numpy{i}.onnx"
        runs[numpy_label] = (onnxq_cmd(src, dst, CONFIGS[label]), dst, NUMPY_LOOPS)
    ort_dst = work / f"{preset}.ort.onnx"
    runs[ORT_LABEL] = ([sys.executable, "-c", ORT_RTN, str(src), str(ort_dst)], ort_dst, None)
    for label, (cmd, dst, env) in [(label, runs[label]) for label in methods]:
        run = measured(cmd, env)
        row = {
            **base,
            "method": label,
            "cpu_s": run.cpu_s,
            "wall_s": run.wall_s,
            "peak_rss": run.peak_rss,
            "killed": run.killed,
            "weights_per_cpu_s": params / run.cpu_s,
        }
        if not run.killed:
            row["out_bytes"] = size(dst)
            if env is None and label not in DATA_DRIVEN:  # those write the default's format
                row |= _session_cells(session(dst), float_session)
        rows.append(row)
        log(row)
        for p in work.iterdir():
            p.unlink()
    return rows


def _session_cells(sess: Run, float_sess: Run | None) -> dict:
    cells = {"session_s": sess.cpu_s, "session_rss": sess.peak_rss, "session_killed": sess.killed}
    if float_sess is not None:
        cells |= {
            "session_rss_vs_float": sess.peak_rss / float_sess.peak_rss,
            "session_s_vs_float": sess.cpu_s / float_sess.cpu_s,
        }
    return cells


def table(rows: list[dict]) -> str:
    ort = {r["preset"]: r for r in rows if r["method"].startswith("ORT")}
    lines = [
        (
            "| model | method | CPU s | vs ORT | M weights / CPU-s | peak RSS GB | / float | / ORT "
            "| output MB | session CPU s (/ float) | session peak RSS GB (/ float) |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        o = ort.get(r["preset"])
        cells = [""] * 6
        if r.get("killed"):
            cells = ["killed", "", "", f"> {r['peak_rss'] / 1e9:.1f}", "", ""]
        elif "cpu_s" in r:
            cells = [
                f"{r['cpu_s']:.1f}",
                f"{r['cpu_s'] / o['cpu_s']:.1f}x" if o and not o.get("killed") else "",
                f"{r['weights_per_cpu_s'] / 1e6:.1f}",
                f"{r['peak_rss'] / 1e9:.2f}",
                f"{r['peak_rss'] / r['float_bytes']:.2f}",
                f"{r['peak_rss'] / o['peak_rss']:.2f}" if o and not o.get("killed") else "",
            ]
        if "session_s" not in r:
            tail = [f"{r['out_bytes'] / 1e6:.1f}" if "out_bytes" in r else "", "", ""]
        elif r.get("session_killed"):
            tail = [f"{r['out_bytes'] / 1e6:.1f}", "killed", f"> {r['session_rss'] / 1e9:.1f}"]
        else:
            tail = [
                f"{r['out_bytes'] / 1e6:.1f}",
                f"{r['session_s']:.2f}{_ratio(r, 'session_s_vs_float')}",
                f"{r['session_rss'] / 1e9:.2f}{_ratio(r, 'session_rss_vs_float')}",
            ]
        gb = r["float_bytes"] / 1e9
        lines.append(
            f"| {r['preset']} ({r['params'] / 1e6:.0f}M, {gb:.2f} GB) | {r['method']} | "
            + " | ".join(cells + tail)
            + " |"
        )
    return "\n".join(lines)


def _ratio(row: dict, key: str) -> str:
    return f" ({row[key]:.2f})" if key in row else ""


def main() -> None:
    global CAP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=["30m", "125m", "500m", "1.5b"])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "onnxq-scale")
    parser.add_argument("--write", action="store_true", help="write the section to docs/RESULTS.md")
    parser.add_argument(
        "--memory-cap", type=float, default=CAP / 1e9, help="GB of RSS at which a run is killed"
    )
    parser.add_argument("--shared", type=Path, default=SHARED, help="the folder of scale/make_llama.py")
    parser.add_argument("--commit", help="the commit measured, for --write (default: HEAD)")
    parser.add_argument("--reading", help="a paragraph under the table, for --write")
    parser.add_argument("--json", type=Path, help="append every row as a JSON line to this file")
    parser.add_argument(
        "--methods", nargs="*", default=METHODS, choices=ALL_METHODS, metavar="METHOD",
        help=f"the runs to measure, in this order (default: all but the data-driven ones); from {ALL_METHODS}",
    )  # fmt: skip
    parser.add_argument(
        "--table", type=Path, help="measure nothing: the table of the rows in this JSON-lines file"
    )
    args = parser.parse_args()
    CAP = args.memory_cap * 1e9
    args.folder.mkdir(parents=True, exist_ok=True)

    def log(row: dict) -> None:
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")

    rows = []
    if args.table:
        rows = [json.loads(line) for line in args.table.read_text().splitlines() if line.strip()]
        args.presets = list(dict.fromkeys(r["preset"] for r in rows))
    else:
        with tempfile.TemporaryDirectory(dir=args.folder) as work:
            for preset in args.presets:
                rows += measure(preset, args.folder, Path(work), log, args.shared, args.methods)
    print(table(rows))
    if args.write:
        import paper_tables

        commit = (
            args.commit
            or subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
            ).stdout.strip()
        )
        body = (
            f"## Scale: Llama-shaped decoders at onnxq {commit}, beside onnxruntime's quantizer\n\n"
            f"`python tools/bench_scale.py --presets {' '.join(args.presets)} --write`, "
            f"{os.cpu_count()} cores, one run at a time.\n\n" + table(rows) + "\n" + (args.reading or "")
        )
        paper_tables.write_section(ROOT / "docs" / "RESULTS.md", "scale", body)


if __name__ == "__main__":
    main()
