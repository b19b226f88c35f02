"""Run the float and the compressed model on the same inputs and compare outputs.

For each output y (float) and y_q, over every run: max |y - y_q|, ||y - y_q|| / ||y||,
cosine, SQNR = 10 log10(sum y^2 / sum (y - y_q)^2), and top-1 agreement for class scores.
Positions that an attention mask marks as padding are left out. Gates turn the numbers
into a verdict: on real inputs, every output's cosine must reach DEFAULT_MIN_COSINE unless
--min-cosine says otherwise; on random inputs no default gate runs, and the verdict says
that nothing was checked against real data.

The two models run one after the other, never side by side: the float model's outputs for a
chunk of runs (up to CHUNK_BYTES of them) are kept, its session closed, and the compressed
model's session opened to compare against them. Peak memory is one session plus the outputs.
A model too large for that runs block by block (blocks.py): a segment of its graph at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxq import runtime
from onnxq.check import blocks
from onnxq.data import samples as data
from onnxq.data import synthetic
from onnxq.data.samples import InputSpec, Sample
from onnxq.errors import OnnxqError
from onnxq.graph import io

DEFAULT_MIN_COSINE = 0.98
DEFAULT_BATCH = 16  # samples per run of --inputs
# Above this many weights (compressed, or in the float model when nothing is compressed yet),
# validation runs both models as their graphs state (no graph optimizations), block by block.
# onnxruntime folds a fold decoder when it creates a session, and its constant folding keeps
# every intermediate until the session is ready: about 34 bytes per weight, 3.9 GB for a
# 134M-weight decoder whose float session peaks at 0.6 GB (docs/RESULTS.md, scale).
UNFOLDED_WEIGHTS = 1 << 25
CHUNK_BYTES = 256 << 20  # the float outputs kept at once; more runs take more rounds of sessions
NOT_CHECKED = "not checked against real data"


@dataclass
class OutputComparison:
    name: str
    max_abs_error: float
    relative_l2_error: float
    cosine: float
    sqnr_db: float
    top1_agreement: float | None  # None unless the output looks like class scores


@dataclass(frozen=True)
class Gates:
    """Thresholds; min_cosine None means DEFAULT_MIN_COSINE on real inputs and none on random ones."""

    min_cosine: float | None = None
    min_sqnr: float | None = None
    min_agreement: float | None = None

    def active(self, real: bool) -> list[tuple[str, float, str]]:
        """(metric, threshold, where it came from) of every gate that runs."""
        out = []
        if self.min_cosine is not None:
            out.append(("cosine", self.min_cosine, "--min-cosine"))
        elif real:
            out.append(("cosine", DEFAULT_MIN_COSINE, "default"))
        if self.min_sqnr is not None:
            out.append(("sqnr_db", self.min_sqnr, "--min-sqnr"))
        if self.min_agreement is not None:
            out.append(("top1_agreement", self.min_agreement, "--min-agreement"))
        return out


@dataclass
class Validation:
    """The comparison; truthy when every gate that ran was met."""

    inputs: str  # what was fed: the file and its samples, or the synthetic inputs
    samples: int
    real: bool = False  # real data (--inputs or calibration) rather than synthetic inputs
    shapes: dict[str, list[list[int]]] = field(default_factory=dict)  # each input's shapes fed
    outputs: list[OutputComparison] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)  # the gates that ran
    failures: list[str] = field(default_factory=list)
    by_blocks: bool = False  # each model ran a block of its graph at a time (blocks.py)

    def __bool__(self) -> bool:
        return not self.failures

    @property
    def verdict(self) -> str:
        if self.failures:
            return "FAILED"
        return "passed" if self.real else NOT_CHECKED

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": bool(self), "verdict": self.verdict}


class _Sums:
    """One output's running sums over the runs: energy, noise, cross terms, peak error, top-1."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.aa = self.bb = self.ab = self.noise = self.peak = 0.0
        self.agree = self.rows = self.runs = 0
        self.classes = True

    def add(self, ref: np.ndarray, got: np.ndarray, keep: np.ndarray | None) -> None:
        if ref.shape != got.shape:
            raise OnnxqError(f"output {self.name} has shape {got.shape}, the float model's {ref.shape}")
        self.runs += 1
        self.classes &= ref.ndim == 2 and ref.shape[1] >= 10 and np.issubdtype(ref.dtype, np.floating)
        if self.classes:
            self.agree += int(np.sum(ref.argmax(1) == got.argmax(1)))
            self.rows += ref.shape[0]
        a, b = ref.astype(np.float64), got.astype(np.float64)
        if keep is not None:
            a, b = a.reshape(keep.size, -1)[keep], b.reshape(keep.size, -1)[keep]
        a, b = a.ravel(), b.ravel()
        diff = a - b
        self.aa += float(a @ a)
        self.bb += float(b @ b)
        self.ab += float(a @ b)
        self.noise += float(diff @ diff)
        self.peak = max(self.peak, float(np.abs(diff).max()) if diff.size else 0.0)

    def result(self) -> OutputComparison:
        denom = np.sqrt(self.aa * self.bb)
        return OutputComparison(
            name=self.name,
            max_abs_error=self.peak,
            relative_l2_error=float(np.sqrt(self.noise / self.aa)) if self.aa > 0 else float(self.noise > 0),
            cosine=float(self.ab / denom) if denom > 0 else float(self.noise == 0),
            sqnr_db=float(10 * np.log10(self.aa / self.noise)) if self.noise > 0 else float("inf"),
            top1_agreement=self.agree / self.rows if self.classes and self.rows else None,
        )


Source = bytes | str | Path


def compare_runs(
    ref: Source,
    cand: Source,
    runs: Iterable[Sample],
    mask: str | None,
    what: str,
    literal: bool = False,
    opened: list[runtime.Session] | None = None,
) -> tuple[list[OutputComparison], int]:
    """Every numeric output of both models over the runs, and how many runs there were.

    One session at a time: the float model's outputs for a chunk of runs, then the compressed
    model's on the same runs. opened: holds a session of ref already open, for the first chunk;
    it is taken out, so that the caller keeps no reference to it."""
    sums: dict[str, _Sums] = {}
    pending = iter(runs)
    count, full = 0, True
    while full:
        sess = opened.pop() if opened else runtime.session(ref, literal=literal)
        names = [o.name for o in sess.get_outputs()]
        inputs = sorted((i.name, i.type) for i in sess.get_inputs())
        chunk, full = _reference_chunk(sess, pending, names, what)
        del sess
        runtime.give_back_memory()  # what the float session freed, before the next one opens
        if not chunk and count:
            break
        other = runtime.session(cand, literal=literal)
        theirs = sorted((i.name, i.type) for i in other.get_inputs())
        if theirs != inputs:
            raise OnnxqError(f"the models take different inputs: {inputs} vs {theirs}")
        count += len(chunk)
        for feed, ys in chunk:
            _add(sums, names, feed, ys, runtime.run(other, feed, names, what), mask)
        del other
    return [s.result() for s in sums.values() if s.runs], count


def _cut(ref: Path, cand: Path) -> tuple[blocks.Described, blocks.Described] | None:
    """Both models' descriptions when both graphs can be cut, else None."""
    both = blocks.describe(ref), blocks.describe(cand)
    return both if all(d.cuttable for d in both) else None


BLOCK_SAMPLES = 16  # samples whose tensors block validation carries at once


def compare_blocks(
    ref: Path,
    cand: Path,
    runs: Iterable[Sample],
    mask: str | None,
    what: str,
    literal: bool,
    described: tuple[blocks.Described, blocks.Described],
    known: synthetic.Reference | None = None,
) -> tuple[list[OutputComparison], int]:
    """compare_runs, each model run block by block (blocks.py), BLOCK_SAMPLES runs at a time;
    described: both models' blocks.describe, the float one's first. known: the float model's
    outputs on some runs, used where a chunk is those runs."""
    ours, theirs = described
    if sorted(ours.inputs) != sorted(theirs.inputs):
        raise OnnxqError(
            f"the models take different inputs: {sorted(ours.inputs)} vs {sorted(theirs.inputs)}"
        )
    names = ours.outputs
    # As many blocks as the float model's: a compressed block's weights are decoded as it runs.
    budget = max(1, blocks.BLOCK_BYTES * theirs.weight_bytes // max(1, ours.weight_bytes))
    sums: dict[str, _Sums] = {}
    pending, count = iter(runs), 0
    while chunk := list(itertools.islice(pending, BLOCK_SAMPLES)):
        if known is not None and known.answers(chunk):
            ys = known.outputs
        else:
            ys = blocks.run(ref, chunk, names, literal, what, model=ours.model)
            runtime.give_back_memory()
        yq = blocks.run(cand, chunk, names, literal, what, budget, theirs.model)
        runtime.give_back_memory()
        count += len(chunk)
        for feed, y, q in zip(chunk, ys, yq):
            _add(sums, names, feed, y, q, mask)
    return [s.result() for s in sums.values() if s.runs], count


def _add(sums: dict[str, _Sums], names: list[str], feed: Sample, ys, yq, mask: str | None) -> None:
    """One run's numeric outputs of both models into their sums (padding left out)."""
    for n, a, b in zip(names, ys, yq):
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim and np.issubdtype(a.dtype, np.number):
            keep = data.kept_rows(a, feed.get(mask) if mask else None)
            sums.setdefault(n, _Sums(n)).add(a, b, keep)


def _reference_chunk(sess, runs, names: list[str], what: str) -> tuple[list[tuple[Sample, list]], bool]:
    """The float outputs of the next runs until they hold CHUNK_BYTES; and whether they filled it
    (runs may be left)."""
    chunk, held = [], 0
    for feed in runs:
        ys = runtime.run(sess, feed, names, what)
        chunk.append((feed, ys))
        held += sum(np.asarray(y).nbytes for y in ys)
        if held >= CHUNK_BYTES:
            return chunk, True
    return chunk, False


def judge(validation: Validation, gates: Gates) -> Validation:
    """Run the gates over the comparison: fill in which ran and which failed."""
    for metric, threshold, source in gates.active(validation.real):
        shown = {"cosine": "cosine", "sqnr_db": "SQNR", "top1_agreement": "top-1 agreement"}[metric]
        validation.gates.append(f"{shown} >= {threshold:g} on every output ({source})")
        for o in validation.outputs:
            got = getattr(o, metric)
            if got is not None and got < threshold:
                unit = " dB" if metric == "sqnr_db" else ""
                validation.failures.append(f"{o.name}: {shown} {got:.4g}{unit} < {threshold:g} ({source})")
    return validation


def load_proto(model: bytes | str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """The model's graph without external data, for its inputs and their roles."""
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_from_string(model)
    return io.parse(Path(model))


def synthetic_plan(
    model: onnx.ModelProto, sess: runtime.Session, specs: Sequence[InputSpec], dims: dict[str, int], seed: int
) -> synthetic.Plan:
    """Synthetic inputs the float model runs on (synthetic.plan_inputs with sess as the runner)."""

    def runner(plan: synthetic.Plan, seed: int) -> None:
        runtime.run(sess, plan.feeds(1, seed)[0], what="synthetic inputs")

    return synthetic.plan_inputs(model, specs, dims, runner, seed)


def runs_in_blocks(graph: onnx.GraphProto) -> bool:
    """Whether a float model runs block by block (blocks.py): it holds over UNFOLDED_WEIGHTS
    weights, and its graph can be cut."""
    return blocks.elements(graph) > UNFOLDED_WEIGHTS and blocks.cuttable(graph)


REFERENCE_BYTES = 64 << 20  # the most of the float model's outputs a plan keeps for validation


def synthetic_plan_by_blocks(
    model: onnx.ModelProto,
    path: Path,
    specs: Sequence[InputSpec],
    dims: dict[str, int],
    seed: int,
    runs: Callable[[synthetic.Plan, int], list[Sample]] | None = None,
) -> synthetic.Plan:
    """synthetic_plan, the model at path run block by block (blocks.py) without graph optimizations.
    runs: the runs that validation will make of the plan's inputs. The float model's outputs on
    them (up to REFERENCE_BYTES) are then kept in Plan.reference, so that it runs once: at 468M
    weights each run by blocks opens a session per segment."""
    described = blocks.describe(path)

    def runner(plan: synthetic.Plan, seed: int) -> None:
        try:
            feeds = runs(plan, seed) if runs is not None else None
        except OnnxqError:  # validation's inputs would be too large: validation will say so
            feeds = None
        names = described.outputs if feeds is not None else described.outputs[:1]
        outputs = blocks.run(
            path, feeds or plan.feeds(1, seed), names, True, "synthetic inputs", model=described.model
        )
        if feeds is not None and sum(np.asarray(y).nbytes for ys in outputs for y in ys) <= REFERENCE_BYTES:
            plan.reference = synthetic.Reference(feeds, outputs)

    return synthetic.plan_inputs(model, specs, dims, runner, seed)


def validation_runs(
    specs: Sequence[InputSpec], samples: int, batch: int, max_input_bytes: int | None
) -> Callable[[synthetic.Plan, int], list[Sample]]:
    """The runs validate_samples makes of samples synthetic inputs of a plan."""

    def runs(plan: synthetic.Plan, seed: int) -> list[Sample]:
        return list(_runs(plan.feeds(samples, seed, max_input_bytes), specs, batch))

    return runs


def _runs(samples: Sequence[Sample], specs: Sequence[InputSpec], batch: int) -> Iterator[Sample]:
    """The feeds validation runs: the samples stacked batch by batch (data.batches). A plan's
    reference is made on these, so that validation finds its own runs in it."""
    return (feed for feed, _ in data.batches(samples, specs, batch))


def compare_models(
    reference: Source,
    candidate: Source,
    inputs: str | Path | None = None,
    dims: dict[str, int] | None = None,
    samples: int = 4,
    seed: int = 0,
    min_sqnr: float | None = None,
    min_agreement: float | None = None,
    min_cosine: float | None = None,
    batch: int = DEFAULT_BATCH,
    plan: synthetic.Plan | None = None,
    literal: bool = False,
    max_input_bytes: int | None = None,
) -> Validation:
    """Run both models on the same inputs (an npz or folder of them, else synthetic ones) and
    compare every output; the gates decide whether it passed. literal: run both as their graphs
    state, without the fused kernels that change the arithmetic (runtime.session).
    max_input_bytes: the most the inputs' arrays may take (data.read_samples). Two model files
    whose float model holds over UNFOLDED_WEIGHTS weights run literally, block by block."""
    proto = load_proto(reference)
    large = runs_in_blocks(proto.graph)
    by_blocks = large and not isinstance(reference, bytes) and not isinstance(candidate, bytes)
    if by_blocks:
        reference, candidate, literal = Path(reference), Path(candidate), True  # type: ignore[arg-type]
    # handed on to validate_samples, which closes it when done with it
    opened = [] if by_blocks else [runtime.session(reference, literal=literal)]
    specs = data.input_specs(proto)
    if inputs is not None:
        runs = data.read_samples(inputs, specs, "inputs file", max_input_bytes)
        what, real = f"{inputs} ({len(runs)} samples)", True
    else:
        if plan is None and by_blocks:
            made = validation_runs(specs, samples, batch, max_input_bytes)
            plan = synthetic_plan_by_blocks(proto, Path(reference), specs, dims or {}, seed, made)  # type: ignore[arg-type]
        plan = plan or synthetic_plan(proto, opened[0], specs, dims or {}, seed)
        runs = plan.feeds(samples, seed, max_input_bytes)
        what, real = f"random inputs: {plan.describe()}", False
    gates = Gates(min_cosine, min_sqnr, min_agreement)
    known = plan.reference if plan is not None and inputs is None else None
    return validate_samples(
        reference, candidate, specs, runs, what, real, gates, batch, literal, opened, by_blocks, known
    )


def validate_samples(
    ref: Source,
    cand: Source,
    specs: Sequence[InputSpec],
    samples: Sequence[Sample],
    what: str,
    real: bool,
    gates: Gates,
    batch: int = DEFAULT_BATCH,
    literal: bool = False,
    opened: list[runtime.Session] | None = None,
    by_blocks: bool = False,
    known: synthetic.Reference | None = None,
) -> Validation:
    """Compare the models on samples, batch by batch, and judge the result (see compare_runs).
    by_blocks: run each model block by block (compare_blocks), when both are files; known: the
    float model's outputs on some of the runs (a plan's reference), for compare_blocks."""
    runs = _runs(samples, specs, batch)
    mask = data.mask_input(specs)
    described = None
    if by_blocks and isinstance(ref, Path) and isinstance(cand, Path):
        described = _cut(ref, cand)
        if described is not None:
            if opened:
                opened.clear()  # a whole session of the float model is what blocks avoid
            outputs, _ = compare_blocks(ref, cand, runs, mask, "validation inputs", literal, described, known)
    if described is None:
        outputs, _ = compare_runs(ref, cand, runs, mask, "validation inputs", literal, opened)
    result = Validation(
        inputs=what,
        samples=len(samples),
        real=real,
        shapes=data.shapes(samples),
        outputs=outputs,
        by_blocks=described is not None,
    )
    return judge(result, gates)
