"""``profile-embed build-default`` end to end at toy size: the same code path as the shipped model
(simulate -> location tokens -> fine-tune -> calibrate -> evaluate -> versioned folder + link)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

#: The toy recipe: the default recipe's path at a size that takes seconds (a test fixture, so it
#: lives here and not among the shipped recipes).
TOY_RECIPE = str(Path(__file__).parent / "data" / "toy_recipe.json")


@pytest.fixture()
def home(tmp_path, monkeypatch):
    # prepare_base caches prepared bases under PROFILE_EMBED_HOME: keep the test's own.
    monkeypatch.setenv("PROFILE_EMBED_HOME", str(tmp_path / "home"))
    return tmp_path


def test_build_writes_versioned_model_and_points_the_link(tiny_base_dir, home, capsys):
    from heads.model import ProfileModel
    from heads.training.recipes import read_build
    from server.cli import main

    models, data = home / "models", home / "data"
    code = main(
        [
            "build-default",
            "--recipe",
            TOY_RECIPE,
            "--base",
            str(tiny_base_dir),
            "--models-root",
            str(models),
            "--data-root",
            str(data),
            "--no-progress",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    # --no-progress: no bar from any step (simulation, the epochs, the heads' re-fit embeddings)
    assert "it/s" not in captured.err and "/s]" not in captured.err, captured.err[-500:]
    link = models / "default"
    assert link.is_symlink() and link.resolve() == (models / out["model"].split("/")[-1]).resolve()
    assert out["model"].endswith("toy-" + out["embedding_version"].removeprefix("emb-")[:12])
    assert 0.0 <= out["test_geolocation"]["accuracy"] <= 1.0
    assert out["test_geolocation"]["n"] == 120  # the toy recipe's test stream

    record = read_build(link)
    assert record["embedding_version"] == out["embedding_version"]
    assert (
        json.loads((link / "model.json").read_text())["embedding_version"]
        == out["embedding_version"]
    )
    assert record["recipe"]["name"] == "toy"
    assert record["recipe"]["train"]["location_tokens"] is True
    assert set(record["metrics"]) == {"val", "test"}
    training = json.loads((link / "training.json").read_text())
    assert training["data"]["train"]["rows_used"] == 300
    assert 90 <= training["data"]["train"]["place_snippets"] <= 100
    # Both heads are trained jointly, the snippets first; the first epoch's snippet rows carry no
    # category label.
    assert record["recipe"]["train"]["snippets_first"] is True
    assert record["metrics"]["val"]["category"]["n"] == 60
    assert training["label_counts"]["category"]["train"]["<missing>"] >= 90
    check = record["numerics"]
    assert check["rows"] == 60 and {"fp32", "onnx-int8"} <= set(check["checked"])
    assert check["checked"]["onnx-int8"]["min_cosine"] > 0.9
    # The accuracy check is recorded beside the weights; each serving machine picks among the
    # accurate numerics (not the build machine, which model.json no longer fixes).
    assert json.loads((link / "numerics.json").read_text())["accurate"] == check["accurate"]
    assert "numerics" not in json.loads((link / "model.json").read_text())
    # the test report and the printed figures are of the heads served (geolocation re-fitted:
    # v2; the toy recipe leaves category as trained), not of the jointly trained v1 alone
    assert out["served_heads"] == {"category": 1, "geolocation": 2}
    assert record["served"]["heads"] == out["served_heads"]
    served_geo = record["served"]["test"]["geolocation"]
    assert out["test_geolocation"] == {k: v for k, v in served_geo.items() if k != "slices"}
    assert out["test_geolocation"] != record["metrics"]["test"]["geolocation"]
    report = json.loads((link / "report" / "test" / "metrics.json").read_text())
    assert "geolocation v2" in (link / "report" / "test" / "REPORT.md").read_text()
    assert report
    assert not list(models.glob(".*partial*")), "no partial folders or checkpoints left behind"

    model = ProfileModel.load(link)
    assert model.encoder.numerics in check["accurate"]
    # the recipe's text settings reach the encoder that serves (links cut to their host)
    assert model.encoder.assembly.link_hosts_only is True
    # the geolocation head served is the one re-fitted on the fine-tuned embeddings (v2), OTHER
    # scored but never assigned; the jointly trained head stays as v1
    assert record["refit_heads"]["geolocation"]["head_version"] == 2
    geo = model.heads["geolocation"]
    assert geo.head_version == 2 and geo.config.never_assign == ("OTHER",)
    # the toy recipe asks for language evidence (the shipped recipes do not): fitted on the
    # simulated rows' languages, kept with the head
    assert geo.language_ is not None and geo.language_.alpha == 0.5
    assert "en" in geo.language_.languages
    # ... and class biases calibrated with the temperature on the validation rows (the category
    # head, which the toy recipe does not re-fit, keeps temperature-only calibration)
    assert geo.class_bias_ is not None and len(geo.class_bias_) == len(geo.labels)
    assert any(b != 0.0 for b in geo.class_bias_)
    assert model.heads["category"].class_bias_ is None
    assert (link / "heads" / "geolocation" / "v1").is_dir()
    assert not list(models.glob("*.refit-train.jsonl"))
    assert set(model.heads) == {"geolocation", "category"}
    # Location emoji are whole pieces of the shipped vocabulary.
    assert model.encoder.tokenizer.tokenize("📍")[-1] == "📍"


def test_if_missing_skips_and_a_real_folder_is_never_replaced(tiny_base_dir, home, capsys):
    from server.cli import main

    models = home / "models"
    (models / "default").mkdir(parents=True)
    (models / "default" / "model.json").write_text("{}")
    args = ["build-default", "--recipe", TOY_RECIPE, "--base", str(tiny_base_dir)]
    args += ["--models-root", str(models), "--data-root", str(home / "data"), "--no-progress"]
    assert main([*args, "--if-missing"]) == 0
    assert "nothing to build" in capsys.readouterr().err

    assert main(args) == 1
    err = capsys.readouterr().err
    assert "is a real folder" in err and "Traceback" not in err
    assert (models / "default" / "model.json").read_text() == "{}"


def test_unknown_recipe_is_a_clear_error(tmp_path, capsys):
    from embedder.errors import InvalidInputError
    from heads.training.recipes import get_recipe
    from server.cli import main

    with pytest.raises(InvalidInputError, match=r"unknown recipe 'big'; known: default, full, or"):
        get_recipe("big")
    assert main(["build-default", "--recipe", "big", "--models-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown recipe 'big'" in err


def test_shipped_recipes_round_trip_and_a_bad_file_names_its_field(tmp_path):
    from embedder.errors import InvalidInputError
    from heads.training.recipes import Recipe, get_recipe, recipe_names

    assert recipe_names() == ("default", "full")
    for name in recipe_names():
        recipe = get_recipe(name)
        assert recipe.name == name
        assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    # A hand-written subset: the rest takes the dataclasses' defaults; overrides replace.
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"name": "small", "simulate_n": 10, "test_n": 5, "train": {}}))
    recipe = get_recipe(small, device="cpu")
    assert recipe.train.device == "cpu" and recipe.train.layers == 3
    assert recipe.refit_heads == ("geolocation",)

    bad = tmp_path / "bad.json"
    head = {"name": "x", "simulate_n": 1, "test_n": 1}
    bad.write_text(json.dumps({**head, "train": {"loop": {"lrr": 1}}}))
    with pytest.raises(InvalidInputError, match=r"bad.json: unknown field\(s\) train.loop.lrr"):
        get_recipe(bad)
    bad.write_text(json.dumps({**head, "train": {"loop": {"lr": -1}}}))
    with pytest.raises(InvalidInputError, match=r"bad.json: train.loop: learning rates must be"):
        get_recipe(bad)


def test_recipe_simulator_settings_are_checked_and_get_their_own_corpus(tmp_path):
    from embedder.errors import InvalidInputError
    from heads.training.recipes import corpus_dir, get_recipe

    head = {"name": "x", "simulate_n": 10, "test_n": 5, "train": {}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(head))
    plain = get_recipe(path)
    path.write_text(json.dumps({**head, "simulator": {"real_name_share": 0.5}}))
    named = get_recipe(path)
    assert named.simulator_config().real_name_share == 0.5
    assert plain.simulator_config().real_name_share == 0.0
    # Another simulator never reuses the plain corpus folder (nor the plain one a named one).
    assert corpus_dir(tmp_path, plain).name == "sim-10-5-seed0"
    assert corpus_dir(tmp_path, named).name.startswith("sim-10-5-seed0-")
    for bad, message in [
        ({"real_name_shares": 0.5}, r"simulator.real_name_shares is not a numeric"),
        ({"prior_percent": 1.0}, r"simulator.prior_percent is not a numeric"),
        ({"real_name_share": "high"}, r"simulator.real_name_share must be a number"),
        ({"real_name_share": 1.5}, r"simulator.real_name_share must be in \[0, 1\], got 1.5"),
    ]:
        path.write_text(json.dumps({**head, "simulator": bad}))
        with pytest.raises(InvalidInputError, match=r"r.json: recipe: " + message):
            get_recipe(path)


def test_recipe_refuses_language_evidence_settings_without_the_evidence(tmp_path):
    from embedder.errors import InvalidInputError
    from heads.training.recipes import get_recipe

    head = {"name": "x", "simulate_n": 10, "test_n": 5, "train": {}}
    path = tmp_path / "r.json"
    for field_name, value in [
        ("refit_language_evidence_only", ["en"]),
        ("refit_language_evidence_power", 2.0),
        ("refit_language_evidence_after_calibration", True),
    ]:
        path.write_text(json.dumps({**head, field_name: value}))
        with pytest.raises(InvalidInputError, match=rf"r.json: recipe: {field_name} applies"):
            get_recipe(path)
        path.write_text(json.dumps({**head, field_name: value, "refit_language_evidence": 0.5}))
        assert getattr(get_recipe(path), field_name)


def test_recipe_changes_name_settings_not_prose():
    from heads.training.recipes import get_recipe, recipe_changes

    toy = get_recipe(TOY_RECIPE)
    recorded = json.loads(json.dumps(toy.to_dict()))
    assert recipe_changes(recorded, toy) == []
    recorded["notes"] = "other words"
    recorded["train"]["loop"]["lr"] = 0.5
    recorded["refit_class_bias"] = False
    del recorded["simulator"]  # a record from before the field: its default
    assert recipe_changes(recorded, toy) == ["refit_class_bias", "train.loop.lr"]
    assert recipe_changes({"name": "toy", "bogus": 1}, toy) is None
    assert recipe_changes(None, toy) is None


def test_a_model_built_before_link_cutting_is_rebuilt_by_the_default_recipe():
    # A record that predates a setting reads as the setting's default, so a new setting's
    # default must be the old behaviour: a model built before links were cut is a change.
    from heads.training.recipes import get_recipe, recipe_changes

    recipe = get_recipe("default")
    assert recipe.train.link_hosts_only is True
    recorded = json.loads(json.dumps(recipe.to_dict()))
    del recorded["train"]["link_hosts_only"]
    del recorded["train"]["mask_mentions"]
    assert recipe_changes(recorded, recipe) == ["train.link_hosts_only"]


def test_if_missing_refits_heads_when_only_head_settings_changed(tiny_base_dir, home, capsys):
    from heads.model import ProfileModel, head_versions
    from heads.training.recipes import read_build
    from server.cli import main

    models = home / "models"
    args = ["build-default", "--base", str(tiny_base_dir), "--models-root", str(models)]
    args += ["--data-root", str(home / "data"), "--no-progress", "--if-missing"]
    assert main([*args, "--recipe", TOY_RECIPE]) == 0
    capsys.readouterr()
    link = models / "default"
    before = read_build(link)
    encoder_files = {p.name: p.stat().st_mtime_ns for p in (link / "encoder").iterdir()}

    # The recipe now leaves language evidence and class biases off: same encoder, new heads.
    changed = json.loads(Path(TOY_RECIPE).read_text())
    changed.update(refit_language_evidence=0.0, refit_class_bias=False, notes="changed")
    path = home / "toy.json"
    path.write_text(json.dumps(changed))
    assert main([*args, "--recipe", str(path)]) == 0
    err = capsys.readouterr().err
    assert "refit_class_bias, refit_language_evidence" in err and "new versions" in err
    assert head_versions(link, "geolocation") == [1, 2, 3]
    model = ProfileModel.load(link)
    geo = model.heads["geolocation"]
    assert geo.head_version == 3 and geo.class_bias_ is None and geo.language_ is None
    assert model.encoder.embedding_version == before["embedding_version"]
    assert {p.name: p.stat().st_mtime_ns for p in (link / "encoder").iterdir()} == encoder_files
    after = read_build(link)
    assert after["recipe"]["refit_class_bias"] is False and after["metrics"] == before["metrics"]
    (update,) = after["head_updates"]
    assert update["changed"] == ["refit_class_bias", "refit_language_evidence"]
    assert update["refit_heads"]["geolocation"]["head_version"] == 3
    # the folder's test report follows the heads served
    assert after["served"]["heads"] == {"category": 1, "geolocation": 3}
    assert "geolocation v3" in (link / "report" / "test" / "REPORT.md").read_text()

    # Built with this recipe now: nothing more to do.
    assert main([*args, "--recipe", str(path)]) == 0
    assert "nothing to build" in capsys.readouterr().err
    assert head_versions(link, "geolocation") == [1, 2, 3]


def test_refit_rows_add_profiles_fine_tuning_did_not_read(tmp_path):
    from embedder.errors import InvalidInputError
    from heads.training.recipes import Recipe, refit_rows
    from heads.training.run import fine_tuning_sample

    toy = json.loads(Path(TOY_RECIPE).read_text())
    toy["train"]["max_train"] = 20
    lines = [json.dumps({"id": f"p{i}"}) + "\n" for i in range(50)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(lines[:7]) + "\n" + "".join(lines[7:]))  # a blank line does not count

    plain = Recipe.from_dict(toy)
    assert refit_rows(path, plain) == lines[:20]  # as before the setting existed

    read = set(fine_tuning_sample(50, 20, plain.train.loop.seed).tolist())
    unread = [i for i in range(20, 50) if i not in read]
    assert len(read) == 20 and 0 < len(unread) < 30
    rows = refit_rows(path, Recipe.from_dict({**toy, "refit_extra_rows": 5}))
    assert rows == lines[:20] + [lines[i] for i in unread[:5]]
    everything = refit_rows(path, Recipe.from_dict({**toy, "refit_extra_rows": 1000}))
    assert everything == lines[:20] + [lines[i] for i in unread]

    with pytest.raises(InvalidInputError, match="refit_extra_rows must be >= 0"):
        Recipe.from_dict({**toy, "refit_extra_rows": -1})
    toy["train"]["max_train"] = None
    with pytest.raises(InvalidInputError, match=r"train\.max_train is null"):
        Recipe.from_dict({**toy, "refit_extra_rows": 5})
