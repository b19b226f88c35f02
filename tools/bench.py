"""Runtime cost of onnxq's storage formats: file size, session creation, latency and memory.

    python tools/bench.py [--models efficientnet_lite0 ...] [--formats fold ...] [--bits 5]
                          [--format-bits matmulnbits=4 ...] [--write]

For the float model and every storage format in onnxq.FORMATS (or --formats), on the
shared models, on a transformer-like stack built in code (an embedding Gather and
blocks of MatMul, Add, Relu, MatMul, Add and a residual Add, token ids of shape
(batch, seq)) and on a 50k x 512 embedding table alone (where fold keeps a large
table's rows packed, it is also measured with the table folded whole, --no-packed-rows):

- file bytes, and the ratio to float;
- session creation: the median of --session-repeats fresh sessions, the variants
  interleaved;
- latency at each --batches: one session per variant, the variants interleaved in one
  process (each iteration times one run of every variant, starting at a different
  one), after --warmup runs each; the median;
- memory, in a fresh process per variant (this script with --child): VmRSS right after
  creating the session, and the peak RSS (ru_maxrss) after one run at batch 1.

Every session has intra_op_num_threads = inter_op_num_threads = 1 and the default
optimization level. A format is tried with the exponential codebook, then linear; a
format that compresses a model with neither is skipped with its reason. --write puts
the table into docs/RESULTS.md between the bench markers.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

# onnx and onnxq are imported inside the functions that need them, so that the --child
# process, whose memory is measured, holds only numpy and onnxruntime.

ROOT = Path(__file__).resolve().parent.parent
SHARED_MODELS = ROOT.parent / "shared" / "models"
RESULTS = ROOT / "docs" / "RESULTS.md"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
DEFAULT_MODELS = ["efficientnet_lite0", "mobilenet_v2_1.0_224"]
STACK = "transformer_stack"
EMBEDDING = "embedding_50k"  # a 50k x 512 table alone: packed rows against the folded table
WHOLE = "fold, tables folded"  # fold with --no-packed-rows, measured beside fold where it differs
CODEBOOK_ORDER = ("exponential", "linear")  # the first one a format accepts runs
MB = 1 << 20


def table_columns(batches: tuple[int, ...] = (1, 8)) -> list[str]:
    latency = [c for b in batches for c in (f"b{b} ms", f"b{b} / float", f"b{b} CPU / float")]
    return [
        *["model", "variant", "codebook", "bits", "bytes", "size / float", "session ms", "session / float"],
        "session CPU ms",
        *latency,
        *["RSS after session MB", "RSS / float", "RSS trimmed MB", "peak RSS MB", "peak / float"],
    ]


# The two targets, for fold on efficientnet_lite0 at 5 bits.
CHECK_MODEL, CHECK_FORMAT, CHECK_BITS = "efficientnet_lite0", "fold", 5
MAX_LATENCY_RATIO = 1.02
MAX_SESSION_MS_PER_MWEIGHT = 30.0


@dataclass
class Variant:
    """One file to measure: the float model, or its compression in one format."""

    model: str
    name: str  # "float" or a format key
    path: Path
    codebook: str = "-"
    weights: int = 0  # compressed weights
    bits: int | None = None


@dataclass
class Measurement:
    variant: Variant
    bytes: int
    session_ms: float
    session_cpu_ms: float
    latency_ms: dict[int, float]  # batch -> median wall time
    rss_session_mb: float
    peak_rss_mb: float
    baseline_rss_mb: float  # the child's RSS before creating the session
    latency_cpu_ms: dict[int, float] = field(default_factory=dict)  # batch -> median CPU time
    trimmed_rss_mb: float = float("nan")  # after the session, once malloc_trim returned freed heap


@dataclass
class Check:
    """One of the issue's targets; truthy when met."""

    name: str
    value: float
    target: float
    note: str = ""

    def __bool__(self) -> bool:
        return self.value <= self.target

    def __str__(self) -> str:
        verdict = "met" if self else "NOT met"
        note = f" ({self.note})" if self.note else ""
        return f"{self.name}: {self.value:.3f} (target <= {self.target:g}): {verdict}{note}"


@dataclass
class Skip:
    model: str
    name: str
    reason: str


@dataclass
class Results:
    measurements: list[Measurement] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return options


def build_stack(
    path: Path, vocab: int = 8000, dim: int = 256, hidden: int = 1024, blocks: int = 4, seed: int = 0
) -> Path:
    """Write a transformer-like float model: Gather(table, tokens), then MLP blocks with residuals."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        scale = 1 / np.sqrt(shape[0]) if len(shape) == 2 and name != "embed" else 0.02
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [weight("embed", vocab, dim)]
    nodes = [helper.make_node("Gather", ["embed", "tokens"], ["h0"])]
    for i in range(blocks):
        inits += [weight(f"w1_{i}", dim, hidden), weight(f"b1_{i}", hidden)]
        inits += [weight(f"w2_{i}", hidden, dim), weight(f"b2_{i}", dim)]
        x, out = f"h{i}", f"h{i + 1}"
        nodes += [
            helper.make_node("MatMul", [x, f"w1_{i}"], [f"m1_{i}"]),
            helper.make_node("Add", [f"m1_{i}", f"b1_{i}"], [f"a1_{i}"]),
            helper.make_node("Relu", [f"a1_{i}"], [f"r_{i}"]),
            helper.make_node("MatMul", [f"r_{i}", f"w2_{i}"], [f"m2_{i}"]),
            helper.make_node("Add", [f"m2_{i}", f"b2_{i}"], [f"a2_{i}"]),
            helper.make_node("Add", [x, f"a2_{i}"], [out]),
        ]
    graph = helper.make_graph(
        nodes,
        "stack",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info(f"h{blocks}", TensorProto.FLOAT, ["batch", "seq", dim])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def build_embedding(path: Path, vocab: int = 50_000, dim: int = 512, seed: int = 0) -> Path:
    """Write a model that is one Gather(table, tokens) from a float table of vocab x dim."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((vocab, dim)) * 0.02).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embed", "tokens"], ["vectors"])],
        "embedding",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["batch", "seq", dim])],
        [numpy_helper.from_array(table, "embed")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_feeds(path: Path, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs: the first symbolic dimension is the batch, any other is seq.

    Integer inputs that index a Gather table are drawn over the whole table.
    """
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for inp in graph.input:
        if inp.name in inits:
            continue
        tensor_type = inp.type.tensor_type
        shape = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            else:
                shape.append(seq if shape else batch)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.integer):
            tables = [
                inits[n.input[0]].dims[0]
                for n in graph.node
                if n.op_type == "Gather" and n.input[1] == inp.name and n.input[0] in inits
            ]
            feeds[inp.name] = rng.integers(0, min(tables, default=2), size=shape).astype(dtype)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def compress_variants(
    model: str, src: Path, formats: list[str], bits: int, tmp: Path, format_bits: dict[str, int] | None = None
) -> Results:
    """The float model and one compressed file per format that accepts it, with the skips.

    format_bits: a width per format, instead of bits.
    """
    import onnxq

    out = Results()
    variants = [Variant(model, "float", src)]
    for name in formats:
        width = (format_bits or {}).get(name, bits)
        dst = tmp / f"{model}.{name}.onnx"
        reasons = []
        for codebook in CODEBOOK_ORDER:
            try:
                report = onnxq.compress(src, dst, bits=width, format=name, codebook=codebook, validate=False)
            except onnxq.OnnxqError as exc:
                reasons.append(f"{codebook}: {exc}")
                continue
            log(f"{model}: {name} ran with the {codebook} codebook ({report.ratio:.2f}x smaller)")
            variants.append(Variant(model, name, dst, codebook, report.compressed_elements, width))
            if name == "fold" and any("rows packed" in n for n in report.notes):
                whole = tmp / f"{model}.fold-whole.onnx"
                onnxq.compress(src, whole, bits=width, codebook=codebook, validate=False, packed_rows=False)
                variants.append(Variant(model, WHOLE, whole, codebook, report.compressed_elements, width))
            break
        else:
            reason = "; ".join(reasons)
            log(f"{model}: skipping {name}: {reason}")
            out.skips.append(Skip(model, name, reason))
    out.measurements = [Measurement(v, v.path.stat().st_size, 0.0, 0.0, {}, 0.0, 0.0, 0.0) for v in variants]
    return out


def rotated(items: list, start: int) -> list:
    start %= len(items)
    return items[start:] + items[:start]


def time_sessions(paths: list[Path], repeats: int) -> list[tuple[float, float]]:
    """Median wall and CPU ms to create a fresh session of each path, interleaved.

    The CPU time (the whole process's) is less sensitive to other jobs on the machine.
    """
    times: list[list[tuple[float, float]]] = [[] for _ in paths]
    order = list(range(len(paths)))
    for r in range(repeats):
        for i in rotated(order, r):
            wall, cpu = time.perf_counter(), time.process_time()
            ort.InferenceSession(str(paths[i]), session_options(), providers=["CPUExecutionProvider"])
            times[i].append((1000 * (time.perf_counter() - wall), 1000 * (time.process_time() - cpu)))
    return [(statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for t in times]


def time_runs(
    paths: list[Path], feeds: dict[str, np.ndarray], iterations: int, warmup: int
) -> list[tuple[float, float]]:
    """Median wall and CPU ms per run of each path on the same feeds, interleaved one run at a time.

    With one intra-op thread onnxruntime runs on the calling thread, so that thread's CPU
    time is the run's, and waiting for the CPU behind other jobs does not count.
    """
    sessions = [
        ort.InferenceSession(str(p), session_options(), providers=["CPUExecutionProvider"]) for p in paths
    ]
    for session in sessions:
        for _ in range(warmup):
            session.run(None, feeds)
    times: list[list[tuple[float, float]]] = [[] for _ in paths]
    order = list(range(len(paths)))
    for it in range(iterations):
        for i in rotated(order, it):
            wall, cpu = time.perf_counter(), time.thread_time()
            sessions[i].run(None, feeds)
            times[i].append((1000 * (time.perf_counter() - wall), 1000 * (time.thread_time() - cpu)))
    return [(statistics.median(w for w, _ in t), statistics.median(c for _, c in t)) for t in times]


def proc_status_mb(key: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def child(model: Path, feeds: Path) -> None:
    """Run in a fresh process: RSS before and after session creation, then peak RSS after one run."""
    inputs = dict(np.load(feeds))
    baseline = proc_status_mb("VmRSS")
    session = ort.InferenceSession(str(model), session_options(), providers=["CPUExecutionProvider"])
    after = proc_status_mb("VmRSS")
    # How much of that RSS is heap the session freed but glibc kept (NaN without glibc).
    libc = ctypes.util.find_library("c")
    trimmed = float("nan")
    if libc and hasattr(ctypes.CDLL(libc), "malloc_trim"):
        ctypes.CDLL(libc).malloc_trim(0)
        trimmed = proc_status_mb("VmRSS")
    session.run(None, inputs)
    # ru_maxrss survives execve: Linux keeps the parent's high-water mark of the memory the
    # child was spawned from (with vfork, the whole benchmark's peak), so it is reported
    # only as a cross-check. VmHWM belongs to the child's own address space.
    # The kernel's RSS counters are approximate (per-CPU), so a later VmHWM can read a
    # little below an earlier VmRSS; the peak is at least every RSS seen.
    peak = max(proc_status_mb("VmHWM"), after)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    memory = {"baseline_mb": baseline, "session_mb": after, "trimmed_mb": trimmed, "peak_mb": peak}
    print(json.dumps({**memory, "ru_maxrss_mb": maxrss}))


def measure_memory(model: Path, feeds: Path) -> dict[str, float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(model), str(feeds)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def bench_model(
    model: str,
    src: Path,
    formats: list[str],
    bits: int,
    tmp: Path,
    *,
    format_bits: dict[str, int] | None = None,
    batches: tuple[int, ...] = (1, 8),
    seq: int = 32,
    iterations: int = 200,
    warmup: int = 3,
    session_repeats: int = 11,
) -> Results:
    """Compress src in each format and measure the float model and every compressed file."""
    results = compress_variants(model, src, formats, bits, tmp, format_bits)
    ms = results.measurements
    paths = [m.variant.path for m in ms]
    log(f"{model}: session creation x{session_repeats}")
    for m, (wall, cpu) in zip(ms, time_sessions(paths, session_repeats), strict=True):
        m.session_ms, m.session_cpu_ms = wall, cpu
    for batch in batches:
        log(f"{model}: batch {batch}, {iterations} interleaved iterations")
        feeds = make_feeds(src, batch, seq)
        for m, (wall, cpu) in zip(ms, time_runs(paths, feeds, iterations, warmup), strict=True):
            m.latency_ms[batch], m.latency_cpu_ms[batch] = wall, cpu
    feeds_path = tmp / f"{model}.feeds.npz"
    np.savez(feeds_path, **make_feeds(src, 1, seq))  # type: ignore[arg-type]  # as in make_calibration
    log(f"{model}: memory, one fresh process per variant")
    for m in ms:
        mem = measure_memory(m.variant.path, feeds_path)
        m.baseline_rss_mb, m.rss_session_mb, m.trimmed_rss_mb, m.peak_rss_mb = (
            mem[k] for k in ("baseline_mb", "session_mb", "trimmed_mb", "peak_mb")
        )
    return results


def markdown_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_table(measurements: list[Measurement], batches: tuple[int, ...] = (1, 8)) -> list[str]:
    """The Markdown table, ratios against the float row of the same model."""
    columns = table_columns(batches)
    floats = {m.variant.model: m for m in measurements if m.variant.name == "float"}
    lines = [markdown_row(columns), markdown_row(["---"] * 3 + ["---:"] * (len(columns) - 3))]
    for m in measurements:
        f = floats[m.variant.model]
        cells = [
            m.variant.model,
            m.variant.name,
            m.variant.codebook,
            str(m.variant.bits) if m.variant.bits else "-",
            f"{m.bytes:,}",
            f"{m.bytes / f.bytes:.3f}",
        ]
        cells += [f"{m.session_ms:.1f}", f"{m.session_ms / f.session_ms:.2f}", f"{m.session_cpu_ms:.1f}"]
        for b in batches:
            cells += [f"{m.latency_ms[b]:.2f}", f"{m.latency_ms[b] / f.latency_ms[b]:.3f}"]
            cells.append(f"{m.latency_cpu_ms[b] / f.latency_cpu_ms[b]:.3f}")
        cells += [
            f"{m.rss_session_mb:.1f}",
            f"{m.rss_session_mb / f.rss_session_mb:.2f}",
            f"{m.trimmed_rss_mb:.1f}",
        ]
        cells += [f"{m.peak_rss_mb:.1f}", f"{m.peak_rss_mb / f.peak_rss_mb:.2f}"]
        lines.append(markdown_row(cells))
    return lines


def derive_checks(measurements: list[Measurement], bits: int) -> list[Check]:
    """The issue's two targets for fold on efficientnet_lite0 at 5 bits; empty when not measured."""
    by = {(m.variant.model, m.variant.name): m for m in measurements}
    fold, base = by.get((CHECK_MODEL, CHECK_FORMAT)), by.get((CHECK_MODEL, "float"))
    if bits != CHECK_BITS or fold is None or base is None or 1 not in fold.latency_ms:
        return []
    mweights = fold.variant.weights / 1e6
    overhead = (fold.session_ms - base.session_ms) / mweights
    cpu_overhead = (fold.session_cpu_ms - base.session_cpu_ms) / mweights
    return [
        Check(
            f"{CHECK_FORMAT} on {CHECK_MODEL} at {bits} bits, median batch-1 latency / float",
            fold.latency_ms[1] / base.latency_ms[1],
            MAX_LATENCY_RATIO,
            f"wall time; in CPU time {fold.latency_cpu_ms[1] / base.latency_cpu_ms[1]:.3f}",
        ),
        Check(
            f"{CHECK_FORMAT} on {CHECK_MODEL} at {bits} bits, session creation overhead, ms per million weights",
            overhead,
            MAX_SESSION_MS_PER_MWEIGHT,
            f"wall time; in CPU time {cpu_overhead:.1f}",
        ),
    ]


def git_commit() -> str:
    def git(*args: str) -> str:
        cmd = ["git", "-C", str(ROOT), *args]
        return subprocess.run(cmd, check=False, capture_output=True, text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if dirty else "")


def write_section(path: Path, section: str) -> None:
    """Replace the text between the bench markers, or append the section."""
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def resolve_models(names: list[str]) -> list[tuple[str, Path]]:
    models = []
    for name in names:
        path = Path(name) if name.endswith(".onnx") else SHARED_MODELS / f"{name}.onnx"
        if not path.is_file():
            raise SystemExit(f"error: model {path} does not exist; pass a path or a name in {SHARED_MODELS}")
        models.append((path.stem, path))
    return models


def main(argv: list[str] | None = None) -> None:
    import onnxq

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="*",
        default=DEFAULT_MODELS,
        help="names in the shared models, or paths (none: only the built models)",
    )
    parser.add_argument(
        "--stack", action=argparse.BooleanOptionalAction, default=True, help="the built stack"
    )
    parser.add_argument(
        "--embedding",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the built 50k x 512 embedding table",
    )
    parser.add_argument("--formats", nargs="+", choices=list(onnxq.FORMATS), default=list(onnxq.FORMATS))
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument(
        "--format-bits",
        nargs="*",
        default=[],
        metavar="FORMAT=BITS",
        help="a width for one format instead of --bits, e.g. matmulnbits=4",
    )
    parser.add_argument("--iterations", type=int, default=200, help="timed runs per variant and batch")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--session-repeats", type=int, default=11)
    parser.add_argument("--seq", type=int, default=32, help="sequence length of the stack's token ids")
    parser.add_argument(
        "--write", action="store_true", help=f"put the table into {RESULTS.relative_to(ROOT)}"
    )
    args = parser.parse_args(argv)

    models = resolve_models(args.models)
    try:
        format_bits = {k: int(v) for k, v in (item.split("=", 1) for item in args.format_bits)}
    except ValueError:
        parser.error("--format-bits takes FORMAT=BITS, e.g. matmulnbits=4")
    load_start, started = os.getloadavg(), time.perf_counter()
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    commit = git_commit()
    results = Results()
    with tempfile.TemporaryDirectory(prefix="onnxq-bench-") as tmp_name:
        tmp = Path(tmp_name)
        if args.stack:
            models.append((STACK, build_stack(tmp / f"{STACK}.onnx")))
        if args.embedding:
            models.append((EMBEDDING, build_embedding(tmp / f"{EMBEDDING}.onnx")))
        for name, path in models:
            r = bench_model(
                name,
                path,
                args.formats,
                args.bits,
                tmp,
                format_bits=format_bits,
                seq=args.seq,
                iterations=args.iterations,
                warmup=args.warmup,
                session_repeats=args.session_repeats,
            )
            results.measurements += r.measurements
            results.skips += r.skips
    load_end, seconds = os.getloadavg(), time.perf_counter() - started

    table = render_table(results.measurements)
    checks = derive_checks(results.measurements, args.bits)
    skips = [f"- skipped {s.name} on {s.model}: {s.reason}" for s in results.skips]
    check_lines = [f"- {c}" for c in checks] or [
        f"- the issue's checks need {CHECK_FORMAT} on {CHECK_MODEL} at --bits {CHECK_BITS}: not measured"
    ]
    print("\n".join(table + [""] + skips + check_lines))

    if args.write:
        baselines = [m.baseline_rss_mb for m in results.measurements]
        command = " ".join(["python tools/bench.py", *(argv if argv is not None else sys.argv[1:])])
        section = SECTION.format(
            commit=commit,
            ort=ort.__version__,
            date=date,
            command=command,
            seconds=seconds,
            load_start=", ".join(f"{x:.2f}" for x in load_start),
            load_end=", ".join(f"{x:.2f}" for x in load_end),
            bits=args.bits,
            iterations=args.iterations,
            warmup=args.warmup,
            repeats=args.session_repeats,
            seq=args.seq,
            base_lo=min(baselines),
            base_hi=max(baselines),
            table="\n".join(table),
            notes="\n".join(skips + check_lines),
        )
        write_section(RESULTS, section)
        log(f"wrote {RESULTS}")


SECTION_TEMPLATE = """\
## Runtime: file size, session creation, latency and memory

onnxq at commit {commit}, onnxruntime {ort} (CPU), {date}. Command, from the
repository root ({seconds:.0f} s in total):

```
{command}
```

Load average (1, 5, 15 min) at the start: {load_start}; at the end: {load_end}. The
machine has 2 cores, and a load above 1 means that other work shared them; the variants of a
model are interleaved run by run, so their ratios share the same conditions, while the absolute
milliseconds move with the load.

Every compressed file is at {bits} bits unless the command's --format-bits says otherwise
(column **bits**), per channel, with the first codebook the format accepts (exponential,
else linear; column **codebook**), validation off. Sessions use
intra_op_num_threads = inter_op_num_threads = 1 and the default optimization level.
**session ms**: median wall time of {repeats} fresh sessions, interleaved; **session CPU
ms**: the median CPU time of the same sessions, which other jobs on the machine inflate
less. **b1 ms**, **b8 ms**: median of {iterations} runs at batch 1 and 8 after {warmup} warmup
runs, one session per variant, the variants interleaved in one process; **b1 CPU / float**,
**b8 CPU / float**: the same ratio in the running thread's CPU time (onnxruntime runs on
the calling thread with one intra-op thread), which excludes time spent waiting for a core.
**RSS after session**: VmRSS of a fresh process (one per variant) right after creating the
session; **RSS trimmed**: the same after glibc's `malloc_trim(0)` returned the heap the
session had freed; **peak RSS**: that process's VmHWM after one run at batch 1. All three
include the child's Python, numpy and onnxruntime ({base_lo:.0f}-{base_hi:.0f} MB before the
session). The peak is VmHWM, not `ru_maxrss`: Linux carries `ru_maxrss` across `execve`
from the process that spawned the child, so the child reported the benchmark's own peak. Every "/ float" is the variant's figure over the float model's.
**{stack}**: an 8000 x 256 embedding Gather, then 4 blocks of MatMul 256x1024, Add, Relu,
MatMul 1024x256, Add and a residual Add, token ids of shape (batch, {seq}); seeded
random weights, built by the script. **{embedding}**: one Gather from a 50,000 x 512 float
table, the same token ids. **{whole}**: fold with `--no-packed-rows`, the table folded whole
at session creation, beside fold's default of packed rows unpacked per lookup.

{table}

{notes}
"""
SECTION = (
    SECTION_TEMPLATE.replace("{stack}", STACK).replace("{embedding}", EMBEDDING).replace("{whole}", WHOLE)
)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
