"""Benchmark helpers: analytic FLOPs vs torch's counter, the marked-section writer, the choice."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"bench.{name}")


def test_encoder_flops_by_hand_and_against_torch_counter() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertModel

    flops = _bench("flops")
    # one layer, s=3, h=4, ffn=8: 2*3*(4*16 + 2*4*8) + 4*9*4 = 912
    assert flops.encoder_flops([3], hidden=4, ffn=8, layers=2) == 2 * 912
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=37,
        attn_implementation="eager",
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    counted = 0
    for s in (5, 17):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(input_ids=torch.randint(0, 50, (1, s)))
        counted += counter.get_total_flops()
    assert flops.config_flops(config, [5, 17]) == counted


def test_replace_section_keeps_hand_written_text(tmp_path) -> None:
    report = _bench("report")
    doc = f"# B\n\nhand\n\n{report.START}\nold\n{report.END}\n\n## gRPC\nkept\n"
    new = report.replace_section(doc, "| a |\n|---|\n| 1 |")
    assert new.startswith("# B\n\nhand\n\n") and new.endswith("\n\n## gRPC\nkept\n")
    assert "old" not in new and "| 1 |" in new
    assert report.replace_section(new, "| a |\n|---|\n| 1 |") == new
    appended = report.replace_section("# only\n", "x")
    assert appended == f"# only\n\n{report.START}\nx\n{report.END}\n"
    with pytest.raises(ValueError, match="marker"):
        report.replace_section(f"{report.END} {report.START}", "x")
    path = tmp_path / "B.md"
    path.write_text(doc)
    report.write_section(path, "fresh")
    assert "fresh" in path.read_text() and "kept" in path.read_text()


def test_chosen_is_the_fastest_within_the_accuracy_budget() -> None:
    enc = _bench("encoder_bench")
    truth = ["A", "B"] * 50
    good = np.tile(np.eye(2, dtype=np.float32), (50, 1))  # always right
    bad = good.copy()
    bad[:10] = bad[:10, ::-1]  # 10 % wrong

    class Head:
        def predict(self, vectors):
            return [
                SimpleNamespace(argmax="AB"[int(v.argmax())], label="AB"[int(v.argmax())])
                for v in vectors
            ]

    def st(vectors, seconds):
        return {"n": len(vectors), "seconds": seconds, "vectors": vectors, "prepare_s": 0.0}

    state = {
        "fp32": st(good, 4.0),
        "int8": st(bad, 1.0),  # fastest, 10 points worse
        "onnx-int8": st(good, 2.0),
        enc.ST_BASELINE: st(good, 5.0),
    }
    config = SimpleNamespace(hidden_size=2, intermediate_size=4, num_hidden_layers=1)
    model = SimpleNamespace(
        encoder=SimpleNamespace(
            transformer=SimpleNamespace(auto_model=SimpleNamespace(config=config))
        ),
        heads={"geolocation": Head()},
    )
    work = enc.Workload(["t"] * 100, [8] * 100, truth)
    peak = {"fp32": 1e9, "int8": 2e9}
    out = enc.summarize(state, work, model, peak, "geolocation", 0.5)
    v = out["variants"]
    assert out["chosen"] == "onnx-int8"
    assert v["int8"]["delta_accuracy"] == pytest.approx(-10.0) and not v["int8"]["within_budget"]
    assert v["onnx-int8"]["ratio_vs_st"] == pytest.approx(2.5)
    assert v["onnx-int8"]["peak_kind"] == "int8" and v["fp32"]["peak_kind"] == "fp32"
    assert "onnx-int8" in _bench("render").render(
        {
            "machine": {
                "date": "d", "cpu_model": "cpu", "physical_cores": 2, "logical_cpus": 2,
                "cpu_flags": [], "load_average_1m": 0.0, "torch": "t", "onnxruntime": "o",
                "faiss": "f",
            },
            "model": "m", "embedding_version": "emb-x", "seconds": 1.0,
            "encoder": {**out, "n": 100, "mean_tokens": 8.0, "max_seq_length": 16, "threads": 2},
        }
    )  # fmt: skip


def test_adversarial_reads_the_served_calls_latency_from_the_histogram_by_code() -> None:
    adversarial = _bench("adversarial")
    name = "profile_embed_request_seconds"
    text = "\n".join(
        [
            f'{name}_bucket{{code="OK",le="0.5",rpc="Predict"}} 1.0',
            f'{name}_bucket{{code="OK",le="1.0",rpc="Predict"}} 50.0',
            f'{name}_bucket{{code="OK",le="2.0",rpc="Predict"}} 99.0',
            f'{name}_bucket{{code="OK",le="+Inf",rpc="Predict"}} 100.0',
            f'{name}_bucket{{code="RESOURCE_EXHAUSTED",le="0.5",rpc="Predict"}} 700.0',
            f'{name}_bucket{{code="OK",le="0.5",rpc="Embed"}} 9.0',
        ]
    )
    served = adversarial._buckets(text, name, "OK", "Predict")
    assert served == {0.5: 1.0, 1.0: 50.0, 2.0: 99.0, float("inf"): 100.0}
    assert adversarial._bucket_quantile(served, 0.99) == 2.0
    assert adversarial._bucket_quantile(served, 0.5) == 1.0
    assert adversarial._bucket_quantile({}, 0.5) is None


def test_throughput_counts_only_answered_profiles_and_sends_shed_calls_again() -> None:
    """``bench/grpc_throughput.py`` once counted a shed call's profiles as served (a 6.7x
    "gRPC vs in-process" with 226 of 250 calls refused). Against a real gRPC server on
    127.0.0.1:0 that sheds the first two calls and refuses one request outright."""
    import asyncio

    import grpc

    gt = _bench("grpc_throughput")
    pb2, pb2_grpc = gt.pb2, gt.pb2_grpc

    class Flaky(pb2_grpc.ProfileEmbeddingServiceServicer):
        calls = 0

        async def Predict(self, request, context):
            Flaky.calls += 1
            if Flaky.calls <= 2:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full")
            if request.profiles[0].id == "bad":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad profile")
            return pb2.PredictResponse()

    async def main():
        server = grpc.aio.server()
        pb2_grpc.add_ProfileEmbeddingServiceServicer_to_server(Flaky(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            reqs = [
                pb2.PredictRequest(profiles=[pb2.Profile(id=f"{i}-{j}") for j in range(3)])
                for i in range(4)
            ]
            reqs.append(pb2.PredictRequest(profiles=[pb2.Profile(id="bad")]))
            return await gt.run_concurrent(f"127.0.0.1:{port}", reqs, "Predict", 1)
        finally:
            await server.stop(None)

    sent = asyncio.run(main())
    assert sent.shed == 2 and Flaky.calls == 7  # the shed call went again, twice
    assert sent.profiles == 12  # 4 answered calls of 3; the refused one counts nothing
    assert sent.errors == {"INVALID_ARGUMENT": 1} and len(sent.latencies) == 4
