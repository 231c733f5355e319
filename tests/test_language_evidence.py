"""Language evidence of a country head: CLDR table, classifier, logits, persistence, train-head."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from embedder.data import LabelledProfile, write_profiles
from embedder.errors import ArtifactError, InvalidInputError
from embedder.labels import GEO_LABELS, OTHER
from embedder.profile import Profile
from heads.language_evidence import LanguageEvidence, label_given_language


def test_cldr_table_sends_each_language_where_it_is_spoken():
    langs = ["ja", "pt", "ko", "xx-unknown"]
    table, prior = label_given_language(langs, GEO_LABELS)
    assert table.shape == (4, len(GEO_LABELS))
    np.testing.assert_allclose(table.sum(axis=1), 1.0)
    top = [GEO_LABELS[i] for i in table.argmax(axis=1)]
    assert top[:3] == ["JP", "BR", "KR"]
    np.testing.assert_allclose(table[3], prior)  # a language no country speaks: the prior
    assert prior[GEO_LABELS.index("US")] > prior[GEO_LABELS.index("SE")]
    with pytest.raises(InvalidInputError, match="OTHER"):
        label_given_language(["en"], ["FR", "DE"])


def _clusters(n_per: int, seed: int = 0) -> tuple[np.ndarray, list[str | None]]:
    """Embeddings with one direction per language (ja, pt, de) and some rows without one."""
    rng = np.random.default_rng(seed)
    centres = {"ja": 0, "pt": 1, "de": 2}
    x, langs = [], []
    for lang, axis in centres.items():
        block = rng.normal(0, 0.3, (n_per, 8))
        block[:, axis] += 3.0
        x.append(block)
        langs += [lang] * n_per
    x.append(rng.normal(0, 0.3, (5, 8)))
    langs += [None] * 5
    return np.vstack(x).astype(np.float32), langs


def test_evidence_learns_languages_and_scales_by_alpha():
    x, langs = _clusters(30)
    ev = LanguageEvidence.fit(x, langs, GEO_LABELS, alpha=0.5)
    assert ev.languages == ("de", "ja", "pt") and ev.n == 90  # rows without a language skipped
    probe = np.zeros((3, 8), dtype=np.float32)
    probe[0, 0], probe[1, 1], probe[2, 2] = 3.0, 3.0, 3.0  # ja, pt, de
    assert [ev.languages[i] for i in ev.language_proba(probe).argmax(1)] == ["ja", "pt", "de"]
    log_ev = ev.log_evidence(probe)
    assert log_ev.shape == (3, len(GEO_LABELS))
    assert [GEO_LABELS[i] for i in log_ev.argmax(1)] == ["JP", "BR", "DE"]
    twice = LanguageEvidence.fit(x, langs, GEO_LABELS, alpha=1.0)
    np.testing.assert_allclose(twice.log_evidence(probe), 2 * log_ev, rtol=1e-9)


def test_evidence_refuses_too_few_languages_and_a_bad_alpha():
    x, _ = _clusters(30)
    with pytest.raises(InvalidInputError, match=">= 2 languages with >= 20 rows"):
        LanguageEvidence.fit(x, ["ja"] * 30 + ["pt"] * 10 + [None] * 55, GEO_LABELS, alpha=0.5)
    with pytest.raises(InvalidInputError, match="alpha must be > 0"):
        LanguageEvidence.fit(x, ["ja"] * 95, GEO_LABELS, alpha=0.0)
    with pytest.raises(InvalidInputError, match="95 embeddings but 3 language labels"):
        LanguageEvidence.fit(x, ["ja", "pt", "de"], GEO_LABELS, alpha=0.5)


def test_head_adds_the_evidence_to_its_logits_and_keeps_it_through_save_and_load(tmp_path):
    from heads.registry import load_head
    from heads.softmax import SoftmaxAbstainHead

    x, langs = _clusters(30)
    head = SoftmaxAbstainHead.from_config(
        {"name": "geolocation", "embedding_version": "emb-test", "in_dim": 8}, GEO_LABELS
    )
    plain = head.logits(x)
    ev = LanguageEvidence.fit(x, langs, GEO_LABELS, alpha=0.5)
    head.attach_language_evidence(ev)
    np.testing.assert_allclose(head.logits(x), plain + ev.log_evidence(x), rtol=1e-6, atol=1e-6)
    head.save(tmp_path / "h")
    loaded = load_head(tmp_path / "h")
    assert isinstance(loaded, SoftmaxAbstainHead)
    assert loaded.language_ is not None and loaded.language_.languages == ev.languages
    np.testing.assert_allclose(loaded.logits(x), head.logits(x), rtol=1e-5, atol=1e-5)
    config = json.loads((tmp_path / "h" / "head_config.json").read_text())
    assert config["language_evidence"]["alpha"] == 0.5

    small = SoftmaxAbstainHead.from_config(
        {"name": "geolocation", "embedding_version": "emb-test", "in_dim": 4}, GEO_LABELS
    )
    with pytest.raises(InvalidInputError, match="does not fit head 'geolocation'"):
        small.attach_language_evidence(ev)

    broken = json.loads((tmp_path / "h" / "head_config.json").read_text())
    broken["language_evidence"]["languages"] = ["de"]  # 1 language, weights of 3 rows
    (tmp_path / "h" / "head_config.json").write_text(json.dumps(broken))
    with pytest.raises(ArtifactError, match="language evidence has 1 languages"):
        load_head(tmp_path / "h")


BIOS = {
    "ja": ("JP", "東京 カフェ 大好き 今日も"),
    "pt": ("BR", "amo café e praia hoje"),
    "de": ("DE", "ich liebe kaffee heute"),
}


def _rows(n: int, seed: int, *, language: bool = True) -> list[LabelledProfile]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lang = rng.choice(sorted(BIOS))
        country, bio = BIOS[lang]
        if rng.random() < 0.2:
            country = OTHER
        extra = {"language": lang} if language else {}
        p = Profile(id=f"{seed}-{i}", biography=f"{bio} {i}", extra=extra)
        out.append(LabelledProfile(p, {"country": country}))
    return out


def test_train_head_fits_language_evidence_for_a_country_head_only(
    writable_model_dir, tmp_path, capsys
):
    from heads.model import ProfileModel
    from server.cli import main

    write_profiles(tmp_path / "train.jsonl", _rows(90, 1))
    write_profiles(tmp_path / "val.jsonl", _rows(60, 2))
    train, val = str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl")
    base = ["train-head", "--model", str(writable_model_dir), "--train", train, "--val", val,
            "--cache", ""]  # fmt: skip
    assert main([*base, "--head", "geolocation", "--language-evidence", "0.5"]) == 0
    summary = json.loads(capsys.readouterr().out)
    head = ProfileModel.load(writable_model_dir).head("geolocation")
    assert head.head_version == summary["head_version"]
    assert head.language_ is not None and head.language_.languages == ("de", "ja", "pt")

    code = main([*base, "--head", "category", "--label-field", "country",
                 "--kind", "knn", "--language-evidence", "0.5"])  # fmt: skip
    assert code == 2
    assert "language_evidence" in capsys.readouterr().err

    write_profiles(tmp_path / "bare.jsonl", _rows(90, 1, language=False))
    bare = [a if a != train else str(tmp_path / "bare.jsonl") for a in base]
    assert main([*bare, "--head", "geolocation", "--language-evidence", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "bare.jsonl" in err and "'language' field" in err
    assert Path(writable_model_dir, "heads", "geolocation").is_dir()


def _saved_and_loaded(evidence: LanguageEvidence, path: Path):
    """A geolocation head with ``evidence``, and that head saved to ``path`` and loaded again."""
    from heads.registry import load_head
    from heads.softmax import SoftmaxAbstainHead

    head = SoftmaxAbstainHead.from_config(
        {"name": "geolocation", "embedding_version": "emb-test", "in_dim": 8}, GEO_LABELS
    )
    head.attach_language_evidence(evidence)
    head.save(path)
    loaded = load_head(path)
    assert isinstance(loaded, SoftmaxAbstainHead) and loaded.language_ is not None
    return head, loaded


def test_evidence_for_some_languages_only_is_flat_for_the_others(tmp_path):

    x, langs = _clusters(30)
    full = LanguageEvidence.fit(x, langs, GEO_LABELS, alpha=0.5)
    ja = LanguageEvidence.fit(x, langs, GEO_LABELS, alpha=0.5, only=("ja",))
    assert ja.only == ("ja",)
    row = ja.languages.index("ja")
    np.testing.assert_allclose(ja.table[row], full.table[row])  # Japanese keeps its countries
    for i in range(len(ja.languages)):
        if i != row:
            np.testing.assert_allclose(ja.table[i], 1.0 / len(GEO_LABELS))
    probe = np.zeros((2, 8), dtype=np.float32)
    probe[0, 0], probe[1, 1] = 3.0, 3.0  # a Japanese post, a Portuguese one
    log_ev = ja.log_evidence(probe)
    assert GEO_LABELS[int(log_ev[0].argmax())] == "JP"
    # Portuguese: nearly flat (what is left is the small chance the post is Japanese), where
    # the full table sends it to Brazil.
    assert np.ptp(log_ev[1]) < 0.05 < np.ptp(full.log_evidence(probe)[1])

    _, loaded = _saved_and_loaded(ja, tmp_path / "h")
    assert loaded.language_.only == ("ja",)
    with pytest.raises(InvalidInputError, match=r"restricted to \['en'\].*\['de', 'ja', 'pt'\]"):
        LanguageEvidence.fit(x, langs, GEO_LABELS, alpha=0.5, only=("en",))


def test_a_power_weighs_a_language_by_how_sure_the_classifier_is(tmp_path):
    from heads.registry import load_head

    x, langs = _clusters(30)
    plain = LanguageEvidence.fit(x, langs, GEO_LABELS, alpha=0.5, only=("ja",))
    sharp = LanguageEvidence.fit(x, langs, GEO_LABELS, alpha=0.5, only=("ja",), power=2.0)
    k = len(GEO_LABELS)
    probe = np.zeros((3, 8), dtype=np.float32)
    probe[0, 0] = 3.0  # clearly Japanese
    probe[1, 0], probe[1, 1] = 1.0, 1.0  # half Japanese, half Portuguese
    p = plain.language_proba(probe)
    row = plain.languages.index("ja")
    jp = GEO_LABELS.index("JP")
    # power 1 is the plain mixture: P(ja) * P(JP | ja) + (1 - P(ja)) / K
    expected = 0.5 * np.log(p[:, row] * plain.table[row, jp] + (1 - p[:, row]) / k)
    np.testing.assert_allclose(plain.log_evidence(probe)[:, jp], expected)
    # power 2: P(ja)**2 counts for Japanese, the rest of the mass is flat
    q = p[:, row] ** 2
    others = np.delete(p, row, axis=1) ** 2
    flat = 1 - q - others.sum(axis=1)
    want = 0.5 * np.log(q * plain.table[row, jp] + (others.sum(axis=1) + flat) / k)
    np.testing.assert_allclose(sharp.log_evidence(probe)[:, jp], want)
    # a clear post moves nearly as much; an unclear one much less
    lift = lambda ev: np.ptp(ev.log_evidence(probe), axis=1)  # noqa: E731
    assert lift(sharp)[0] > 0.8 * lift(plain)[0]
    assert lift(sharp)[1] < 0.7 * lift(plain)[1]
    with pytest.raises(InvalidInputError, match=r"power must be a number >= 1, got 0\.5"):
        LanguageEvidence.fit(x, langs, GEO_LABELS, alpha=0.5, power=0.5)

    head, loaded = _saved_and_loaded(sharp, tmp_path / "h")
    assert loaded.language_.power == 2.0
    np.testing.assert_array_equal(loaded.logits(probe), head.logits(probe))
    # a head saved before the setting existed reads as power 1
    config = json.loads((tmp_path / "h" / "head_config.json").read_text())
    del config["language_evidence"]["power"]
    (tmp_path / "h" / "head_config.json").write_text(json.dumps(config))
    assert load_head(tmp_path / "h").language_.power == 1.0
    config["language_evidence"]["power"] = 0.0
    (tmp_path / "h" / "head_config.json").write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="power must be a number >= 1"):
        load_head(tmp_path / "h")


def _country_data(seed: int) -> tuple[np.ndarray, list[str], list[str | None]]:
    """Embeddings of three languages; the country is the language's, OTHER one time in four."""
    x, langs = _clusters(60, seed)
    rng = np.random.default_rng(seed)
    country = {"ja": "JP", "pt": "BR", "de": "DE", None: OTHER}
    y = [OTHER if rng.random() < 0.25 else country[lang] for lang in langs]
    return x, y, langs


def test_evidence_added_after_calibration_keeps_temperature_and_biases():
    from heads.softmax import SoftmaxAbstainHead

    x, y, langs = _country_data(0)
    vx, vy, _ = _country_data(1)
    ev = LanguageEvidence.fit(x, langs, GEO_LABELS, alpha=1.0, only=("pt",))

    def fit(**kwargs):
        head = SoftmaxAbstainHead.from_config(
            {"name": "geolocation", "embedding_version": "emb-test", "in_dim": 8}, GEO_LABELS
        )
        return head.fit(
            x, y, val_embeddings=vx, val_labels=vy, class_bias=True, missing_classes="abstain",
            l2=1e-2, **kwargs,
        )  # fmt: skip

    plain = fit()
    after = fit(language_evidence_after_calibration=ev)
    assert after.temperature_ == plain.temperature_
    np.testing.assert_array_equal(after.class_bias_, plain.class_bias_)
    assert after.calibration_ is not None and after.calibration_["scale"] == "kept"
    assert plain.calibration_ is not None and plain.calibration_["scale"] == "fitted"
    np.testing.assert_allclose(
        after.logits(vx), plain.logits(vx) + ev.log_evidence(vx), rtol=1e-9, atol=1e-9
    )
    # The thresholds were selected again on the logits with the evidence (Brazil's scores moved).
    br = GEO_LABELS.index("BR")
    assert after.predict_proba(vx)[:, br].mean() > plain.predict_proba(vx)[:, br].mean()
    assert after.calibration_["per_class"] != plain.calibration_["per_class"]
    # Attached before the fit, the same evidence is calibrated with the logits: other biases.
    before = SoftmaxAbstainHead.from_config(
        {"name": "geolocation", "embedding_version": "emb-test", "in_dim": 8}, GEO_LABELS
    )
    before.attach_language_evidence(ev)
    before.fit(x, y, val_embeddings=vx, val_labels=vy, class_bias=True,
               missing_classes="abstain", l2=1e-2)  # fmt: skip
    assert not np.allclose(before.class_bias_, plain.class_bias_)

    # With out-of-fold calibration rows: the scale is kept and they are counted.
    folds = fit(cross_fit=3, language_evidence_after_calibration=ev)
    plain_folds = fit(cross_fit=3)
    assert folds.temperature_ == plain_folds.temperature_
    assert folds.calibration_ is not None and folds.calibration_["n_val"] == len(vy) + len(y)

    head = SoftmaxAbstainHead.from_config(
        {"name": "geolocation", "embedding_version": "emb-test", "in_dim": 8}, GEO_LABELS
    )
    with pytest.raises(InvalidInputError, match="needs a calibration"):
        head.fit(x, y, calibrate=False, language_evidence_after_calibration=ev)


def test_train_head_settings_of_the_evidence_need_the_evidence():
    from heads.training.config import HeadTrainConfig

    with pytest.raises(InvalidInputError, match="language_evidence_only applies"):
        HeadTrainConfig(language_evidence_only=("en",))
    with pytest.raises(InvalidInputError, match="language_evidence_after_calibration applies"):
        HeadTrainConfig(language_evidence_after_calibration=True)
    with pytest.raises(InvalidInputError, match="language_evidence_power applies"):
        HeadTrainConfig(language_evidence_power=2.0)
    with pytest.raises(InvalidInputError, match="power must be a number >= 1"):
        HeadTrainConfig(language_evidence=0.5, language_evidence_power=float("nan"))
    HeadTrainConfig(language_evidence=0.5, language_evidence_power=2.0)
    HeadTrainConfig(language_evidence=0.5, language_evidence_only=("en",))


def test_train_head_adds_english_only_evidence_after_calibration(
    writable_model_dir, tmp_path, capsys
):
    from heads.model import ProfileModel
    from server.cli import main

    write_profiles(tmp_path / "train.jsonl", _rows(90, 1))
    write_profiles(tmp_path / "val.jsonl", _rows(60, 2))
    base = ["train-head", "--model", str(writable_model_dir), "--train",
            str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl"), "--cache", "",
            "--head", "geolocation", "--cross-fit", "0", "--class-bias"]  # fmt: skip
    assert main(base) == 0
    plain = ProfileModel.load(writable_model_dir).head("geolocation")
    capsys.readouterr()
    assert main([*base, "--language-evidence", "0.5", "--language-evidence-only", "pt",
                 "--language-evidence-after-calibration"]) == 0  # fmt: skip
    head = ProfileModel.load(writable_model_dir).head("geolocation")
    assert head.head_version == plain.head_version + 1
    assert head.language_ is not None and head.language_.only == ("pt",)
    assert head.temperature_ == pytest.approx(plain.temperature_, rel=1e-9)
    np.testing.assert_allclose(head.class_bias_, plain.class_bias_, rtol=1e-9)
    capsys.readouterr()
    assert main([*base, "--language-evidence-only", "pt"]) == 2
    assert "language_evidence_only applies" in capsys.readouterr().err
