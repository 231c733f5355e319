"""bench/time_breakdown.py on a tiny model: stages, operator groups, the docs block."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location(
        "bench_time_breakdown", ROOT / "bench" / "time_breakdown.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_operator_names_fall_into_the_expected_groups():
    tb = _module()
    assert tb.group_of("aten::addmm") == "linear GEMMs"
    assert tb.group_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert tb.group_of("aten::gelu") == "norms and activations"
    assert tb.group_of("aten::native_layer_norm") == "norms and activations"
    assert tb.group_of("aten::copy_") == "data movement"
    assert tb.group_of("aten::add") == "element-wise"
    assert tb.group_of("aten::something_new") == "other operators"


def test_breakdown_measures_a_model_and_writes_its_block(tiny_model_dir, tmp_path):
    tb = _module()
    docs = tmp_path / "BENCH.md"
    docs.write_text("# Bench\n\nkept\n")
    out = tmp_path / "tb.json"
    argv = ["--model", str(tiny_model_dir), "--numerics", "fp32", "--n", "40", "--repeat", "1"]
    assert tb.main([*argv, "--out", str(out), "--docs", str(docs)]) == 0
    r = json.loads(out.read_text())
    assert r["numerics"] == "fp32" and r["profiles"] == 40
    assert r["tokens_padded"] >= r["tokens_useful"] > 0
    assert all(v > 0 for v in r["wall_s"].values())
    assert r["operator_s"]["linear GEMMs"] > 0 and r["linear_flops"] > 0
    assert r["gemm_flops_per_s"] > 0 and r["gemm_peak_flops_per_s"] > 0
    text = docs.read_text()
    assert text.startswith("# Bench\n\nkept") and "<!-- breakdown:begin -->" in text
    assert "forward: linear GEMMs" in text and "of the best fp32 matmul" in text
