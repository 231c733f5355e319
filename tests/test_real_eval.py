"""The real-data evaluation suite on hand-written profiles (tests/data/real), with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedder.labels import GEO_LABELS

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "real"


@pytest.fixture(scope="module")
def real_eval(load_bench):
    return load_bench("real_eval")


@pytest.fixture(scope="module")
def geo_model(tiny_encoder, tmp_path_factory) -> Path:
    """A tiny model whose geolocation head was fitted on the fixture's own labels (so it learns)."""
    from embedder.data import read_profiles
    from heads.model import save_model
    from heads.softmax import standard_head

    enc = tiny_encoder
    rows = [r for f in sorted(FIXTURE.glob("*.jsonl")) for r in read_profiles(f).rows]
    x = enc.encode([r.profile for r in rows])
    y = [r.labels["country"] for r in rows]
    head = standard_head("geolocation", embedding_version=enc.embedding_version, in_dim=enc.dim)
    head.fit(x, y, val_embeddings=x, val_labels=y, missing_classes="abstain", target_precision=0.5)
    return save_model(tmp_path_factory.mktemp("geo") / "model", enc, {"geolocation": head})


def test_language_id_anchor_reads_the_language(real_eval):
    anchor = real_eval.LanguageIdBaseline()
    probs = anchor.predict_proba(
        [
            "Bonne journée à tous, merci pour vos messages",
            "今日は渋谷でランチしました",
            "Obrigado a todos pelo carinho",
        ]
    )
    assert probs.shape == (3, len(GEO_LABELS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert [GEO_LABELS[i] for i in probs.argmax(axis=1)] == ["FR", "JP", "BR"]
    # Japanese is written in Japan only: nearly all the mass
    assert probs[1, GEO_LABELS.index("JP")] > 0.9


def test_populations_have_the_asked_shares(real_eval):
    y = np.array([0] * 300 + [1] * 200 + [2] * 100)
    pops = real_eval.populations(y, size=1000, seed=0)
    assert set(pops) == {"natural", "top-heavy", "dirichlet", "pair"}
    top = np.bincount(y[pops["top-heavy"]], minlength=3) / 1000
    assert abs(top[0] - 0.7) < 0.06
    pair = np.bincount(y[pops["pair"]], minlength=3) / 1000
    assert pair[2] == 0 and abs(pair[0] - 0.5) < 0.06


@pytest.mark.slow  # the whole real-data evaluation (anchors, bootstrap, plots), twice
def test_real_eval_writes_report_and_docs(real_eval, geo_model, tmp_path):
    docs = tmp_path / "REAL_DATA.md"
    docs.write_text(
        "# Real data\n\nintro stays\n\n<!-- real-eval:begin -->\nold\n"
        "<!-- real-eval:end -->\n\ntail stays\n"
    )
    out = tmp_path / "out"
    argv = ["--model", str(geo_model), "--data", str(FIXTURE), "--out", str(out)]
    argv += ["--docs", str(docs), "--cache", "", "--n-bootstrap", "5"]
    assert real_eval.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"bios", "posts"}
    posts = metrics["sets"]["posts"]
    assert posts["n"] == 24
    # the head was fitted on these rows: it must beat chance by far, and the anchors are there
    assert posts["model"]["accuracy"] > 0.5
    for anchor in ("langid", "tfidf_lr", "frozen_head"):
        assert 0.0 <= posts[anchor]["accuracy"] <= 1.0
    assert posts["langid"]["accuracy"] >= 0.5  # French, Portuguese, Japanese, German, Polish...
    # how sure: the model's interval holds its accuracy; differences are paired on the same rows
    # per row, for bench/real_compare.py
    assert len(posts["pred"]) == len(posts["y"]) == len(posts["assigned"]) == 24
    assert np.mean(np.array(posts["pred"]) == np.array(posts["y"])) == pytest.approx(
        posts["model"]["accuracy"]
    )
    assert np.mean(posts["assigned"]) == pytest.approx(posts["model"]["coverage"])
    versus = posts["versus"]
    own = posts["model"]["own_label_precision_interval"]
    assert own is None or own[0] <= posts["model"]["own_label_precision"] <= own[1]
    lo, hi = versus["model"]["accuracy"]
    assert lo <= posts["model"]["accuracy"] <= hi
    assert versus["model"]["macro_f1"][0] <= posts["model"]["macro_f1_present"]
    for anchor in ("langid", "tfidf_lr", "frozen_head"):
        diff = versus[anchor]["accuracy"]
        assert diff["difference"] == pytest.approx(
            posts["model"]["accuracy"] - posts[anchor]["accuracy"]
        )
        assert diff["interval"][0] <= diff["difference"] <= diff["interval"][1]
        assert versus[anchor]["macro_f1"]["difference"] == pytest.approx(
            posts["model"]["macro_f1_present"] - posts[anchor]["macro_f1_present"]
        )
    assert {"natural", "top-heavy", "dirichlet", "pair"} == set(posts["audience"])
    assert 0.0 <= posts["audience"]["natural"]["average"]["tv"] <= 1.0
    # the default estimator's low-evidence flags are recorded per population and shown
    assert all(isinstance(row["flags"], list) for row in posts["audience"].values())
    # calibrate on half A, scored on half B: temperature only, with biases, and on a few rows
    for key in (
        "half_b_prior_swap",
        "half_b_calibrated_t",
        "half_b_calibrated",
        "half_b_calibrated_few",
    ):
        assert posts[key]["n"] == posts["half_b_shipped"]["n"] > 0
    assert set(posts["audience_calibrated"]) == set(posts["audience"])
    assert (out / "posts_reliability.png").stat().st_size > 1000
    report = (out / "REPORT.md").read_text()
    assert "## posts" in report and "| FR |" in report
    text = docs.read_text()
    assert text.startswith("# Real data\n\nintro stays") and text.rstrip().endswith("tail stays")
    assert "\nold\n" not in text and "| posts | 24 |" in text and "bench/real_eval.py" in text
    assert "**Re-calibrated on real labels**" in text and "after `profile-embed calibrate`" in text
    assert "| flags (ensemble) |" in text and " flagged |" in text
    assert "**How sure**" in text and "| accuracy - char TF-IDF LR |" in text
    assert "| **minus ensemble** (95%, populations resampled) |" in text
    # a second run replaces the block instead of appending another
    assert real_eval.main([*argv, "--no-anchors"]) == 0
    assert docs.read_text().count("<!-- real-eval:begin -->") == 1


def test_real_sources_keeps_only_unreserved_multilang_rows(load_bench, tmp_path):
    sources = load_bench("real_sources")
    ids = [str(10**17 + i) for i in range(200)]
    lines = ["\tTweet ID\tCountry\tDate\tTweet"]
    lines += [f"{i}\t{tid}\tFR\t2013\tBonjour {i}" for i, tid in enumerate(ids)]
    src = tmp_path / "all_annotated.tsv"
    src.write_text("\n".join(lines) + "\n")
    counts = sources.convert("multilang", src, tmp_path / "ml.jsonl")
    kept = [json.loads(x)["id"] for x in (tmp_path / "ml.jsonl").read_text().splitlines()]
    expected = [f"ml-{t}" for t in ids if sources.multilang_kept(t)]
    assert kept == expected and counts["FR"] == len(expected)
    assert 30 < len(expected) < 90  # about 3 in 10
    with pytest.raises(sources.SourceError, match="dev/ is reserved"):
        list(sources.tass(tmp_path / "dev"))


def test_learning_curve_compares_heads_and_anchors(load_bench, geo_model, tmp_path):
    curve = load_bench("learning_curve")
    docs = tmp_path / "REAL_DATA.md"
    argv = ["--model", str(geo_model), "--data", str(FIXTURE), "--docs", str(docs)]
    argv += [
        "--sizes",
        "8,12",
        "--encoders",
        "model",
        "--cache",
        "",
        "--out",
        str(tmp_path / "c.json"),
    ]
    assert curve.main(argv) == 0
    results = json.loads((tmp_path / "c.json").read_text())
    posts = results["country"]["posts"]["sizes"]
    assert set(posts) == {"8", "12"}
    assert set(posts["12"]) == {
        "calibrate/model",
        "train-head/model",
        "sklearn-lr/model",
        "char-tfidf-lr",
    }
    assert 0.0 <= posts["12"]["train-head/model"]["accuracy"] <= 1.0
    # the shipped head was fitted on these rows: re-calibrating it keeps it far above chance
    assert posts["12"]["calibrate/model"]["accuracy"] > 0.5
    assert "calibrate/model" not in results["sentiment"]["posts"]["sizes"]["12"]
    # every method but the most accurate is compared with it on the same held-out rows
    row = posts["12"]
    best = max(row, key=lambda m: row[m]["accuracy"])
    assert "versus_best" not in row[best]
    for m in set(row) - {best}:
        d = row[m]["versus_best"]
        assert d["difference"] == pytest.approx(row[m]["accuracy"] - row[best]["accuracy"])
        assert d["difference"] <= 0 and d["interval"][0] <= d["difference"] <= d["interval"][1]
    # the second task is read from the data's sentiment field (posts only carry it)
    assert set(results["sentiment"]) == {"posts"}
    text = docs.read_text()
    assert "<!-- learning-curve:begin -->" in text and "**posts** (sentiment" in text


def test_prior_sweep_reweights_by_the_target_prior(load_bench, geo_model, capsys):
    sweep = load_bench("prior_sweep")
    labels = list(GEO_LABELS)
    pop = sweep.label_populations(labels)
    assert pop.sum() == pytest.approx(1.0)
    # OTHER is the rest of the world: more than any one target country
    assert pop[labels.index("OTHER")] > pop.max() - 1e-12
    prior = np.linspace(1.0, 2.0, len(labels))
    prior /= prior.sum()
    targets = dict(sweep.target_priors(prior, pop))
    np.testing.assert_allclose(targets["shipped (training prior)"], prior)
    flat = targets["flat-1.0"]
    np.testing.assert_allclose(flat, flat[0])  # uniform over the labels

    from heads.model import ProfileModel

    assert sweep.main(["--model", str(geo_model), "--data", str(FIXTURE), "--cache", ""]) == 0
    table = capsys.readouterr().out
    rows = {
        line.split(" | ")[0].lstrip("| "): line
        for line in table.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    assert set(rows) >= {"target prior", "shipped (training prior)", "flat-1.0", "pop-1.0"}
    # the shipped row is the head's own argmax accuracy on each set
    real_eval = load_bench("real_eval")
    model = ProfileModel.load(geo_model, heads=["geolocation"])
    head = model.head("geolocation")
    cells = rows["shipped (training prior)"].strip(" |").split(" | ")[1:]
    for rs, cell in zip(real_eval.load_sets(FIXTURE), cells, strict=True):
        probs = head.predict_proba(model.encoder.encode([r.profile for r in rs.rows]))
        assert cell.split(" / ")[0] == f"{(probs.argmax(1) == rs.y).mean():.3f}"


def test_audience_after_calibrate_scores_every_population(load_bench, geo_model, capsys):
    bench = load_bench("audience_after_calibrate")
    # the simplex solve: an identity confusion returns the target; a label left out gets 0
    target = np.array([0.5, 0.3, 0.2])
    np.testing.assert_allclose(bench._simplex_nnls(np.eye(3), target, np.ones(3, bool)), target)
    out = bench._simplex_nnls(np.eye(3), target, np.array([True, True, False]))
    assert out[2] == 0 and out.sum() == pytest.approx(1.0)

    sets = load_bench("real_eval").load_sets(FIXTURE)
    project = {"average", "acc", "em", "guarded", "ensemble"}
    for head, names in (
        ("calibrated", project | {"acc>=1", "pacc>=1", "em>=1", "raw-em"}),
        ("new", project),
    ):
        argv = ["--model", str(geo_model), "--data", str(FIXTURE), "--min-rows", "1"]
        assert bench.main([*argv, "--head", head]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert sum("half-B accuracy" in line for line in out) == len(sets)
        lines = [line for line in out if "half-B accuracy" not in line]
        # four populations per set, then the means and their intervals
        assert len(lines) == 4 * len(sets) + 2
        means = dict(cell.rsplit(" ", 1) for cell in lines[-2].split(": ", 1)[1].split(", "))
        assert set(means) == names
        assert all(0.0 <= float(v) <= 1.0 for v in means.values())
        assert lines[-1].startswith("95% interval of the mean (populations resampled): ")
        for cell in lines[-1].split(": ", 1)[1].split(", "):
            name, span, count = cell.split(" ", 2)
            lo, hi = (float(v) for v in span.split("-"))
            assert lo <= float(means[name]) <= hi
            assert count.endswith(f"/{4 * len(sets)} <= 0.15)")


def test_mean_tv_differences_are_paired_over_populations(real_eval):
    rows = [{"a": {"tv": 0.1 * i + 0.1}, "b": {"tv": 0.1 * i}, "c": {"tv": 0.3}} for i in range(6)]
    rows.append({"a": {"error": "no confusion"}, "b": {"tv": 0.5}})
    out = real_eval.mean_tv_differences(rows, ["a", "b", "c"], "b")
    assert "b" not in out
    # a is 0.1 worse on every population it scored: a point interval, however wide the spread
    assert out["a"] == "+0.10 (+0.10 to +0.10)"
    mean_gap = np.mean([0.3 - 0.1 * i for i in range(6)])
    assert out["c"].startswith(f"{mean_gap:+.2f} (")


def test_language_rule_scores_a_run_from_its_per_row_fields(
    load_bench, real_eval, tmp_path, capsys
):
    rule = load_bench("language_rule")
    sets = real_eval.load_sets(FIXTURE)
    runs = {}
    for rs in sets:
        pred = rs.y.copy()
        pred[0] = GEO_LABELS.index("JP")  # one wrong label, for a country few French posts get
        runs[rs.name] = {"y": rs.y.tolist(), "pred": pred.tolist(), "assigned": [1] * len(pred)}
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"sets": runs}))
    assert rule.main([str(metrics), "--data", str(FIXTURE), "--floors", "0,1.01"]) == 0
    out = capsys.readouterr().out
    for rs in sets:
        n = len(rs.y)
        row = next(line for line in out.splitlines() if line.startswith(f"| {rs.name} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        # floor 0 withdraws nothing; a floor over 1 withdraws every label
        assert cells[2] == cells[3] and cells[2].startswith(f"100.0% / {(n - 1) / n:.3f}")
        assert cells[4] == "0.0% / -"
    runs[sets[0].name]["y"] = runs[sets[0].name]["y"][1:]
    metrics.write_text(json.dumps({"sets": runs}))
    assert rule.main([str(metrics), "--data", str(FIXTURE)]) == 2
    assert "no per-row fields for these rows" in capsys.readouterr().err


def test_abstention_rules_scores_stricter_targets(load_bench, geo_model, tmp_path, capsys):
    rules = load_bench("abstention_rules")
    sim = tmp_path / "sim"
    sim.mkdir()
    rows = "".join(p.read_text() for p in sorted(FIXTURE.glob("*.jsonl")))
    for name in ("val.first8000.jsonl", "test.jsonl"):
        (sim / name).write_text(rows)
    argv = ["--model", str(geo_model), "--data", str(FIXTURE), "--sim", str(sim), "--cache", ""]
    out = tmp_path / "rules.json"
    assert rules.main([*argv, "--targets", "0.6,0.99", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| target0.6 | target0.99 |" in table.splitlines()[0]
    scored = json.loads(out.read_text())
    for e in scored.values():
        # the tiny head is sure enough of most rows for 0.6; no class holds 0.99 on 40 rows
        assert e["target0.6"]["coverage"] > 0.5 and e["target0.99"]["coverage"] == 0.0
    with pytest.raises(SystemExit):
        rules.main([*argv, "--targets", "1.5"])
    assert "each target must be in (0, 1)" in capsys.readouterr().err


def test_learning_curve_scores_a_label_outside_the_set_as_wrong(load_bench):
    lc = load_bench("learning_curve")
    y = np.array([0, 1, 2, 0, 1, 2] * 20)
    right = y.copy()
    outside = y.copy()
    outside[:30] = -1  # calibrate_predict's answer for a label the set does not have
    row = lc.score_row({"right": right, "outside": outside}, y, k=3)
    assert row["right"]["accuracy"] == 1.0 and row["outside"]["accuracy"] == 0.75
    diff = row["outside"]["versus_best"]
    assert diff["difference"] == pytest.approx(-0.25) and diff["interval"][1] < 0
