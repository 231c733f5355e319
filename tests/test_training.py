"""Joint fine-tuning: loss masking, determinism, resume, augmentation, data checks (tiny model)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from embedder.errors import InvalidInputError, UnknownHeadError
from embedder.profile import AssemblyConfig, Profile, assemble_texts
from heads.training.augment import AugmentConfig, augment_profile, augment_profiles
from heads.training.config import LoopConfig
from heads.training.data import (
    HEAD_TASKS,
    MISSING,
    bucketed_batches,
    check_train_targets,
    check_val_targets,
    class_weights,
    encode_targets,
    resolve_tasks,
    staged_batches,
)
from heads.training.loop import MultiTaskTrainer, multitask_loss

CITIES = {"FR": "paris lyon", "BR": "são paulo rio", "JP": "tokyo", "GB": "london"}
TOPICS = {"food": "food coffee", "travel": "travel beach", "fitness": "gym"}


class Row:
    """A LabelledProfile stand-in with the same two attributes."""

    def __init__(self, profile: Profile, labels: dict[str, str]) -> None:
        self.profile, self.labels = profile, labels


def make_rows(n: int, seed: int = 0, *, category_every: int = 2) -> list[Row]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        country = rng.choice(sorted(CITIES))
        topic = rng.choice(sorted(TOPICS))
        profile = Profile(
            id=str(i),
            username=f"user{i}",
            full_name="Hola Hello",
            biography=f"based in {CITIES[country]} 📍 love {TOPICS[topic]}",
            captions=tuple(f"post {CITIES[country]} {TOPICS[topic]} {j} ❤️" for j in range(3)),
        )
        labels = {"country": country}
        if i % category_every == 0:
            labels["category"] = topic
        rows.append(Row(profile, labels))
    return rows


def tiny_st(path: Path, seed: int = 0):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    torch.manual_seed(seed)
    transformer = Transformer(str(path), max_seq_length=64)
    return SentenceTransformer(
        modules=[transformer, Pooling(32, pooling_mode="mean"), Normalize()], device="cpu"
    )


def make_trainer(
    base: Path,
    rows,
    val_rows,
    *,
    ckpt=None,
    epochs=2,
    seed=0,
    heads=("geolocation", "category"),
    **trainer_kw,
):
    from heads.registry import build_head

    torch.manual_seed(seed)
    st = tiny_st(base, seed)
    assembly = AssemblyConfig(max_tokens=48, bio_tokens=16)
    tasks = resolve_tasks(list(heads))
    modules, train_t, val_t, weights = {}, {}, {}, {}
    for i, task in enumerate(tasks):
        head = build_head(
            "softmax_abstain",
            name=task.name,
            labels=task.labels,
            embedding_version="emb-test",
            in_dim=32,
            seed=seed + i,
        )
        modules[task.name] = head.logits_module()
        train_t[task.name] = encode_targets(rows, task)
        val_t[task.name] = encode_targets(val_rows, task)
        weights[task.name] = class_weights(train_t[task.name], len(task.labels))
    cfg = LoopConfig(
        epochs=epochs, batch_size=8, eval_batch_size=16, seed=seed, lr=1e-3, head_lr=1e-2
    )
    return MultiTaskTrainer(
        st,
        lambda profiles: assemble_texts(profiles, st.tokenizer, assembly),
        modules,
        [r.profile for r in rows],
        train_t,
        [r.profile for r in val_rows],
        val_t,
        class_weights=weights,
        config=cfg,
        checkpoint_dir=ckpt,
        run_info={"data": "test", "heads": list(heads)},
        **trainer_kw,
    )


# ---- loss masking ------------------------------------------------------------------------------
def test_loss_ignores_rows_without_label_and_gives_no_gradient_when_all_missing():
    torch.manual_seed(0)
    geo, cat = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)
    x = torch.randn(5, 4)
    y_geo = torch.tensor([0, 1, 2, 1, 0])
    y_cat = torch.full((5,), MISSING)
    total, parts = multitask_loss(
        {"geolocation": geo(x), "category": cat(x)},
        {"geolocation": y_geo, "category": y_cat},
        {"geolocation": None, "category": None},
    )
    total.backward()
    assert np.isnan(parts["category"])
    assert cat.weight.grad is None or torch.count_nonzero(cat.weight.grad) == 0
    assert torch.count_nonzero(geo.weight.grad) > 0

    # partially missing: the loss equals cross-entropy over the labelled rows only
    y_cat = torch.tensor([1, MISSING, 0, MISSING, MISSING])
    _, parts = multitask_loss(
        {"geolocation": geo(x), "category": cat(x)},
        {"geolocation": y_geo, "category": y_cat},
        {"geolocation": None, "category": None},
    )
    keep = torch.tensor([0, 2])
    expected = torch.nn.functional.cross_entropy(cat(x)[keep], y_cat[keep])
    assert parts["category"] == pytest.approx(float(expected.detach()), rel=1e-6)


def test_class_weights_inverse_sqrt_and_missing():
    y = np.array([0] * 16 + [1] * 4 + [MISSING] * 7)
    w = class_weights(y, 3)
    assert w[2] == 0
    assert w[1] / w[0] == pytest.approx(2.0)
    assert (w[y[y != MISSING]]).mean() == pytest.approx(1.0)


# ---- determinism and resume --------------------------------------------------------------------
@pytest.mark.slow  # four fine-tuning runs of the encoder
def test_same_seed_same_loss_trajectory_and_resume_equals_uninterrupted(tiny_base_dir, tmp_path):
    rows, val_rows = make_rows(24, 1), make_rows(8, 2)
    a = make_trainer(tiny_base_dir, rows, val_rows, ckpt=tmp_path / "a", epochs=2)
    a.fit()
    b = make_trainer(tiny_base_dir, rows, val_rows, ckpt=None, epochs=2)
    b.fit()
    assert a.loss_trace == b.loss_trace
    assert len(a.history) == 2

    c = make_trainer(tiny_base_dir, rows, val_rows, ckpt=tmp_path / "c", epochs=2)
    c.fit(stop_after=1)
    assert len(c.loss_trace) == len(a.loss_trace) // 2
    # a fresh process: new model with other init, then the checkpoint is loaded
    d = make_trainer(tiny_base_dir, rows, val_rows, ckpt=tmp_path / "c", epochs=2, seed=0)
    torch.manual_seed(123)  # the resumed RNG state must override this
    d.resume(tmp_path / "c")
    d.fit()
    assert d.loss_trace == a.loss_trace
    sa, sd = a.net.state_dict(), d.net.state_dict()
    assert all(torch.equal(sa[k], sd[k]) for k in sa)
    assert [h["val"] for h in d.history] == [h["val"] for h in a.history]


@pytest.mark.parametrize("epochs", [1, 2])
def test_only_an_unopposed_last_epoch_skips_its_validation(tiny_base_dir, epochs):
    """``validate_unopposed_last_epoch=False``: a one-epoch run keeps its weights whatever they
    score, so its validation pass is skipped; in a longer run the last epoch competes with the
    earlier ones and is validated."""
    rows, val_rows = make_rows(16, 1), make_rows(8, 2)
    t = make_trainer(
        tiny_base_dir, rows, val_rows, epochs=epochs, validate_unopposed_last_epoch=False
    )
    t.fit()
    validated = [h["val"] is not None for h in t.history]
    assert validated == ([False] if epochs == 1 else [True, True])
    assert t.best_epoch >= 1 and t.history[t.best_epoch - 1]["epoch"] == t.best_epoch
    if epochs == 1:
        assert t.history[0]["val_score"] is None and t.last_val_embeddings is None


def test_resume_refuses_other_data(tiny_base_dir, tmp_path):
    rows, val_rows = make_rows(16, 1), make_rows(8, 2)
    a = make_trainer(tiny_base_dir, rows, val_rows, ckpt=tmp_path / "a", epochs=1)
    a.fit()
    b = make_trainer(tiny_base_dir, rows, val_rows, heads=("geolocation",), epochs=1)
    from embedder.errors import ArtifactError

    with pytest.raises(ArtifactError, match="heads"):
        b.resume(tmp_path / "a")
    with pytest.raises(ArtifactError, match="no checkpoint"):
        b.resume(tmp_path)


# ---- augmentation ------------------------------------------------------------------------------
def _profile() -> Profile:
    return Profile(
        id="1",
        username="ana",
        full_name="Ana 🌸",
        biography="📍 Lyon 🇫🇷 chef",
        captions=("one two three four five six seven eight nine ten ❤️", "b post", "c post"),
    )


def test_augment_single_post_drops_bio_names_and_keeps_one_caption():
    p = _profile()
    out = augment_profile(
        p, random.Random(0), AugmentConfig(**{**AugmentConfig.none().to_dict(), "single_post": 1.0})
    )
    assert (out.username, out.full_name, out.biography) == ("", "", "")
    assert len(out.captions) == 1 and out.captions[0] in p.captions
    assert out.id == p.id


def test_augment_each_transform():
    p, none = _profile(), AugmentConfig.none().to_dict()
    rng = random.Random(0)
    assert augment_profile(p, rng, AugmentConfig.none()) == p
    out = augment_profile(p, rng, AugmentConfig(**{**none, "strip_emoji": 1.0}))
    assert out.biography == "Lyon chef" and out.full_name == "Ana" and "❤️" not in out.captions[0]
    out = augment_profile(p, rng, AugmentConfig(**{**none, "drop_bio": 1.0}))
    assert out.biography == "" and out.username == "ana" and out.captions == p.captions
    # Without captions the bio is all there is (a place snippet): it is never dropped.
    bio_only = Profile(id="s", biography="📍 Lyon")
    assert augment_profile(bio_only, rng, AugmentConfig(**{**none, "drop_bio": 1.0})) == bio_only
    out = augment_profile(p, rng, AugmentConfig(**{**none, "drop_names": 1.0}))
    assert (out.username, out.full_name) == ("", "") and out.biography == p.biography
    out = augment_profile(p, rng, AugmentConfig(**{**none, "keep_one_caption": 1.0}))
    assert len(out.captions) == 1 and out.biography == p.biography
    out = augment_profile(p, rng, AugmentConfig(**{**none, "truncate_captions": 1.0}))
    assert 3 <= len(out.captions[0].split()) < len(p.captions[0].split())
    shuffled = {
        augment_profile(
            p, random.Random(s), AugmentConfig(**{**none, "shuffle_captions": 1.0})
        ).captions
        for s in range(20)
    }
    assert len(shuffled) > 1 and all(sorted(c) == sorted(p.captions) for c in shuffled)
    with pytest.raises(ValueError, match="drop_bio"):
        AugmentConfig(drop_bio=1.5)


def test_augment_depends_on_seed_epoch_row_not_batch_order():
    profiles = [_profile()] * 10
    cfg = AugmentConfig(single_post=0.5, shuffle_captions=0.5)
    a = augment_profiles(profiles, [3, 7], seed=1, epoch=0, config=cfg)
    b = augment_profiles(profiles, [7, 3], seed=1, epoch=0, config=cfg)
    assert a == b[::-1]
    epochs = [augment_profiles(profiles, range(10), seed=1, epoch=e, config=cfg) for e in range(3)]
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]


def test_bucketed_batches_cover_every_row_once_with_similar_lengths():
    lengths = list(np.random.default_rng(0).integers(5, 200, size=1000))
    batches = bucketed_batches(lengths, 32, np.random.default_rng(1), pool=10)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(1000))
    spread = np.mean([np.ptp(np.asarray(lengths)[b]) for b in batches])
    assert spread < 40  # random batches would spread ~190


def test_staged_batches_train_the_first_rows_before_the_rest():
    lengths = list(np.random.default_rng(0).integers(5, 200, size=500))
    first = np.arange(500) >= 300  # e.g. place snippets appended after 300 profiles
    batches = staged_batches(lengths, 32, np.random.default_rng(1), first, pool=5)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(500))
    kinds = [bool(first[b].all()) if first[b].any() else False for b in batches]
    assert all(first[b].all() or not first[b].any() for b in batches)  # stages never mix
    n_first = sum(kinds)
    assert kinds[:n_first] == [True] * n_first and not any(kinds[n_first:])


def test_staged_schedule_restarts_the_learning_rate_for_the_second_stage():
    from heads.training.loop import _staged_schedule

    f = _staged_schedule(100, 50, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)  # warm-up of stage one
    assert f(99) == pytest.approx(1 / 90)  # stage one decays to ~0 ...
    assert f(100) == pytest.approx(0.2) and f(104) == pytest.approx(1.0)  # ... then warms up again
    assert f(149) == pytest.approx(1 / 45)


# ---- bad data ----------------------------------------------------------------------------------
def test_unknown_head_and_bad_labels():
    with pytest.raises(UnknownHeadError, match=r"'language'.*known heads"):
        resolve_tasks("geolocation,language")
    rows = make_rows(4)
    rows[2].labels["category"] = "cooking"
    with pytest.raises(InvalidInputError, match=r"'cooking'.*not in the label set"):
        encode_targets(rows, HEAD_TASKS["category"], source="t.jsonl")


def test_empty_one_class_and_val_missing_class(caplog):
    task = HEAD_TASKS["geolocation"]
    with pytest.raises(InvalidInputError, match="no training row has a 'country' label"):
        check_train_targets(np.array([MISSING, MISSING]), task)
    with pytest.raises(InvalidInputError, match="needs at least 2 classes"):
        check_train_targets(np.array([3, 3, MISSING]), task)
    with pytest.raises(InvalidInputError, match="no validation row"):
        check_val_targets(np.array([MISSING]), np.array([0, 1]), task)
    missing = check_val_targets(np.array([0, 0]), np.array([0, 1, 2]), task)
    assert missing == [task.labels[1], task.labels[2]]
    assert "none in validation" in caplog.text


# ---- end to end (train_model + CLI) ------------------------------------------------------------
def _write_split(path: Path, rows) -> Path:
    from embedder.data import LabelledProfile, write_profiles

    write_profiles(path, [LabelledProfile(r.profile, dict(r.labels)) for r in rows])
    return path


def _tiny_config(tiny_base_dir, **kw):
    from heads.training.config import TrainConfig

    loop = LoopConfig(epochs=1, batch_size=8, eval_batch_size=32, lr=1e-3, head_lr=1e-2, seed=0)
    return TrainConfig(
        heads=("geolocation", "category"), base=str(tiny_base_dir), max_tokens=32, loop=loop, **kw
    )


def test_train_model_writes_a_loadable_model_and_refuses_overwrite(tiny_base_dir, tmp_path):
    import json

    from embedder.encoder import ProfileEncoder
    from embedder.errors import ArtifactError
    from heads.registry import load_head
    from heads.training.run import train_model

    train = _write_split(tmp_path / "train.jsonl", make_rows(48, 1))
    val = _write_split(tmp_path / "val.jsonl", make_rows(24, 2))
    out = tmp_path / "m"
    result = train_model(train, val, out, _tiny_config(tiny_base_dir), test_path=val)
    info = json.loads((out / "training.json").read_text())
    assert (
        info["data"]["train"]["sha256"]
        and info["label_counts"]["category"]["train"]["<missing>"] == 24
    )
    assert info["versions"]["torch"] and info["wall_seconds_before_write"] > 0
    assert info["metrics"]["test"]["geolocation"]["n"] == 24
    encoder = ProfileEncoder.load(out / "encoder")
    assert encoder.embedding_version == result.embedding_version != info["start_embedding_version"]
    emb = encoder.encode([r.profile for r in make_rows(5, 3)])
    for name in ("geolocation", "category"):
        head = load_head(out / "heads" / name / "v1", embedding_version=encoder.embedding_version)
        preds = head.predict(emb)
        assert len(preds) == 5 and all(p.argmax in head.labels for p in preds)
    assert (out / "report" / "metrics.json").is_file()
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(ArtifactError, match="already exists"):
        train_model(train, val, out, _tiny_config(tiny_base_dir))
    assert sorted(p.name for p in out.rglob("*")) == before


def test_cli_train_errors_are_specific(tiny_base_dir, tmp_path, capsys):
    from embedder.data import LabelledProfile, write_profiles
    from server.cli import main

    rows = make_rows(16, 1)
    train = _write_split(tmp_path / "train.jsonl", rows)
    val = _write_split(tmp_path / "val.jsonl", make_rows(8, 2))
    common = ["train", "--train", str(train), "--val", str(val), "--base", str(tiny_base_dir)]
    assert main([*common, "-o", str(tmp_path / "a"), "--heads", "geolocation,language"]) == 2
    assert "unknown head 'language'" in capsys.readouterr().err
    one = [LabelledProfile(r.profile, {"country": "FR"}) for r in rows]
    write_profiles(tmp_path / "one.jsonl", one)
    args = ["train", "--train", str(tmp_path / "one.jsonl"), "--val", str(val)]
    assert main([*args, "-o", str(tmp_path / "b"), "--base", str(tiny_base_dir)]) == 2
    assert "needs at least 2 classes" in capsys.readouterr().err
    no_cat = [LabelledProfile(r.profile, {"country": r.labels["country"]}) for r in make_rows(8, 2)]
    write_profiles(tmp_path / "val_nocat.jsonl", no_cat)
    args = ["train", "--train", str(train), "--val", str(tmp_path / "val_nocat.jsonl")]
    rc = main(
        [
            *args,
            "-o",
            str(tmp_path / "c"),
            "--base",
            str(tiny_base_dir),
            "--heads",
            "geolocation,category",
        ]
    )
    assert rc == 2
    assert "no validation row has a 'category' label" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    assert main([*common, "-o", str(tmp_path / "d")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert not any((tmp_path / p).exists() for p in ("a", "b", "c"))


# ---- linear probe before fine-tuning (LP-FT) ---------------------------------------------------
def test_probe_fits_each_head_on_its_labelled_rows_with_the_loss_weights(tiny_base_dir):
    from embedder.encoder import ProfileEncoder
    from heads.registry import build_head
    from heads.training.probe import probe_heads

    encoder = ProfileEncoder.from_base(str(tiny_base_dir), num_layers=2)
    rows = make_rows(40, 4, category_every=2)
    tasks = resolve_tasks(["geolocation", "category"])
    modules = {
        t.name: build_head(
            "softmax_abstain",
            name=t.name,
            labels=t.labels,
            embedding_version="emb-test",
            in_dim=encoder.dim,
            seed=i,
        ).logits_module()
        for i, t in enumerate(tasks)
    }
    targets = {t.name: encode_targets(rows, t) for t in tasks}
    weights = {t.name: class_weights(targets[t.name], len(t.labels)) for t in tasks}
    x = torch.from_numpy(encoder.encode([r.profile for r in rows]))

    def loss_and_accuracy(name: str) -> tuple[float, float]:
        y = torch.from_numpy(targets[name])
        rows_ = y != MISSING
        with torch.no_grad():
            z = modules[name](x)[rows_]
        w = torch.from_numpy(weights[name]).float()
        loss = torch.nn.functional.cross_entropy(z, y[rows_], weight=w)
        return float(loss), float((z.argmax(1) == y[rows_]).float().mean())

    before = {t.name: loss_and_accuracy(t.name) for t in tasks}
    info = probe_heads(
        encoder, modules, [r.profile for r in rows], targets, weights, progress=False
    )
    after = {t.name: loss_and_accuracy(t.name) for t in tasks}
    assert info["rows"] == 40 and info["heads"]["geolocation"]["rows"] == 40
    assert info["heads"]["category"]["rows"] == 20  # every other row has a category
    for t in tasks:  # 40 rows in 32 dimensions: the probe separates what random weights do not
        assert after[t.name][0] < 0.5 * before[t.name][0]
        assert after[t.name][1] >= 0.9 > before[t.name][1]
    # The category head is the fit on its labelled rows under the loss's class weights, which
    # give another fit than unweighted rows would.
    from heads.softmax import fit_standardised_linear
    from heads.training.probe import PROBE_L2

    y, k = targets["category"], len(weights["category"])
    labelled = y != MISSING
    xs = x.numpy().astype(np.float64)[labelled]
    w, b = fit_standardised_linear(xs, y[labelled], k, weights["category"], PROBE_L2)
    layer = modules["category"][0]
    tol = 1e-5 * float(np.abs(w).max())
    np.testing.assert_allclose(layer.weight.detach().numpy(), w, rtol=1e-5, atol=tol)
    np.testing.assert_allclose(layer.bias.detach().numpy(), b, rtol=1e-5, atol=tol)
    unweighted, _ = fit_standardised_linear(xs, y[labelled], k, np.ones(k), PROBE_L2)
    assert not np.allclose(unweighted, w, rtol=1e-3, atol=100 * tol)


def test_probe_first_is_recorded_and_refuses_a_hidden_layer(tiny_base_dir, tmp_path):
    import json

    from heads.training.run import train_model

    with pytest.raises(InvalidInputError, match="linear heads only"):
        _tiny_config(tiny_base_dir, probe_first=10, hidden=8)
    with pytest.raises(InvalidInputError, match="probe_first must be >= 0"):
        _tiny_config(tiny_base_dir, probe_first=-1)
    train = _write_split(tmp_path / "train.jsonl", make_rows(48, 1))
    val = _write_split(tmp_path / "val.jsonl", make_rows(24, 2))
    train_model(train, val, tmp_path / "m", _tiny_config(tiny_base_dir, probe_first=100))
    info = json.loads((tmp_path / "m" / "training.json").read_text())
    assert info["probe"]["rows"] == 48  # capped at the training profiles
    assert info["config"]["probe_first"] == 100
    assert set(info["probe"]["heads"]) == {"geolocation", "category"}


@pytest.fixture(scope="module")
def named_run(tiny_base_dir, tmp_path_factory):
    """Profiles with names and @mentions, their splits, and a plain run on them: trained once
    for every after-fine-tuning setting compared with it."""
    from dataclasses import replace

    from heads.training.run import train_model

    root = tmp_path_factory.mktemp("named")
    rows = [
        Row(
            replace(
                r.profile,
                full_name=f"Zelda Quux{i}",
                username=f"zq{i}",
                captions=tuple(f"@friend_{i}_{j} {c}" for j, c in enumerate(r.profile.captions)),
            ),
            r.labels,
        )
        for i, r in enumerate(make_rows(48, 1))
    ]
    train = _write_split(root / "train.jsonl", rows[:32])
    val = _write_split(root / "val.jsonl", rows[32:])
    plain = train_model(train, val, root / "plain", _tiny_config(tiny_base_dir))
    return rows, train, val, root / "plain", plain


@pytest.mark.parametrize(
    ("setting", "read_before", "read_after"),
    [
        ("mask_mentions_after_fine_tuning", "@friend", "@user"),
        ("ignore_names_after_fine_tuning", "Zelda", None),
    ],
)
def test_text_read_differently_after_fine_tuning_keeps_the_weights(
    tiny_base_dir, tmp_path, named_run, setting, read_before, read_after
):
    """``mask_mentions_after_fine_tuning`` / ``ignore_names_after_fine_tuning``: fine-tuning
    reads the handles and names as written, so the weights are those of a run without the
    setting; the saved encoder, calibration and the test split read ``@user`` / no name."""
    import json

    from embedder.encoder import ProfileEncoder
    from heads.training.run import train_model

    rows, train, val, plain_dir, plain = named_run
    changed = train_model(
        train, val, tmp_path / "changed", _tiny_config(tiny_base_dir, **{setting: True})
    )
    a = ProfileEncoder.load(plain_dir / "encoder")
    b = ProfileEncoder.load(tmp_path / "changed" / "encoder")
    wa, wb = a.st_model.state_dict(), b.st_model.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assembly_field = setting.removesuffix("_after_fine_tuning")
    assert not getattr(a.assembly, assembly_field) and getattr(b.assembly, assembly_field)
    assert changed.embedding_version == b.embedding_version != plain.embedding_version
    (text,) = b.assemble([rows[0].profile])
    assert read_before not in text and read_before in a.assemble([rows[0].profile])[0]
    if read_after is not None:
        assert read_after in text
    info = {
        name: json.loads((folder / "training.json").read_text())
        for name, folder in (("plain", plain_dir), ("changed", tmp_path / "changed"))
    }
    assert info["changed"]["config"][setting] is True
    # the one epoch's own validation pass (reading the text as fine-tuning did) is skipped there:
    # the validation rows are embedded again as the saved encoder reads them
    assert info["changed"]["history"][0]["val"] is None and info["changed"]["best_epoch"] == 1
    assert info["plain"]["history"][0]["val"] is not None
    assert info["changed"]["metrics"]["val"]["geolocation"]["n"] > 0
    # Calibrated on the validation rows as the saved encoder reads them, not on the last
    # validation pass of fine-tuning (which read them as written).
    temps = [info[n]["calibration"]["geolocation"]["temperature"] for n in ("plain", "changed")]
    assert temps[0] != pytest.approx(temps[1], rel=1e-6)


def test_validation_read_again_goes_through_the_cache_the_head_refit_reads(
    tiny_base_dir, tmp_path, named_run
):
    """With a setting that reads the text differently after fine-tuning, the validation rows are
    embedded again on the serving path (``encoder.encode``) into ``embedding_cache``; a later
    ``train_head`` on the saved model and that validation file embeds only its training rows."""
    from embedder.data import read_profiles
    from embedder.encoder import ProfileEncoder
    from heads.training.head import cached_embeddings, train_head
    from heads.training.run import train_model

    _, train, val, _, _ = named_run
    cache = tmp_path / "cache.sqlite"
    out = tmp_path / "m"
    train_model(
        train,
        val,
        out,
        _tiny_config(tiny_base_dir, ignore_names_after_fine_tuning=True),
        embedding_cache=cache,
    )
    saved = ProfileEncoder.load(out / "encoder")
    profiles = [r.profile for r in read_profiles(val).rows]
    (from_cache,), stats = cached_embeddings(saved, [profiles], cache)
    assert stats == {"hits": len(profiles), "misses": 0}
    np.testing.assert_allclose(from_cache, saved.encode(profiles), atol=1e-5)
    summary = train_head(out, "geolocation", train, val, cache_path=cache, progress=False)
    # the same as over a cache that holds the validation rows alone (names ignored, some
    # training rows read as a validation row does, so they are hits too)
    only_val = tmp_path / "only-val.sqlite"
    cached_embeddings(saved, [profiles], only_val)
    again = train_head(out, "geolocation", train, val, cache_path=only_val, progress=False)
    assert summary["cache"] == again["cache"] and summary["cache"]["hits"] >= len(profiles)
