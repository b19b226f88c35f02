"""How well the sensitivity measured by blocks (refine/blockwise.py) ranks a model's tensors
against the one session per tensor that it stands in for (refine/sensitivity.py).

    python tools/bench_sensitivity.py ../shared/models/efficientnet_lite0.onnx [--segments 8]

Each weight is quantized per channel (exponential codebook, lsq scale) at 4 and 5 bits; both
probes measure every weight's output noise at both widths on the same random inputs (fixed
shapes, symbolic ones set to 1), the block probe cut into about --segments segments. Prints, per
width, Spearman's rank correlation of the two measurements over the tensors, the median of
|log(block / tensor)|, and each probe's CPU seconds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx

from onnxq.data.samples import input_specs
from onnxq.graph.select import find_weights
from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.layout import float_rows, to_rows, to_weight
from onnxq.quant.quantize import quantize
from onnxq.refine import blockwise
from onnxq.refine.sensitivity import Probe

WIDTHS = (4, 5)


def feeds(model: onnx.ModelProto, count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    specs = input_specs(model)
    out = []
    for _ in range(count):
        out.append(
            {
                s.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in s.dims or ()]).astype(
                    s.dtype
                )
                for s in specs
            }
        )
    return out


def ranks(a: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(a)).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--segments", type=int, default=blockwise.PROBE_SEGMENTS)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = onnx.load(args.model)
    weights = [w for w in find_weights(model, 1024)[0] if w.constant_node is None and w.graph is model.graph]
    values = {}
    for w in weights:
        rows = float_rows(w)
        made = [
            np.ascontiguousarray(
                to_weight(w, to_rows(w, quantize(rows, CODEBOOKS["exponential"], b, "lsq").dequantized))
            )
            for b in WIDTHS
        ]
        values[w.name] = lambda made=made: made
    inputs = feeds(model, args.samples, args.seed)
    blockwise.PROBE_SEGMENTS = args.segments
    got = {}
    for name, kind in (("tensor", Probe), ("block", blockwise.BlockProbe)):
        start = time.process_time()
        probe = kind(model, weights, inputs)
        got[name] = probe.noises(values)
        extra = f", {len(probe.segments)} segments" if name == "block" else ""
        print(f"{name} probe: {time.process_time() - start:.1f} CPU-s{extra}")
    names = [n for n in got["tensor"] if n in got["block"] and all(v > 0 for v in got["tensor"][n])]
    print(f"{args.model}: {len(names)} tensors")
    for i, bits in enumerate(WIDTHS):
        a = np.array([got["tensor"][n][i] for n in names])
        b = np.array([got["block"][n][i] for n in names])
        rho = float(np.corrcoef(ranks(a), ranks(b))[0, 1])
        spread = float(np.median(np.abs(np.log(b / a))))
        print(f"{bits} bits: Spearman {rho:.3f}, median |log(block / tensor)| {spread:.3f}")


if __name__ == "__main__":
    main()
