"""Run the float and the compressed model on the same inputs and compare outputs.

For each output y (float) and y_q, over every run: max |y - y_q|, ||y - y_q|| / ||y||,
cosine, SQNR = 10 log10(sum y^2 / sum (y - y_q)^2), and top-1 agreement for class scores.
Positions that an attention mask marks as padding are left out. Gates turn the numbers
into a verdict: on real inputs, every output's cosine must reach DEFAULT_MIN_COSINE unless
--min-cosine says otherwise; on random inputs no default gate runs, and the verdict says
that nothing was checked against real data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnxq import runtime
from onnxq.data import samples as data
from onnxq.data import synthetic
from onnxq.data.samples import InputSpec, Sample
from onnxq.errors import OnnxqError

DEFAULT_MIN_COSINE = 0.98
DEFAULT_BATCH = 16  # samples per run of --inputs
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


def compare_runs(
    ref: runtime.Session, cand: runtime.Session, runs: Iterable[Sample], mask: str | None, what: str
) -> tuple[list[OutputComparison], int]:
    """Every numeric output of both sessions over the runs, and how many runs there were."""
    names = [o.name for o in ref.get_outputs()]
    sums = {n: _Sums(n) for n in names}
    count = 0
    for feed in runs:
        count += 1
        ys = runtime.run(ref, feed, names, what)
        yq = runtime.run(cand, feed, names, what)
        for n, a, b in zip(names, ys, yq):
            a, b = np.asarray(a), np.asarray(b)
            if a.ndim and np.issubdtype(a.dtype, np.number):
                sums[n].add(a, b, data.kept_rows(a, feed.get(mask) if mask else None))
    return [s.result() for s in sums.values() if s.runs], count


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
    return onnx.load(str(model), load_external_data=False)


def synthetic_plan(
    model: onnx.ModelProto, sess: runtime.Session, specs: Sequence[InputSpec], dims: dict[str, int], seed: int
) -> synthetic.Plan:
    """Synthetic inputs the float model runs on (synthetic.plan_inputs with sess as the runner)."""

    def runner(feed: Sample) -> None:
        runtime.run(sess, feed, what="synthetic inputs")

    return synthetic.plan_inputs(model, specs, dims, runner, seed)


def compare_models(
    reference: bytes | str | Path,
    candidate: bytes | str | Path,
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
) -> Validation:
    """Run both models on the same inputs (an npz or folder of them, else synthetic ones) and
    compare every output; the gates decide whether it passed. literal: run both as their graphs
    state, without the fused kernels that change the arithmetic (runtime.session)."""
    ref = runtime.session(reference, literal=literal)
    cand = runtime.session(candidate, literal=literal)
    ref_in = sorted((i.name, i.type) for i in ref.get_inputs())
    cand_in = sorted((i.name, i.type) for i in cand.get_inputs())
    if ref_in != cand_in:
        raise OnnxqError(f"the models take different inputs: {ref_in} vs {cand_in}")
    proto = load_proto(reference)
    specs = data.input_specs(proto)
    if inputs is not None:
        runs = data.read_samples(inputs, specs, "inputs file")
        what, real = f"{inputs} ({len(runs)} samples)", True
    else:
        plan = plan or synthetic_plan(proto, ref, specs, dims or {}, seed)
        runs = plan.feeds(samples, seed)
        what, real = f"random inputs: {plan.describe()}", False
    return validate_samples(
        ref, cand, specs, runs, what, real, Gates(min_cosine, min_sqnr, min_agreement), batch
    )


def validate_samples(
    ref: runtime.Session,
    cand: runtime.Session,
    specs: Sequence[InputSpec],
    samples: Sequence[Sample],
    what: str,
    real: bool,
    gates: Gates,
    batch: int = DEFAULT_BATCH,
) -> Validation:
    """Compare the sessions on samples, batch by batch, and judge the result."""
    runs = (feed for feed, _ in data.batches(samples, specs, batch))
    outputs, _ = compare_runs(ref, cand, runs, data.mask_input(specs), "validation inputs")
    result = Validation(
        inputs=what, samples=len(samples), real=real, shapes=data.shapes(samples), outputs=outputs
    )
    return judge(result, gates)
