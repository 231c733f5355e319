"""Peer-engine adapters of the encoder benchmark (bench/peers.py) on a tiny random model.

Each adapter that can run here must give L2-normalised vectors close to plain
``SentenceTransformer.encode`` on the same folder; a peer whose package is absent is skipped. A
peer that cannot run must come back as a reason, never silently. No timing is asserted.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "passage: bio: hola from madrid | love food",
    "passage: bio: 📍 paris",
    "passage: bio: based in tokyo | post: coffee beach travel music gym " * 3,
    "passage: bio: x",
]


def _bench(name: str):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"bench.{name}")


@pytest.fixture(scope="module")
def st_dir(tiny_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers folder like models/default/encoder: Transformer, mean, Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    path = tmp_path_factory.mktemp("tiny_st")
    t = Transformer(str(tiny_base_dir), max_seq_length=24)
    model = SentenceTransformer(
        modules=[t, Pooling(t.get_embedding_dimension(), "mean"), Normalize()], device="cpu"
    )
    model.save(str(path))
    return path


@pytest.fixture(scope="module")
def reference(st_dir: Path) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(st_dir), device="cpu").encode(TEXTS)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("peer_exports")


def test_max_seq_length_and_pooling_read_from_the_folder(st_dir: Path) -> None:
    peers = _bench("peers")
    assert peers.max_seq_length(st_dir) == 24
    peers.check_pooling(st_dir)  # mean + normalize: accepted


# (peer, package that must import, least cosine to plain ST fp32 on the tiny random model)
RUNNABLE = [
    ("ort-fp32", "onnxruntime", 0.9999),
    ("ort-int8", "onnxruntime", 0.95),
    ("openvino-fp32", "openvino", 0.9999),
    ("openvino-auto", "openvino", 0.99),
    ("openvino-nncf-int8", "nncf", 0.9),
    ("ctranslate2-int8", "ctranslate2", 0.95),
    ("ctranslate2-int8_float32", "ctranslate2", 0.95),
]


def test_peer_names_never_shadow_our_numerics() -> None:
    # the bench runs both in one table keyed by name: a peer named like one of our numerics
    # replaced our row (it happened with ct2-int8)
    from embedder.numerics import NUMERICS

    peers = _bench("peers")
    assert not set(peers.PEERS) & set(NUMERICS)
    adopted = {p.adopted_as for p in peers.PEERS.values() if p.adopted_as}
    assert adopted <= set(NUMERICS)


@pytest.mark.parametrize(("name", "package", "least_cos"), RUNNABLE)
def test_peer_matches_sentence_transformers(
    name: str, package: str, least_cos: float, st_dir: Path, reference: np.ndarray, scratch: Path
) -> None:
    pytest.importorskip(package)
    peers = _bench("peers")
    encode = peers.PEERS[name].prepare(st_dir, scratch, 1, TEXTS * 4)
    v = encode(TEXTS)
    assert v.dtype == np.float32 and v.shape == reference.shape
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-3)
    assert (v * reference).sum(1).min() >= least_cos
    # order is kept whatever the length sort inside
    np.testing.assert_allclose(encode(TEXTS[::-1]), v[::-1], atol=2e-2)


def test_st_bf16_runs_or_says_why(st_dir: Path, reference: np.ndarray, scratch: Path) -> None:
    peers = _bench("peers")
    ok, failed = peers.prepare_peers(["st-bf16"], st_dir, scratch, 1, [])
    if peers.native_bf16():
        v = ok["st-bf16"][0](TEXTS)
        assert (v * reference).sum(1).min() > 0.98
    else:
        assert "no native bf16" in failed["st-bf16"]


def test_peers_that_cannot_run_give_a_reason(st_dir: Path, scratch: Path, monkeypatch) -> None:
    peers = _bench("peers")
    names = ["st-onnx", "st-onnx-int8", "st-openvino", "optimum-ort", "fastembed", "infinity"]
    for module in ("optimum", "optimum.onnxruntime", "optimum.intel", "fastembed", "infinity_emb"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as when not installed
    ok, failed = peers.prepare_peers(names, st_dir, scratch, 1, [])
    assert not ok and set(failed) == set(names)
    assert all(why.startswith("not installable here") for why in failed.values())


def test_a_peer_raising_is_reported_not_raised(st_dir: Path, scratch: Path, monkeypatch) -> None:
    peers = _bench("peers")

    def boom(*_args):
        raise RuntimeError("export exploded")

    monkeypatch.setitem(
        peers.PEERS, "ort-fp32", peers.Peer("ort-fp32", "ONNX Runtime", False, boom)
    )
    ok, failed = peers.prepare_peers(["ort-fp32"], st_dir, scratch, 1, [])
    assert not ok and "export exploded" in failed["ort-fp32"]


def test_summary_keeps_peers_out_of_the_choice_and_renders_them() -> None:
    enc = _bench("encoder_bench")
    truth = ["A", "B"] * 50
    good = np.tile(np.eye(2, dtype=np.float32), (50, 1))

    class Head:
        def predict(self, vectors):
            return [
                SimpleNamespace(argmax="AB"[int(v.argmax())], label="AB"[int(v.argmax())])
                for v in vectors
            ]

    def st(seconds):
        return {"n": 100, "seconds": seconds, "vectors": good, "prepare_s": 0.0}

    state = {
        "fp32": st(4.0),
        "onnx-int8": st(2.0),
        enc.ST_BASELINE: st(5.0),
        "ct2-int8": st(1.0),  # a peer, fastest: reported, never chosen
    }
    config = SimpleNamespace(hidden_size=2, intermediate_size=4, num_hidden_layers=1)
    model = SimpleNamespace(
        encoder=SimpleNamespace(
            transformer=SimpleNamespace(auto_model=SimpleNamespace(config=config))
        ),
        heads={"geolocation": Head()},
    )
    work = enc.Workload(["t"] * 100, [8] * 100, truth)
    out = enc.summarize(
        state, work, model, {"fp32": 1e9, "int8": 2e9}, "geolocation", 0.5, {"ct2-int8": True}
    )
    assert out["chosen"] == "onnx-int8" and "ct2-int8" not in out["variants"]
    peer = out["peers"]["ct2-int8"]
    assert peer["ratio_vs_ours"] == pytest.approx(2.0) and peer["peak_kind"] == "int8"
    assert out["variants"]["onnx-int8"]["ratio_vs_ours"] == pytest.approx(1.0)
    out.update(
        n=100,
        mean_tokens=8.0,
        max_seq_length=16,
        threads=2,
        peers_failed={"fastembed": "not installable here: reason"},
        peer_engines={"ct2-int8": "CTranslate2", "fastembed": "fastembed"},
    )
    r = {
        "machine": {
            "date": "d", "cpu_model": "cpu", "physical_cores": 2, "logical_cpus": 2,
            "cpu_flags": [], "load_average_1m": 0.0, "torch": "t", "onnxruntime": "o",
            "faiss": "f",
        },
        "model": "m", "embedding_version": "emb-x", "seconds": 1.0, "encoder": out,
        "command": ".venv/bin/python bench/run_all.py --sections encoder",
    }  # fmt: skip
    render = _bench("render")
    for text in (render.render(r), render.render_peers(r)):
        assert "| ct2-int8 | CTranslate2 |" in text
        assert "`fastembed` (fastembed): not installable here: reason" in text
        assert "vs fastest peer within budget (ct2-int8) | 0.50x" in text
    assert "--sections encoder" in render.render_peers(r)
    # a fastest peer whose engine is one of ours: the other form of the target
    out["peer_adopted_as"] = {"ct2-int8": "ct2"}
    text = render.render(r)
    assert "(ct2-int8, its engine adopted as our `ct2`) | 0.50x; 2.50x plain ST |" in text
    assert "with its engine adopted >= 2.5x plain ST | met |" in text
    assert "ct2-int8 = `ct2`" in render.render_peers(r)


def test_scaling_sweeps_the_served_numerics_and_the_adopted_engine_of_the_fastest_peer() -> None:
    run_all = _bench("run_all")
    enc = {
        "serving_choice": {"chosen": "bf16"},
        "peers": {
            "openvino-nncf-int8": {"profiles_per_s": 500.0, "within_budget": True},
            "ct2-int8": {"profiles_per_s": 400.0, "within_budget": True},
            "fast-but-wrong": {"profiles_per_s": 900.0, "within_budget": False},
        },
        "peer_adopted_as": {"openvino-nncf-int8": "openvino-int8"},
    }
    assert run_all.scaling_extra({"encoder": enc}) == ["bf16", "openvino-int8"]
    enc["peers"]["ct2-int8"]["profiles_per_s"] = 600.0  # fastest now, an engine we do not run
    assert run_all.scaling_extra({"encoder": enc}) == ["bf16"]
    assert run_all.scaling_extra({}) == []
