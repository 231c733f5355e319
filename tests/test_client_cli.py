"""``profile-embed client``: the README's argument order, and one JSON shape with ``predict``.

A real server on 127.0.0.1:0 loads a saved tiny model folder, the same folder ``predict`` reads, so
the two commands answer for the same heads and their JSON lines can be compared field by field.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from server_helpers import ServerThread, synthetic_profiles

from server.cli import main
from server.config import ServerConfig

SAMPLE = Path(__file__).resolve().parents[1] / "embedder" / "data" / "sample_profiles.jsonl"


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory) -> Path:
    from heads.model import save_model

    heads = copy.deepcopy(tiny_model.heads)
    for head in heads.values():
        # Without the out-of-distribution guard, which refuses every row of this tiny random
        # model, some rows are assigned: both kinds of answer are compared below.
        head.ood_ = None
    path = tmp_path_factory.mktemp("client_cli") / "model"
    save_model(path, tiny_model.encoder, heads)
    return path


@pytest.fixture(scope="module")
def target(model_dir):
    srv = ServerThread(ServerConfig(model=model_dir, port=0, metrics_port=None))
    yield srv.target
    srv.stop()


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_options_may_come_before_or_after_the_input(target, capsys) -> None:
    # the README's form: options first, then the file
    assert main(["client", "predict", "--target", target, str(SAMPLE)]) == 0
    before = _lines(capsys.readouterr().out)
    assert main(["client", "predict", str(SAMPLE), "--target", target]) == 0
    after = _lines(capsys.readouterr().out)
    ids = [json.loads(line)["id"] for line in SAMPLE.read_text().splitlines() if line.strip()]
    assert [r["id"] for r in before] == ids and before == after
    assert main(["client", "embed", "--target", target, "--batch-size", "5", str(SAMPLE)]) == 0
    vectors = _lines(capsys.readouterr().out)
    assert [r["id"] for r in vectors] == ids and len(vectors[0]["embedding"]) == 32


def test_client_predict_prints_the_json_of_predict(model_dir, target, tmp_path, capsys) -> None:
    # profiles like the tiny heads' training rows (some assigned) and the sample (abstained)
    path = tmp_path / "in.jsonl"
    profiles, _, _ = synthetic_profiles(12, seed=23)
    lines = [json.dumps(p.to_dict()) for p in profiles] + SAMPLE.read_text().splitlines()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "local.jsonl"
    assert main(["predict", str(path), "-o", str(out), "--model", str(model_dir)]) == 0
    local = _lines(out.read_text())
    capsys.readouterr()
    bom = tmp_path / "bom.jsonl"  # as a Windows editor saves it
    bom.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert main(["client", "predict", "--target", target, str(bom)]) == 0
    assert len(_lines(capsys.readouterr().out)) == len(local)
    # "-o -" (and /dev/stdout, a README command) write the same lines to standard output
    assert main(["predict", str(path), "-o", "-", "--model", str(model_dir)]) == 0
    assert _lines(capsys.readouterr().out) == local
    assert main(["client", "predict", "--target", target, str(path)]) == 0
    remote = _lines(capsys.readouterr().out)
    assert len(remote) == len(local) > 0
    for mine, theirs in zip(local, remote, strict=True):
        assert list(theirs) == list(mine)  # id, then the heads in the same order
        for head in list(mine)[1:]:
            a, b = mine[head], theirs[head]
            assert list(b) == list(a)  # the same fields in the same order
            assert (b["label"], b["argmax"], b["reason"]) == (a["label"], a["argmax"], a["reason"])
            assert list(b["probabilities"]) == list(a["probabilities"])  # every label, in order
            # float32 on the wire: equal to the 6 decimals printed, give or take the last one
            assert b["score"] == pytest.approx(a["score"], abs=2e-6)
            for label, p in a["probabilities"].items():
                assert b["probabilities"][label] == pytest.approx(p, abs=2e-6)
    reasons = {rec[h]["reason"] for rec in local for h in list(rec)[1:]}
    assert None in reasons and len(reasons) > 1  # assigned and abstained rows both compared


def test_head_prediction_needs_every_label(target) -> None:
    from server.client import ProfileEmbeddingClient, head_prediction, pb2

    with ProfileEmbeddingClient(target) as client:
        labels = client.head_labels()["geolocation"]
        resp = client.stub.Predict(
            pb2.PredictRequest(profiles=[pb2.Profile(id="1", biography="paris")], top_k=2)
        )
    message = next(p for p in resp.results[0].predictions if p.head == "geolocation")
    with pytest.raises(ValueError, match=rf"2 labels, the head has {len(labels)}"):
        head_prediction(message, labels)
