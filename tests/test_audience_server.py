"""Audience output surfaces: gRPC EstimateAudience, the batch job's rows and the CLI's methods."""

from __future__ import annotations

import grpc
import numpy as np
import pyarrow as pa
import pytest
from server_helpers import ServerThread, synthetic_profiles

from server._codegen import modules
from server.client import ProfileEmbeddingClient
from server.config import ServerConfig

pb2, _ = modules()


@pytest.fixture(scope="module")
def client(tiny_model):
    srv = ServerThread(ServerConfig(port=0, metrics_port=0, max_wait_ms=2), tiny_model)
    with ProfileEmbeddingClient(srv.target) as c:
        yield c
    srv.stop()


def test_estimate_audience_says_which_estimator_and_flags_low_evidence(client):
    followers = synthetic_profiles(30, seed=21)[0]
    est = client.audience(followers, method="guarded", n_bootstrap=10)
    assert est["method"] == "guarded" and est["used"] in ("guarded", "average")
    assert est["interval"] in ("followers+model", "followers+model+estimators")
    # 30 followers: under the 100 that the few_followers flag asks for
    assert "AUDIENCE_FLAG_FEW_FOLLOWERS" in est["flags"]
    diag = est["diagnostics"]
    assert set(diag["total_variation_to"]) >= {"em", "average", "acc"} - {est["used"]}
    assert 0.0 <= diag.get("label_shift_p_value", 0.0) <= 1.0
    assert sum(s.get("share", 0.0) for s in est["shares"]) == pytest.approx(1.0, abs=1e-6)
    for name in ("map", "fallback", "ensemble", "acc"):
        got = client.audience(followers[:12], method=name, n_bootstrap=4)
        assert got["method"] == name and got["used"], name
    # no method: the ensemble, since the tiny head recorded its prior and validation confusion
    default = client.audience(followers[:12], n_bootstrap=4)
    assert default["method"] == "ensemble" and default["used"] == "ensemble"
    # its intervals also hold its EM and ACC members' shares, and the response says so
    assert default["interval"].startswith("followers+model+members")


def test_estimate_audience_refuses_an_unknown_method_number(client):
    req = pb2.EstimateAudienceRequest(
        followers=[pb2.Profile(id="1", biography="hola")], method=99, n_bootstrap=2
    )
    with pytest.raises(grpc.RpcError) as err:
        client.stub.EstimateAudience(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "method" in err.value.details() and "99" in err.value.details()


def test_estimate_audience_refuses_a_follower_given_twice(client):
    # Counted twice, one follower would weigh double and narrow the intervals it gets.
    twice = pb2.EstimateAudienceRequest(
        followers=[pb2.Profile(id="f1", biography="hola"), pb2.Profile(id="f1", biography="hi")],
        n_bootstrap=2,
    )
    with pytest.raises(grpc.RpcError) as err:
        client.stub.EstimateAudience(twice)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'f1' is given twice (followers[0] and followers[1])" in err.value.details()
    across = pb2.EstimateAudienceRequest(
        follower_ids=["f1"], followers=[pb2.Profile(id="f1", biography="hola")], n_bootstrap=2
    )
    with pytest.raises(grpc.RpcError) as err:
        client.stub.EstimateAudience(across)
    assert "(follower_ids[0] and followers[0])" in err.value.details()
    empty = pb2.EstimateAudienceRequest(follower_ids=[""], n_bootstrap=2)
    with pytest.raises(grpc.RpcError) as err:
        client.stub.EstimateAudience(empty)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "follower_ids[0]" in err.value.details() and "non-empty" in err.value.details()
    # the server goes on serving
    once = client.audience(synthetic_profiles(3, seed=5)[0], method="average", n_bootstrap=2)
    assert once["n"] == 3


def test_batch_group_rows_carry_used_flags_and_interval(tiny_model):
    from heads.audience import head_audience_inputs
    from server.batch.audience_job import _estimate_group, _method_inputs

    head = tiny_model.heads["geolocation"]
    k = len(head.labels)
    probs = np.random.default_rng(0).dirichlet(np.ones(k), size=40)
    group = pa.table(
        {
            "influencer_id": ["inf-1"] * 40,
            "geolocation_probs": pa.array(list(probs), type=pa.list_(pa.float64())),
        }
    )
    inputs = _method_inputs(head, "guarded")
    assert set(inputs) == set(head_audience_inputs(head))
    out = _estimate_group(
        group,
        labels=list(head.labels),
        method="guarded",
        inputs=inputs,
        n_bootstrap=5,
        min_followers=1,
        seed=0,
        probs_col="geolocation_probs",
    ).to_pylist()[0]
    assert out["method"] == "guarded" and out["used"] in ("guarded", "average")
    assert "few_followers" in out["flags"]
    assert out["interval"] in ("followers+model", "followers+model+estimators")
    assert sum(out["shares"]) == pytest.approx(1.0)


def test_cli_method_choices_are_the_estimators():
    from heads.audience import METHODS
    from server.commands.audience import METHODS as CLI_METHODS

    assert CLI_METHODS == METHODS
