"""The gRPC server in-process on 127.0.0.1:0: every RPC, error mapping, bad input, metrics."""

from __future__ import annotations

import copy
import re
import threading
import urllib.request

import grpc
import numpy as np
import pytest
from server_helpers import ServerThread, synthetic_profiles
from waiting import wait_for

from heads.base import ABSTAIN_REASONS
from server._codegen import modules
from server.client import ProfileEmbeddingClient, abstain_reason_name, to_message
from server.config import ServerConfig
from server.metrics import OUTCOMES, ServerMetrics
from server.service import abstain_reason_value

pb2, pb2_grpc = modules()
SERVICE = "/profile_embedding.v1.ProfileEmbeddingService/"


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    from embedder.cache import EmbeddingCache
    from embedder.index import SimilarityIndex

    tmp = tmp_path_factory.mktemp("server")
    enc = tiny_model.encoder
    config = ServerConfig(
        port=0,
        metrics_port=0,
        cache=tmp / "cache.sqlite",
        index=tmp / "index",
        max_profiles_per_request=64,
        max_queue=256,
        max_wait_ms=2,
    )
    cache = EmbeddingCache(config.cache, embedding_version=enc.embedding_version, dim=enc.dim)
    index = SimilarityIndex(enc.embedding_version, enc.dim)
    srv = ServerThread(config, tiny_model, cache=cache, index=index)
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    with ProfileEmbeddingClient(server.target) as c:
        yield c


def _raw(target: str, method: str, payload: bytes, resp_cls):
    with grpc.insecure_channel(target) as ch:
        call = ch.unary_unary(
            SERVICE + method, request_serializer=None, response_deserializer=resp_cls.FromString
        )
        return call(payload, timeout=30)


def _code(fn):
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def test_info_describes_encoder_heads_and_limits(client, tiny_model):
    info = client.info()
    assert info["embedding_version"] == tiny_model.encoder.embedding_version
    assert info["dim"] == tiny_model.encoder.dim
    heads = {h["name"]: h for h in info["heads"]}
    assert set(heads) == {"geolocation", "category"}
    geo = heads["geolocation"]
    assert geo["kind"] == "softmax_abstain" and len(geo["labels"]) == 37
    assert [c["label"] for c in geo["classes"]] == geo["labels"]
    assert info["limits"]["max_profiles_per_request"] == 64
    assert info["cache_enabled"] is True
    # the tiny model has no numerics.json: fp32, as fixed, and the server says so
    assert (info["numerics"], info["numerics_chosen_by"]) == ("fp32", "fixed")
    assert client.health() == "SERVING"


def test_embed_matches_in_process_encoder_and_hits_cache_second_time(client, tiny_model):
    profiles, _, _ = synthetic_profiles(12, seed=11)
    first = client.embed(profiles)
    expected = tiny_model.encoder.encode(profiles)
    np.testing.assert_allclose(first, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    req = pb2.EmbedRequest(profiles=[to_message(p) for p in profiles])
    resp = client.stub.Embed(req)
    assert all(e.cache_hit for e in resp.embeddings)
    assert [e.id for e in resp.embeddings] == [p.id for p in profiles]
    assert len(resp.embeddings[0].vector) == 4 * resp.dim


def test_predict_all_heads_matches_in_process_heads(client, tiny_model):
    profiles, _, _ = synthetic_profiles(6, seed=12)
    req = pb2.PredictRequest(
        profiles=[to_message(p) for p in profiles], top_k=3, include_embedding=True
    )
    resp = client.stub.Predict(req)
    assert resp.embedding_version == tiny_model.encoder.embedding_version
    assert dict(resp.head_versions) == {"geolocation": 1, "category": 1}
    emb = tiny_model.encoder.encode(profiles)
    local = {n: h.predict(emb) for n, h in tiny_model.heads.items()}
    for row, result in enumerate(resp.results):
        assert result.id == profiles[row].id
        assert len(result.embedding.vector) == 4 * resp.dim
        for p in result.predictions:
            want = local[p.head][row]
            assert p.argmax == want.argmax and p.abstained == want.abstained
            assert p.label == (want.label or "")
            assert p.abstain_reason == abstain_reason_value(want.reason)
            assert p.score == pytest.approx(want.score, abs=1e-5)
            assert len(p.top) == 3 and p.top[0].label == want.argmax


def test_predict_subset_of_heads(client):
    rows = client.predict([{"id": "a", "biography": "paris"}], heads=["category"])
    assert list(rows[0]["predictions"]) == ["category"]


def test_predict_stream_answers_every_item_and_survives_bad_ones(server):
    good = [to_message(p) for p in synthetic_profiles(5, seed=13)[0]]
    items = [
        pb2.PredictStreamRequest(profile=good[0]).SerializeToString(),
        pb2.PredictStreamRequest(profile=pb2.Profile(id="")).SerializeToString(),  # no id
        pb2.PredictStreamRequest(profile=good[1], heads=["nope"]).SerializeToString(),
        b"\x0a\x03\xed\xa0\x80",  # garbage: field 1 holds a lone-surrogate byte string
        pb2.PredictStreamRequest(profile=good[2], top_k=2).SerializeToString(),
        pb2.PredictStreamRequest(
            profile=pb2.Profile(id="big", biography="x" * 200_000)
        ).SerializeToString(),
        pb2.PredictStreamRequest(profile=good[3], heads=["geolocation"]).SerializeToString(),
    ]
    with grpc.insecure_channel(server.target) as ch:
        call = ch.stream_stream(
            SERVICE + "PredictStream",
            request_serializer=None,
            response_deserializer=pb2.PredictStreamResponse.FromString,
        )
        responses = sorted(call(iter(items), timeout=60), key=lambda r: r.index)
    assert [r.index for r in responses] == list(range(len(items)))
    status = [pb2.ItemStatus.Name(r.status) for r in responses]
    assert status == [
        "ITEM_STATUS_OK",
        "ITEM_STATUS_INVALID_ARGUMENT",
        "ITEM_STATUS_NOT_FOUND",
        "ITEM_STATUS_INVALID_ARGUMENT",
        "ITEM_STATUS_OK",
        "ITEM_STATUS_INVALID_ARGUMENT",
        "ITEM_STATUS_OK",
    ]
    assert responses[0].id == good[0].id and responses[0].result.id == good[0].id
    assert responses[2].id == good[1].id and "nope" in responses[2].error
    assert "stream[5]" in responses[5].error and "biography" in responses[5].error
    assert len(responses[4].result.predictions[0].top) == 2
    assert [p.head for p in responses[6].result.predictions] == ["geolocation"]


def test_predict_stream_many_items_through_client(client):
    profiles = synthetic_profiles(300, seed=14)[0]
    rows = list(client.predict_stream(profiles))
    assert len(rows) == 300
    assert sorted(r["index"] for r in rows) == list(range(300))
    assert all(r["status"] == "ITEM_STATUS_OK" for r in rows)
    assert {r["id"] for r in rows} == {p.id for p in profiles}


def test_upsert_and_search_by_profile_and_by_id(client):
    profiles = synthetic_profiles(20, seed=15)[0]
    size = client.upsert(profiles)
    assert size >= 20
    by_profile = client.search(profile=profiles[0], k=3)
    assert by_profile[0][0] == profiles[0].id
    assert by_profile[0][1] == pytest.approx(1.0, abs=1e-4)
    by_id = client.search(id=profiles[0].id, k=5)
    assert len(by_id) == 5 and profiles[0].id not in [i for i, _ in by_id]
    code, details = _code(lambda: client.search(id="no-such-id", k=3))
    assert code == grpc.StatusCode.NOT_FOUND and "no-such-id" in details
    # an empty id is a malformed request, not an id the index lacks
    code, details = _code(lambda: client.stub.SearchSimilar(pb2.SearchSimilarRequest(id="", k=3)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'id'" in details
    code, _ = _code(lambda: client.search(id=profiles[0].id, k=10**6))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_estimate_audience_from_profiles_and_indexed_ids(client):
    followers = synthetic_profiles(40, seed=16)[0]
    client.upsert(followers[:10])
    ids = [p.id for p in followers[:10]]
    est = client.audience(followers[10:], follower_ids=ids, method="average", n_bootstrap=50)
    assert est["n"] == 40 and est["head"] == "geolocation" and est["method"] == "average"
    shares = est["shares"]
    assert len(shares) == 37
    assert sum(s.get("share", 0.0) for s in shares) == pytest.approx(1.0, abs=1e-6)
    for s in shares:
        assert 0.0 <= s.get("lower", 0.0) <= s.get("share", 0.0) + 1e-9
        assert s.get("share", 0.0) <= s.get("upper", 0.0) + 1e-9 <= 1.0 + 1e-9
    default = client.audience(followers[:5], n_bootstrap=5)  # server default: the ensemble
    assert default["method"] == "ensemble" and default["n"] == 5
    code, _ = _code(lambda: client.audience(follower_ids=["missing"]))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(lambda: client.audience(followers[:2], head="nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = _code(lambda: client.audience(followers[:2], n_bootstrap=5000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


# ---------------------------------------------------------------------- error mapping + bad inputs
ODD_TEXTS = [
    "nul\x00inside",
    "\u202eRTL override",
    "👩‍👩‍👧‍👦 zwj family",
    "e\u0301\u0301\u0301 combining",
    "\ufeffbom \uffff noncharacter",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𐍈 4-byte",
    "\t\n\r whitespace only \u3000",
    "",
]


@pytest.mark.parametrize("text", ODD_TEXTS)
def test_odd_but_valid_unicode_is_served(client, text):
    rows = client.predict([{"id": "odd", "biography": text, "captions": [text, text]}])
    assert rows[0]["id"] == "odd"
    assert client.info()["dim"] > 0


def _profiles(n, **fields):
    return [pb2.Profile(id=f"i{i}", **fields) for i in range(n)]


BAD_REQUESTS = [
    ("empty request", pb2.PredictRequest().SerializeToString(), "at least 1"),
    ("empty id", pb2.PredictRequest(profiles=[pb2.Profile()]).SerializeToString(), "'id'"),
    ("10k items", pb2.PredictRequest(profiles=_profiles(10_000)).SerializeToString(), "10,000"),
    (
        "huge bio",
        pb2.PredictRequest(
            profiles=[*_profiles(3), pb2.Profile(id="x", biography="b" * 150_001)]
        ).SerializeToString(),
        "profiles[3], field 'biography'",
    ),
    (
        "huge caption",
        pb2.PredictRequest(
            profiles=[pb2.Profile(id="x", captions=["ok", "c" * 100_001])]
        ).SerializeToString(),
        "captions[1]",
    ),
    (
        "too many captions",
        pb2.PredictRequest(
            profiles=[pb2.Profile(id="x", captions=["c"] * 101)]
        ).SerializeToString(),
        "captions",
    ),
    (
        "huge id",
        pb2.PredictRequest(profiles=[pb2.Profile(id="i" * 600)]).SerializeToString(),
        "'id'",
    ),
    ("lone surrogate", b"\x0a\x08\x0a\x01a\x22\x03\xed\xa0\x80", "valid UTF-8"),
    # Profile.id sent as a varint: protobuf keeps it as an unknown field, so the id is empty.
    ("wrong wire type", b"\x0a\x02\x08\x05", "'id'"),
    ("length overrun", b"\x0a\x05\x01", "not a valid"),
    (
        "truncated",
        pb2.PredictRequest(profiles=_profiles(2)).SerializeToString()[:-1],
        "not a valid",
    ),
    ("garbage", bytes(range(256)), "not a valid"),
]


@pytest.mark.parametrize("name,payload,needle", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_invalid_argument_and_server_keeps_serving(server, name, payload, needle):
    code, details = _code(lambda: _raw(server.target, "Predict", payload, pb2.PredictResponse))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert needle in details
    with ProfileEmbeddingClient(server.target) as c:
        assert c.predict([{"id": "after", "biography": "paris"}])[0]["id"] == "after"


def test_unknown_head_is_not_found(client):
    code, details = _code(lambda: client.predict([{"id": "a"}], heads=["geolocation", "nope"]))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "'nope'" in details and "geolocation" in details


def test_message_over_the_size_limit_is_rejected(server):
    payload = pb2.EmbedRequest(profiles=[pb2.Profile(id="x", biography="b" * 90_000)] * 800)
    code, _ = _code(
        lambda: _raw(server.target, "Embed", payload.SerializeToString(), pb2.EmbedResponse)
    )
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_metrics_endpoint_counts_requests_batches_cache_and_abstentions(server, client):
    client.predict([{"id": "m", "biography": "tokyo"}])
    port = server.running.metrics.port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for name in (
        'profile_embed_requests_total{code="OK",rpc="Predict"}',
        'profile_embed_request_seconds_bucket{code="OK",le="0.001",rpc="Predict"}',
        'profile_embed_requests_total{code="INVALID_ARGUMENT",rpc="Predict"}',
        "profile_embed_batch_profiles_count",
        "profile_embed_queue_depth",
        "profile_embed_queue_delay_estimate_seconds",
        "profile_embed_cache_hit_ratio",
        "profile_embed_head_predictions_total{argmax=",
    ):
        assert name in text, name
    # The queue is empty once the call is answered, so nothing is estimated to wait.
    delay = re.search(r"^profile_embed_queue_delay_estimate_seconds (\S+)$", text, re.M)
    assert delay is not None and float(delay.group(1)) == 0.0


def _head_prediction_counts(port):
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "profile_embed_head_predictions":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    key = (sample.labels["head"], sample.labels["argmax"], sample.labels["outcome"])
                    out[key] = sample.value
    return out


def _expected_reason(probs, thresholds, in_distribution):
    i = int(probs.argmax())
    if not in_distribution:
        return "out_of_distribution"
    if np.isinf(thresholds[i]):
        return "no_threshold_for_class"
    return "below_threshold" if probs[i] < thresholds[i] else None


def test_abstain_reasons_reach_predict_stream_clients_and_metrics(tiny_model, tmp_path, capsys):
    """Every reason, from one head's thresholds and out-of-distribution check, on every path."""
    import json
    from collections import Counter

    from embedder.profile import Profile
    from server.cli import main

    cities = ("paris", "lyon", "berlin", "tokyo", "madrid", "london", "rio", "seoul")
    profiles = [Profile(id=c, biography=f"based in {c}", captions=(c,)) for c in cities]
    profiles += [Profile(id=f"far{i}", biography=f"{c} coffee") for i, c in enumerate(cities)]
    emb = tiny_model.encoder.encode(profiles)
    refused = emb[-4:]  # the last four profiles are "out of distribution"
    # the tiny category head spreads its argmax best: its thresholds make every reason appear
    head = copy.deepcopy(tiny_model.heads["category"])
    classes = list(dict.fromkeys(head.predict_proba(emb[:-4]).argmax(1)))
    assert len(classes) >= 3, classes
    thr = np.zeros(len(head.labels))
    thr[classes[0]] = np.inf  # never assigns
    thr[classes[1]] = 1.01  # finite, above every probability
    head.thresholds_ = thr
    head.in_distribution = lambda e: (
        np.abs(e[:, None, :] - refused[None, :, :]).max(axis=2).min(axis=1) > 1e-4
    )
    model = copy.copy(tiny_model)
    model.heads = {**tiny_model.heads, "category": head}
    # every head answers with its own guard (the tiny heads fit one at calibration)
    masks = {name: h.in_distribution(emb) for name, h in model.heads.items()}
    inside = {n: np.ones(len(emb), bool) if m is None else m for n, m in masks.items()}
    probs = {name: h.predict_proba(emb) for name, h in model.heads.items()}
    argmax = {n: [model.heads[n].labels[int(i)] for i in p.argmax(1)] for n, p in probs.items()}
    want = {
        name: [
            _expected_reason(p, model.heads[name].thresholds_, ok)
            for p, ok in zip(probs[name], inside[name], strict=True)
        ]
        for name in model.heads
    }
    assert set(want["category"]) == {None, *ABSTAIN_REASONS}  # the data covers every outcome
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in profiles))
    srv = ServerThread(ServerConfig(port=0, metrics_port=0, max_wait_ms=2), model)
    try:
        with ProfileEmbeddingClient(srv.target) as c:
            resp = c.stub.Predict(pb2.PredictRequest(profiles=[to_message(p) for p in profiles]))
            rows = c.predict(profiles)
            stream = list(c.predict_stream(profiles))
        capsys.readouterr()
        assert main(["client", "predict", str(path), "--target", srv.target]) == 0
        cli = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        counts = _head_prediction_counts(srv.running.metrics.port)
    finally:
        srv.stop()
    assert [r["id"] for r in cli] == [p.id for p in profiles]
    for row, (result, d, s, rec) in enumerate(zip(resp.results, rows, stream, cli, strict=True)):
        for p in result.predictions:
            reason = want[p.head][row]
            assert abstain_reason_name(p.abstain_reason) == reason
            assert p.abstained is (reason is not None) and p.argmax == argmax[p.head][row]
            assert p.label == ("" if reason else argmax[p.head][row])
            dicts = (d["predictions"], s["predictions"], rec.get("predictions", rec))
            for got in (x[p.head] for x in dicts):
                assert (got["label"], got["reason"]) == (p.label or None, reason)
    expected = Counter()
    for head, reasons in want.items():
        for label, reason in zip(argmax[head], reasons, strict=True):
            expected[(head, label, reason or "assigned")] += 4  # Predict, client, stream, CLI
    assert {k: v for k, v in counts.items() if v} == dict(expected)
    # every series exists from the start (0 until counted), and no others: labels x outcomes
    for name, head in model.heads.items():
        keys = {k for k in counts if k[0] == name}
        assert keys == {(name, lab, o) for lab in head.labels for o in OUTCOMES}


def test_abstain_reason_enum_covers_every_reason():
    assert len(pb2.AbstainReason.keys()) == len(ABSTAIN_REASONS) + 1
    for reason in ABSTAIN_REASONS:
        assert abstain_reason_value(reason) != pb2.ABSTAIN_REASON_UNSPECIFIED
        assert abstain_reason_name(abstain_reason_value(reason)) == reason
    assert abstain_reason_value(None) == pb2.ABSTAIN_REASON_UNSPECIFIED
    assert abstain_reason_name(pb2.ABSTAIN_REASON_UNSPECIFIED) is None
    assert abstain_reason_name(99) == "abstain_reason_99"  # a newer server's reason
    with pytest.raises(ValueError, match=r"'too_far' has no AbstainReason value; defined: \["):
        abstain_reason_value("too_far")
    with pytest.raises(ValueError, match="'too_far' is not one of"):
        ServerMetrics().observe_predictions("geolocation", ["FR"], ["too_far"])


# ---------------------------------------------------------------------- server states and faults
class _ExplodingHead:
    """A head whose predict fails with a message that must never reach the caller."""

    def __init__(self, head):
        self._head = head

    def __getattr__(self, name):
        return getattr(self._head, name)

    def predict(self, embeddings):
        raise RuntimeError("secret profile text: based in paris")


def test_unexpected_error_is_internal_with_an_id_and_no_raw_text(tiny_model, caplog):
    model = copy.copy(tiny_model)
    model.heads = {
        **tiny_model.heads,
        "geolocation": _ExplodingHead(tiny_model.heads["geolocation"]),
    }
    srv = ServerThread(ServerConfig(port=0, metrics_port=None), model)
    try:
        with ProfileEmbeddingClient(srv.target) as c:
            code, details = _code(lambda: c.predict([{"id": "a"}]))
            assert code == grpc.StatusCode.INTERNAL
            assert "secret" not in details and "internal error (id " in details
            assert c.predict([{"id": "a"}], heads=["category"])[0]["id"] == "a"
    finally:
        srv.stop()


def test_not_ready_is_unavailable_and_health_not_serving():
    srv = ServerThread(ServerConfig(port=0, metrics_port=None), None, load=False)
    try:
        with ProfileEmbeddingClient(srv.target) as c:
            assert c.health() == "NOT_SERVING"
            code, details = _code(lambda: c.predict([{"id": "a"}]))
            assert code == grpc.StatusCode.UNAVAILABLE and "loading" in details
            code, _ = _code(c.info)
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()


def test_full_queue_is_resource_exhausted(tiny_model):
    config = ServerConfig(
        port=0,
        metrics_port=None,
        max_queue=8,
        max_profiles_per_request=8,
        max_wait_ms=0,
        max_batch_profiles=64,
    )
    srv = ServerThread(config, tiny_model)
    batcher = srv.running.servicer.runtime.batcher
    gate = threading.Event()
    encode = batcher._encode
    batcher._encode = lambda texts: (gate.wait(30), encode(texts))[1]  # a pass that waits
    try:
        with ProfileEmbeddingClient(srv.target) as c:
            running = c.stub.Embed.future(
                pb2.EmbedRequest(profiles=_profiles(1, biography="tokyo")), timeout=30
            )
            wait_for(lambda: batcher._slots.locked(), "the first request's pass runs")
            first = c.stub.Embed.future(
                pb2.EmbedRequest(profiles=_profiles(8, biography="paris")), timeout=30
            )
            wait_for(lambda: batcher.queue_depth == 8, "the second request fills the queue")
            code, details = _code(
                lambda: c.stub.Embed(pb2.EmbedRequest(profiles=_profiles(1, biography="lyon")))
            )
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue is full" in details
            gate.set()
            assert len(running.result().embeddings) == 1
            assert len(first.result().embeddings) == 8
            assert c.embed([{"id": "later"}]).shape[0] == 1
    finally:
        gate.set()
        srv.stop()


def test_without_index_search_is_failed_precondition_not_a_retry(tiny_model):
    # UNAVAILABLE would send clients' retry policies into retrying a call that cannot succeed.
    srv = ServerThread(ServerConfig(port=0, metrics_port=None), tiny_model)
    try:
        with ProfileEmbeddingClient(srv.target) as c:
            code, details = _code(lambda: c.search(id="x"))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "--index" in details
            code, details = _code(lambda: c.upsert([{"id": "a", "biography": "paris"}]))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "--index" in details
    finally:
        srv.stop()


def test_cache_hits_follow_content_not_ids(client):
    base = {"id": "c1", "biography": "berlin coffee", "captions": ["gym"]}
    same_text_other_id = {**base, "id": "c2"}
    changed = {**base, "id": "c3", "captions": ["gym", "beach"]}

    def hits(profiles):
        req = pb2.EmbedRequest(profiles=[to_message(p) for p in profiles])
        return [e.cache_hit for e in client.stub.Embed(req).embeddings]

    assert hits([base]) == [False]
    assert hits([same_text_other_id, changed]) == [True, False]
    vectors = client.embed([base, same_text_other_id, changed])
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert not np.allclose(vectors[0], vectors[2])


def test_sqlite_cache_alone_serves_hits(tiny_model, tmp_path):
    from embedder.cache import EmbeddingCache

    enc = tiny_model.encoder
    config = ServerConfig(port=0, metrics_port=None, cache=tmp_path / "c.sqlite", memory_cache=0)
    cache = EmbeddingCache(config.cache, embedding_version=enc.embedding_version, dim=enc.dim)
    srv = ServerThread(config, tiny_model, cache=cache)
    try:
        with ProfileEmbeddingClient(srv.target) as c:
            req = pb2.EmbedRequest(profiles=[pb2.Profile(id="s", biography="lyon")])
            assert [e.cache_hit for e in c.stub.Embed(req).embeddings] == [False]
            assert [e.cache_hit for e in c.stub.Embed(req).embeddings] == [True]
    finally:
        srv.stop()


def test_warm_up_profiles_are_the_simulators_warm_up_stream():
    from embedder.simulator.core import simulate_profiles
    from server.app import WARM_UP_PROFILES, WARM_UP_STREAM, warm_up_profiles

    shipped = warm_up_profiles()
    simulated = [r.profile for r in simulate_profiles(WARM_UP_PROFILES, 0, stream=WARM_UP_STREAM)]
    assert len(shipped) == WARM_UP_PROFILES
    # Compared field by field (a Profile's ``extra`` is left out of equality; the file has none).
    fields = ("id", "username", "full_name", "biography", "captions")
    assert [[getattr(p, f) for f in fields] for p in shipped] == [
        [getattr(p, f) for f in fields] for p in simulated
    ], "server/data/warm_up_profiles.jsonl is stale: rewrite it from simulate_profiles"


def test_warm_up_does_not_load_the_simulator():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "from server.app import warm_up_texts\n"
        "texts = warm_up_texts(lambda ps: [p.biography + ' '.join(p.captions) for p in ps])\n"
        "print(len(texts), any(m.startswith('embedder.simulator') for m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["32", "False"]
