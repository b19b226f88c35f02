"""tools/bench.py: a tiny MatMul stack through the whole benchmark, its table, checks and section."""

from __future__ import annotations

import sys
from pathlib import Path

from conftest import TOOLS

import onnxq

sys.path.insert(0, str(TOOLS))
try:
    import bench
finally:
    sys.path.remove(str(TOOLS))


def test_bench_model_measures_every_format_and_renders_the_table(tmp_path):
    src = bench.build_stack(tmp_path / "tiny.onnx", vocab=64, dim=16, hidden=32, blocks=2)
    results = bench.bench_model(
        "tiny", src, list(onnxq.FORMATS), 5, tmp_path, seq=4, iterations=2, warmup=1, session_repeats=2
    )
    names = [m.variant.name for m in results.measurements] + [s.name for s in results.skips]
    assert sorted(names) == sorted(["float", *onnxq.FORMATS])
    assert results.measurements[0].variant.name == "float"
    for m in results.measurements:
        assert m.bytes > 0 and m.session_ms > 0 and set(m.latency_ms) == set(m.latency_cpu_ms) == {1, 8}
        # VmHWM bounds every RSS the child read; a tiny session may not raise RSS at all.
        assert m.baseline_rss_mb > 0 and 0 < m.rss_session_mb <= m.peak_rss_mb
        assert m.session_cpu_ms > 0 and 0 < m.trimmed_rss_mb <= m.peak_rss_mb + 1  # counters are approximate
    fold = next(m for m in results.measurements if m.variant.name == "fold")
    assert fold.variant.codebook == "exponential" and fold.variant.weights > 0

    table = bench.render_table(results.measurements)
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == bench.table_columns((1, 8))
    assert "b1 / float" in header and "peak RSS MB" in header
    assert len(table) == 2 + len(results.measurements)
    float_row = [c.strip() for c in table[2].strip("|").split("|")]
    assert float_row[:2] == ["tiny", "float"]
    assert float_row[header.index("b1 / float")] == "1.000"


def measurement(name: str, session_ms: float, b1_ms: float, weights: int = 0) -> bench.Measurement:
    variant = bench.Variant("efficientnet_lite0", name, Path(f"{name}.onnx"), weights=weights)
    latency = {1: b1_ms, 8: 8 * b1_ms}
    return bench.Measurement(variant, 1000, session_ms, session_ms, latency, 100.0, 120.0, 50.0, latency)


def test_checks_use_the_fold_row_against_float():
    rows = [measurement("float", 50.0, 10.0), measurement("fold", 150.0, 10.1, weights=4_000_000)]
    latency, session = bench.derive_checks(rows, bits=5)
    assert abs(latency.value - 1.01) < 1e-9 and latency
    assert session.value == 25.0 and session
    assert not bench.derive_checks(rows, bits=4)
    slow = [rows[0], measurement("fold", 250.0, 10.5, weights=4_000_000)]
    assert not any(bench.derive_checks(slow, bits=5))


def test_write_section_replaces_only_the_marked_block(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nkept\n")
    bench.write_section(results, "first")
    bench.write_section(results, "second")
    text = results.read_text()
    assert text.startswith("# Results\n\nkept\n")
    assert f"{bench.BEGIN}\nsecond\n{bench.END}" in text and "first" not in text


def test_a_format_that_cannot_compress_is_skipped_with_its_reasons(tmp_path):
    src = bench.build_stack(tmp_path / "tiny.onnx", vocab=64, dim=16, hidden=32, blocks=1)
    results = bench.compress_variants("tiny", src, ["nosuchformat"], 5, tmp_path)
    assert [m.variant.name for m in results.measurements] == ["float"]
    (skip,) = results.skips
    assert skip.name == "nosuchformat"
    assert all(f"{codebook}: " in skip.reason for codebook in bench.CODEBOOK_ORDER)


def test_format_bits_set_one_formats_width(tmp_path):
    src = bench.build_stack(tmp_path / "tiny.onnx", vocab=64, dim=16, hidden=32, blocks=1)
    results = bench.compress_variants("tiny", src, ["fold", "matmulnbits"], 5, tmp_path, {"matmulnbits": 4})
    widths = {m.variant.name: m.variant.bits for m in results.measurements}
    assert widths == {"float": None, "fold": 5, "matmulnbits": 4}
    assert not results.skips


def test_a_table_with_packed_rows_is_also_measured_folded_whole(tmp_path, monkeypatch):
    from onnxq.storage import fold

    monkeypatch.setattr(fold, "ROWS_MIN_ELEMENTS", 1000)
    src = bench.build_embedding(tmp_path / "emb.onnx", vocab=100, dim=32)
    results = bench.compress_variants("emb", src, ["fold"], 5, tmp_path)
    names = [m.variant.name for m in results.measurements]
    assert names == ["float", "fold", bench.WHOLE]
    packed, whole = results.measurements[1:]
    assert packed.variant.path != whole.variant.path and whole.variant.bits == 5
