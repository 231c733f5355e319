"""Adapting to a user's labels: train-head's solver and cross-fitting, a new task, calibrate."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from embedder.data import LabelledProfile, write_profiles
from embedder.profile import Profile
from heads.registry import build_head

CITIES = {"FR": "paris lyon", "BR": "são paulo rio", "JP": "tokyo osaka", "DE": "berlin köln"}
MOODS = {"positive": "love it great", "negative": "awful hate it"}


def _blobs(n: int, k: int, d: int = 16, *, sep: float = 1.2, seed: int = 0):
    """Gaussian classes with unequal sizes and overlap (so regularisation and priors matter)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * sep
    p = np.linspace(3, 1, k) / np.linspace(3, 1, k).sum()
    y = rng.choice(k, size=n, p=p)
    x = centres[y] + rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), y


def _head(k: int, d: int = 16):
    return build_head(
        "softmax_abstain",
        name="t",
        labels=tuple(f"c{i}" for i in range(k)),
        embedding_version="emb-test",
        in_dim=d,
    )


def test_lbfgs_head_is_as_accurate_as_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = _blobs(900, 6, seed=1)
    xt, yt = _blobs(3000, 6, seed=1)
    tr, va = slice(0, 600), slice(600, 900)
    head = _head(6).fit(x[tr], y[tr], val_embeddings=x[va], val_labels=y[va], class_weight=None)
    ours = float((head.predict_proba(xt).argmax(1) == yt).mean())
    ref = LogisticRegression(max_iter=2000).fit(x[tr], y[tr])
    theirs = float((ref.predict(xt) == yt).mean())
    from heads.softmax import L2_GRID

    assert head.fit_info_["solver"] == "lbfgs" and head.fit_info_["l2"] in L2_GRID
    assert ours >= theirs - 0.005, (ours, theirs)


def test_validation_path_stops_past_the_best_penalty_and_keeps_its_fit():
    """The L2 path stops after two rises of the held-out loss in a row, chooses what the whole
    grid would have chosen, and the head carries the path's fit of that penalty."""
    import heads.softmax as softmax

    # few, overlapping rows in 32 dimensions: weak penalties overfit, so the path turns
    x, y = _blobs(700, 6, d=32, sep=0.3, seed=3)
    mean, scale = x[:400].mean(0), x[:400].std(0)
    xs, vs, w = (x[:400] - mean) / scale, (x[400:] - mean) / scale, np.ones(6)
    full = softmax._path_log_loss(xs, y[:400], 6, w, vs, y[400:], stop_after_rises=None)
    fitted: dict = {}
    short = softmax._path_log_loss(xs, y[:400], 6, w, vs, y[400:], fitted=fitted)
    assert list(full) == list(softmax.L2_GRID) and len(short) < len(full)
    assert short == {lam: full[lam] for lam in short}  # the same fits, in the same order
    a, b, c = list(short.values())[-3:]
    assert a < b < c  # it stopped on the second rise in a row
    best = min(full, key=lambda lam: (full[lam], -lam))
    assert min(short, key=lambda lam: (short[lam], -lam)) == best
    assert set(fitted) == set(short)
    head = _head(6, d=32).fit(
        x[:400], y[:400], val_embeddings=x[400:], val_labels=y[400:], class_weight=None
    )
    assert head.fit_info_["l2"] == best
    assert head.fit_info_["l2_scores"] == {str(lam): round(v, 6) for lam, v in short.items()}
    # the head's weights are the path's fit of that penalty, folded onto raw inputs
    wf, bf = fitted[best]
    layer = head.logits_module()[0]
    np.testing.assert_allclose(
        layer.weight.detach().numpy(), wf / scale[None, :], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        layer.bias.detach().numpy(), bf - (wf / scale[None, :]) @ mean, rtol=1e-4, atol=1e-5
    )


def test_standardisation_is_folded_into_the_saved_weights(tmp_path):
    from heads.registry import load_head

    x, y = _blobs(300, 3, seed=2)
    head = _head(3).fit(x, y, val_embeddings=x[:100], val_labels=y[:100])
    loaded = load_head(head.save(tmp_path / "t" / "v1"))
    np.testing.assert_allclose(loaded.predict_proba(x), head.predict_proba(x), atol=1e-5)


def test_fit_with_class_bias_calibrates_as_calibrate_does():
    """``fit(class_bias=True)`` (the build's ``refit_class_bias``) fits the same temperature and
    biases as a temperature-only fit followed by ``calibrate(class_bias=True)`` on the same rows."""
    x, y = _blobs(700, 3, seed=5)
    mostly_c2 = np.concatenate([np.flatnonzero(y[400:] == 2), np.flatnonzero(y[400:] != 2)[:20]])
    xv, yv = x[400:][mostly_c2], y[400:][mostly_c2]
    kw = {"val_embeddings": xv, "val_labels": yv, "class_weight": None, "l2": 1e-2}
    once = _head(3).fit(x[:400], y[:400], class_bias=True, **kw)
    twice = _head(3).fit(x[:400], y[:400], **kw)
    assert twice.class_bias_ is None
    twice.calibrate(xv, yv, class_bias=True)
    assert once.class_bias_ is not None and once.class_bias_.argmax() == 2
    np.testing.assert_allclose(once.class_bias_, twice.class_bias_, atol=1e-6)
    assert once.temperature_ == pytest.approx(twice.temperature_, abs=1e-6)
    np.testing.assert_array_equal(once.thresholds_, twice.thresholds_)


def test_class_bias_is_refused_for_knn_heads():
    from embedder.errors import InvalidInputError
    from heads.training.head import check_kind_options

    check_kind_options("softmax_abstain", ["class_bias"])
    with pytest.raises(InvalidInputError, match="class_bias"):
        check_kind_options("knn", ["class_bias"])


@pytest.mark.parametrize("kind", ["softmax_abstain", "knn"])
def test_class_biases_survive_save_and_load_for_every_kind(kind, tmp_path):
    from heads.registry import load_head

    x, y = _blobs(600, 3, seed=4)
    head = build_head(
        kind, name="t", labels=("c0", "c1", "c2"), embedding_version="emb-test", in_dim=16
    )
    head.fit(x[:300], y[:300], val_embeddings=x[300:400], val_labels=y[300:400])
    mostly_c2 = np.concatenate([np.flatnonzero(y[400:] == 2), np.flatnonzero(y[400:] != 2)[:20]])
    head.calibrate(x[400:][mostly_c2], y[400:][mostly_c2], class_bias=True)
    assert head.class_bias_ is not None and head.class_bias_.argmax() == 2
    loaded = load_head(head.save(tmp_path / kind / "v1"))
    np.testing.assert_allclose(loaded.class_bias_, head.class_bias_)
    np.testing.assert_allclose(loaded.predict_proba(x), head.predict_proba(x), atol=1e-6)


def test_cross_fit_lets_a_small_validation_set_prove_precision():
    x, y = _blobs(1200, 4, sep=2.5, seed=3)
    small = slice(1000, 1040)  # 40 validation rows: too few to prove 90% for any class
    plain = _head(4).fit(x[:1000], y[:1000], val_embeddings=x[small], val_labels=y[small])
    crossed = _head(4).fit(
        x[:1000], y[:1000], val_embeddings=x[small], val_labels=y[small], cross_fit=5
    )
    assigning = lambda h: int(np.isfinite(h.thresholds_).sum())  # noqa: E731
    assert assigning(plain) < assigning(crossed)
    assert crossed.calibration_["n_val"] == 1040
    # and the thresholds keep their promise on new rows
    xt, yt = _blobs(4000, 4, sep=2.5, seed=3)
    pred = crossed.predict(xt)
    got = np.array([p.label is not None for p in pred])
    right = np.array([p.label == f"c{t}" for p, t in zip(pred, yt, strict=True)])
    assert got.mean() > 0.3 and right[got].mean() >= 0.9


def _rows(n: int, seed: int, *, noisy: str | None = None, noise: float = 0.0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        c, m = rng.choice(sorted(CITIES)), rng.choice(sorted(MOODS))
        label = c
        if c == noisy and rng.random() < noise:
            label = rng.choice([k for k in sorted(CITIES) if k != c])
        p = Profile(
            id=f"{seed}-{i}", biography=CITIES[c], captions=(MOODS[m],), extra={"sentiment": m}
        )
        out.append(LabelledProfile(p, {"country": label}))
    return out


@pytest.fixture(scope="module")
def model_dir(encoder_only_model_dir, tmp_path_factory) -> Path:
    """A model whose geolocation head was trained (train-head) on clean rows."""
    from conftest import copy_model_dir

    from server.cli import main

    path = copy_model_dir(encoder_only_model_dir, tmp_path_factory.mktemp("m") / "model")
    d = tmp_path_factory.mktemp("d")
    write_profiles(d / "train.jsonl", _rows(200, 1))
    write_profiles(d / "val.jsonl", _rows(100, 2))
    args = ["train-head", "--model", str(path), "--head", "geolocation", "--cache", ""]
    assert main([*args, "--train", str(d / "train.jsonl"), "--val", str(d / "val.jsonl")]) == 0
    return path


def test_calibrate_holds_the_target_on_held_out_rows_of_that_data(
    model_dir, tmp_path, capsys, caplog
):
    """BR's labels are 40% wrong in the user's data: after calibrating on one part, what the head
    assigns on another part is >= 90% right, and the encoder version does not move."""
    import logging

    from heads.model import ProfileModel
    from server.cli import main

    capsys.readouterr()
    caplog.set_level(logging.INFO)
    user = _rows(600, 7, noisy="BR", noise=0.4)
    write_profiles(tmp_path / "cal.jsonl", user[:400])
    before = ProfileModel.load(model_dir)
    args = ["calibrate", "--model", str(model_dir), "--data", str(tmp_path / "cal.jsonl")]
    assert main([*args, "--cache", ""]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["head_version"] == 3 and summary["from_head_version"] == 2
    assert summary["embedding_version"] == before.embedding_version
    # BR cannot hold 90% on this data; clean classes can (one global temperature, fitted on the
    # noisy rows too, may still keep some of them from proving it)
    assert "BR" not in summary["assigning_classes"] and len(summary["assigning_classes"]) >= 2
    # the log speaks of the head that is written, not of the held-out estimate's fold copies
    unreachable = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(unreachable) == 1, unreachable
    named = set(unreachable[0].rsplit(": ", 1)[1].split(", "))
    assert "BR" in named and not named & set(summary["assigning_classes"])
    after = ProfileModel.load(model_dir)
    head = after.head("geolocation")
    assert head.head_version == 3 and after.embedding_version == before.embedding_version
    assert head.fit_info_["recalibrated"]["rows"] == 400
    # the held-out estimate keeps the promise too (BR's noisy labels cannot assign)
    held = summary["held_out"]
    assert held["own_label_precision"] >= 0.9 and 0.1 < held["coverage"] <= 1.0
    held = user[400:]
    preds = after.predict([r.profile for r in held])["geolocation"]
    got = [(p.label, r.labels["country"]) for p, r in zip(preds, held, strict=True) if p.label]
    assert len(got) > 50 and np.mean([a == b for a, b in got]) >= 0.9
    # classes absent from the data assign nothing by default
    assert math.isinf(head.thresholds_[list(head.labels).index("US")])


def _cue_free(n: int, seed: int, mix: dict[str, float]):
    """Profiles with only a mood caption, labelled by ``mix``: only a prior can place them."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(list(mix), size=n, p=list(mix.values()))
    return [
        LabelledProfile(
            Profile(id=f"cf{seed}-{i}", captions=(MOODS[sorted(MOODS)[i % 2]],)),
            {"country": str(c)},
        )
        for i, c in enumerate(labels)
    ]


def test_calibrate_fits_class_biases_to_the_data_label_mix(model_dir, tmp_path, capsys):
    """A user's profiles without cues come mostly from Japan: the class biases move the argmax
    there (held-out accuracy rises), survive save and load, and --no-class-bias keeps the
    head's argmax exactly as it was."""
    from conftest import copy_model_dir

    from heads.model import ProfileModel
    from server.cli import main

    path = copy_model_dir(model_dir, tmp_path / "model")
    user = _rows(200, 11) + _cue_free(400, 12, {"JP": 0.8, "DE": 0.1, "FR": 0.1})
    random.Random(0).shuffle(user)
    write_profiles(tmp_path / "cal.jsonl", user[:300])
    held = user[300:]
    shipped = ProfileModel.load(path)
    base = shipped.head("geolocation")
    x = shipped.embed([r.profile for r in held])
    y = base.encode_labels([r.labels["country"] for r in held])
    args = ["calibrate", "--model", str(path), "--data", str(tmp_path / "cal.jsonl"), "--cache", ""]
    assert main([*args, "--no-class-bias"]) == 0
    capsys.readouterr()
    plain = ProfileModel.load(path).head("geolocation")
    assert plain.class_bias_ is None and plain.fit_info_["recalibrated"]["class_bias"] is False
    assert (plain.predict_proba(x).argmax(1) == base.predict_proba(x).argmax(1)).all()
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    biased = ProfileModel.load(path).head("geolocation")
    assert summary["head_version"] == biased.head_version == plain.head_version + 1
    assert biased.class_bias_ is not None and biased.class_bias_.shape == (len(biased.labels),)
    assert biased.calibration_["class_bias"] is True
    labels = list(biased.labels)
    assert biased.class_bias_[labels.index("JP")] > biased.class_bias_[labels.index("BR")]
    acc_before = (base.predict_proba(x).argmax(1) == y).mean()
    acc_after = (biased.predict_proba(x).argmax(1) == y).mean()
    assert acc_after > acc_before + 0.1
    on_rows = summary["on_calibration_rows"]
    assert on_rows["after"]["accuracy"] > on_rows["before"]["accuracy"]
    for side in ("before", "after"):  # the own labels' precision comes with its 95% interval
        own, span = (
            on_rows[side]["own_label_precision"],
            on_rows[side]["own_label_precision_interval"],
        )
        assert (own is None) == (span is None)
        assert own is None or span[0] <= own <= span[1]
        assert side == "before" or own is not None  # the re-calibrated head assigns labels
    # the 5-fold estimate: rows scored by calibrations that did not see them
    held = summary["held_out"]
    assert held["folds"] == 5 and held["accuracy"] > on_rows["before"]["accuracy"] + 0.1
    assert abs(held["accuracy"] - acc_after) < 0.1  # and it predicts the rows held back here


def test_a_saved_class_bias_is_checked_on_load(model_dir, tmp_path):
    from conftest import copy_model_dir

    from embedder.errors import ArtifactError
    from heads.model import ProfileModel

    path = copy_model_dir(model_dir, tmp_path / "model")
    folder = sorted((path / "heads" / "geolocation").glob("v*"))[-1]
    cfg = json.loads((folder / "head_config.json").read_text())
    cfg["class_bias"] = [0.0, "x"]
    (folder / "head_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match=r"class_bias must be a list of \d+ finite numbers"):
        ProfileModel.load(path)
    del cfg["class_bias"]  # heads saved before biases existed load as before
    (folder / "head_config.json").write_text(json.dumps(cfg))
    assert ProfileModel.load(path).head("geolocation").class_bias_ is None


def test_calibrate_refuses_bad_input_with_a_clear_error(model_dir, tmp_path, capsys):
    from server.cli import main

    (tmp_path / "bad.jsonl").write_text('{"id": "1", "biography": "x", "country": "XX"}\n')
    args = ["calibrate", "--model", str(model_dir), "--cache", ""]
    assert main([*args, "--data", str(tmp_path / "bad.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl, line 1, field 'country'" in err and "XX" in err
    assert "Traceback" not in err
    assert main([*args, "--data", str(tmp_path / "bad.jsonl"), "--target-precision", "1.5"]) == 2
    assert "--target-precision" in capsys.readouterr().err


def test_train_head_learns_a_new_task_from_a_data_field(model_dir, tmp_path, capsys):
    """A second head on another task (here sentiment), served from the same embedding."""
    from heads.model import ProfileModel
    from server.cli import main

    write_profiles(tmp_path / "t.jsonl", _rows(200, 11))
    write_profiles(tmp_path / "v.jsonl", _rows(80, 12))
    capsys.readouterr()
    args = ["train-head", "--model", str(model_dir), "--head", "sentiment", "--cache", ""]
    args += ["--label-field", "sentiment", "--train", str(tmp_path / "t.jsonl")]
    assert main([*args, "--val", str(tmp_path / "v.jsonl")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["val"]["accuracy"] > 0.9
    model = ProfileModel.load(model_dir)
    assert set(model.head_names) >= {"geolocation", "sentiment"}
    assert model.head("sentiment").labels == ("negative", "positive")
    texts = [("paris lyon", "awful hate it"), ("tokyo osaka", "love it great")]
    out = model.predict([Profile(id=b, biography=b, captions=(c,)) for b, c in texts])
    assert [p.argmax for p in out["sentiment"]] == ["negative", "positive"]
    assert "geolocation" in out
    one = tmp_path / "one.jsonl"
    write_profiles(one, [r for r in _rows(40, 13) if r.profile.extra["sentiment"] == "positive"])
    assert main([*args[:-2], "--train", str(one), "--val", str(tmp_path / "v.jsonl")]) == 2
    assert "needs at least 2 classes" in capsys.readouterr().err


def test_a_new_task_head_is_served_beside_geolocation_in_one_call(model_dir, tmp_path, capsys):
    """train-head's new head goes through `serve` like any other: one Predict, both heads."""
    from server_helpers import ServerThread

    from server.cli import main
    from server.client import ProfileEmbeddingClient
    from server.config import ServerConfig

    write_profiles(tmp_path / "t.jsonl", _rows(160, 21))
    write_profiles(tmp_path / "v.jsonl", _rows(60, 22))
    args = ["train-head", "--model", str(model_dir), "--head", "mood", "--cache", ""]
    args += ["--label-field", "sentiment", "--train", str(tmp_path / "t.jsonl")]
    assert main([*args, "--val", str(tmp_path / "v.jsonl")]) == 0
    capsys.readouterr()
    server = ServerThread(ServerConfig(model=model_dir, port=0, metrics_port=None))
    try:
        with ProfileEmbeddingClient(server.target) as client:
            rows = client.predict(
                [{"id": "a", "biography": "tokyo osaka", "captions": ["love it great"]}]
            )
    finally:
        server.stop()
    preds = rows[0]["predictions"]
    assert {"geolocation", "mood"} <= set(preds)
    assert preds["mood"]["argmax"] == "positive" and preds["geolocation"]["argmax"] == "JP"
