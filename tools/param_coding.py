"""How many bits each group's parameters need: ImageNet-sample accuracy per coding of ln(x0) and ln(s).

    python tools/param_coding.py [--models efficientnet_lite0 mobilenet_v2_1.0_224]
        [--codings 6:10:0 6:8:0 6:8:9 4:8:9] [--bits 5] [--limit N]

A coding X:S:R stores ln(x0) on a per-tensor grid of 2^X points (over the middle 96%
of the groups' optima, each group taking the point that correlates best, as
onnxq/quantize.py does) and ln(s) on a uniform grid of 2^S - 1 codes (code 0 is
kept for all-zero groups) spanning [max - R, max] of the tensor's groups, or their
whole range when R is 0; a group below the span takes its bottom. Every weight
then takes its nearest level of the coded parameters. The codebook is exponential,
one per output channel, rounding is nearest, and the scale is least squares:
onnxq's defaults. `exact` instead of a coding keeps float64 parameters. The weights
are written back as float32 into a copy of the model, which runs in onnxruntime
on the images; nothing is packed, so the file sizes are not measured here.
Prints a Markdown table: top-1, top-1 agreement with the float model, and the
weight SQNR over the whole model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_compress import SHARED_MODELS, markdown_row
from imagenet import preset_for
from imagenet_eval import DEFAULT_IMAGES, load_images, predict_top5, score

from onnxq.quant.codebooks import CODEBOOKS
from onnxq.quant.search import SortedGroups, bin_index, level_magnitudes, maximize_correlation

MODELS = ["efficientnet_lite0", "mobilenet_v2_1.0_224"]
CODINGS = ["exact", "6:10:0", "6:8:0", "6:8:9", "5:8:9", "4:8:9"]
MIN_ELEMENTS = 128  # onnxq's default --min-elements


def parse_coding(text: str) -> tuple[int, int, float] | None:
    if text == "exact":
        return None
    try:
        x0_bits, scale_bits, span = text.split(":")
        coding = int(x0_bits), int(scale_bits), float(span)
    except ValueError:
        raise SystemExit(f"error: a coding is X:S:R (e.g. 6:8:9) or exact, not {text!r}") from None
    if not (1 <= coding[0] <= 16 and 2 <= coding[1] <= 16 and coding[2] >= 0):
        raise SystemExit(f"error: coding {text!r} needs 1 <= X <= 16, 2 <= S <= 16 and R >= 0")
    return coding


def _x0_codes(groups: SortedGroups, bits: int, optima: np.ndarray, x0_bits: int) -> np.ndarray:
    """Each group's ln(x0) on the tensor's grid: the grid point that correlates best."""
    codebook = CODEBOOKS["exponential"]
    lo, hi = np.percentile(optima, [2.0, 98.0])
    best_x, best_c = optima.copy(), np.full(optima.shape, -np.inf)
    for x in np.linspace(lo, hi, 1 << x0_bits):
        c = groups.correlation(level_magnitudes(codebook, np.full(optima.shape, x), bits))
        better = c > best_c
        best_x[better], best_c[better] = x, c[better]
    return best_x


def _scale_codes(log_s: np.ndarray, scale_bits: int, span: float) -> np.ndarray:
    top = log_s.max()
    bottom = max(log_s.min(), top - span) if span > 0 else log_s.min()
    if top == bottom:
        return log_s
    step = (top - bottom) / ((1 << scale_bits) - 2)
    return bottom + np.rint((np.maximum(log_s, bottom) - bottom) / step) * step


def quantize_rows(w: np.ndarray, bits: int, coding: tuple[int, int, float] | None) -> np.ndarray:
    """w (groups, n) rounded to its groups' exponential levels with coded parameters."""
    codebook = CODEBOOKS["exponential"]
    peak = np.abs(w).max(axis=1)
    live = peak > 0
    out = np.zeros_like(w)
    if not live.any():
        return out
    u = np.abs(w[live]) / peak[live, None]
    groups = SortedGroups(u)
    log_x0, _ = maximize_correlation(groups, codebook, bits)
    if coding is not None:
        log_x0 = _x0_codes(groups, bits, log_x0, coding[0])
    mags = level_magnitudes(codebook, log_x0, bits)
    y = np.take_along_axis(mags, bin_index(u, 0.5 * (mags[:, 1:] + mags[:, :-1])), axis=1)
    scale = np.einsum("ij,ij->i", u, y) / np.einsum("ij,ij->i", y, y) * peak[live]  # least squares
    log_s = np.log(scale)
    if coding is not None:
        log_s = _scale_codes(log_s, coding[1], coding[2])
    levels = mags * np.exp(log_s)[:, None]
    top = levels[:, -1:]
    index = bin_index(np.minimum(np.abs(w[live]) / top, 1.0), 0.5 * (levels[:, 1:] + levels[:, :-1]) / top)
    out[live] = np.take_along_axis(levels, index, axis=1) * np.sign(w[live])
    return out


def quantized_model(
    src: Path, bits: int, coding: tuple[int, int, float] | None
) -> tuple[onnx.ModelProto, float]:
    """A copy of the model with every float initializer of 2+ dims rounded; and the weight SQNR in dB."""
    model = onnx.load(str(src))
    signal = noise = 0.0
    for tensor in model.graph.initializer:
        a = numpy_helper.to_array(tensor)
        if a.dtype != np.float32 or a.ndim < 2 or a.size < MIN_ELEMENTS:
            continue
        w = a.reshape(a.shape[0], -1).astype(np.float64)
        q = quantize_rows(w, bits, coding)
        signal += float(np.sum(w * w))
        noise += float(np.sum((w - q) ** 2))
        tensor.CopyFrom(numpy_helper.from_array(q.reshape(a.shape).astype(np.float32), tensor.name))
    return model, 10 * np.log10(signal / noise)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--codings", nargs="+", default=CODINGS)
    parser.add_argument("--bits", type=int, default=5)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args(argv)
    codings = [(text, parse_coding(text)) for text in args.codings]
    print(
        markdown_row(
            ["model", "coding (x0 bits : scale bits : span)", "top-1", "agreement", "weight SQNR dB"]
        )
    )
    print(markdown_row(["---", "---", "---:", "---:", "---:"]))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            src = SHARED_MODELS / f"{name}.onnx"
            if not src.is_file():
                raise SystemExit(f"error: model {src} does not exist")
            prep = preset_for(name)
            x, labels = load_images(args.images, prep, args.limit)
            reference = predict_top5(src, x)
            for text, coding in codings:
                model, sqnr = quantized_model(src, args.bits, coding)
                path = Path(tmp) / f"{name}.onnx"
                onnx.save(model, str(path))
                s = score(predict_top5(path, x), labels, prep, reference)
                cells = [name, text, f"{s['top1']:.3f}", f"{s['agreement']:.3f}", f"{sqnr:.2f}"]
                print(markdown_row(cells), flush=True)


if __name__ == "__main__":
    main()
