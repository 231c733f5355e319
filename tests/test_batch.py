"""``profile-embed batch`` on a local Ray (2 CPUs) with a tiny model and simulated profiles.

One Ray instance per module. The model folder is built once: the session's ``tiny_encoder`` plus
``geolocation`` and ``category`` heads fitted for a few epochs on simulated profiles.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

N_PROFILES = 2000
N_FILES_JSONL = 4
N_FILES_PARQUET = 2


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _simulate(n: int, seed: int):
    from embedder.simulator.core import simulate_profiles

    return simulate_profiles(n, seed)


def build_model_dir(encoder, root: Path, n_train: int = 600) -> Path:
    """A model folder (``save_model``): the tiny encoder + geolocation/category heads."""
    from heads.model import save_model
    from heads.softmax import standard_head

    rows = _simulate(n_train, seed=7)
    emb = encoder.encode([r.profile for r in rows])
    half = n_train // 2
    heads = {}
    for name, field in (("geolocation", "country"), ("category", "category")):
        y = [r.labels[field] for r in rows]
        head = standard_head(name, embedding_version=encoder.embedding_version, in_dim=encoder.dim)
        head.fit(emb[:half], y[:half], val_embeddings=emb[half:], val_labels=y[half:], epochs=20,
                 missing_classes="abstain")  # fmt: skip
        heads[name] = head
    return save_model(root / "model", encoder, heads)


@pytest.fixture(scope="module")
def model_dir(tiny_encoder, tmp_path_factory) -> Path:
    return build_model_dir(tiny_encoder, tmp_path_factory.mktemp("batch_model"))


BAD_JSONL_LINES = [
    b"{not json",  # invalid JSON
    json.dumps({"username": "no_id"}).encode(),  # missing id
    json.dumps({"id": "bad-bio", "biography": 42}).encode(),  # wrong type
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Profiles split over JSONL and Parquet files, with 3 bad JSONL lines and 1 bad Parquet row."""
    root = tmp_path_factory.mktemp("batch_in")
    rows = [r.profile.to_dict() for r in _simulate(N_PROFILES, seed=11)]
    for r in rows:  # keep inputs compact and Parquet-typed
        r.pop("cues", None)
        r.pop("cue_text", None)
    n_parts = N_FILES_JSONL + N_FILES_PARQUET
    parts = [rows[i::n_parts] for i in range(n_parts)]
    bad = []
    for i, part in enumerate(parts[:N_FILES_JSONL]):
        lines = [json.dumps(r, ensure_ascii=False).encode() for r in part]
        path = root / f"profiles-{i}.jsonl"
        if i == 1:
            for j, raw in zip((5, 10, 20), BAD_JSONL_LINES, strict=True):
                lines.insert(j, raw)
            bad = [(str(path), 6, None), (str(path), 11, "id"), (str(path), 21, "biography")]
        path.write_bytes(b"\n".join(lines) + b"\n")
    for i, part in enumerate(parts[N_FILES_JSONL:]):
        table = pa.Table.from_pylist(part)
        if i == 0:
            ids = table.column("id").to_pylist()
            ids[3] = None
            table = table.set_column(table.schema.get_field_index("id"), "id", pa.array(ids))
            bad.append((str(root / "profiles-p0.parquet"), 4, "id"))
        pq.write_table(table, root / f"profiles-p{i}.parquet")
    valid = {r["id"] for r in rows} - {parts[N_FILES_JSONL][3]["id"]}
    profiles = {r["id"]: r for r in rows}
    return root, valid, bad, profiles


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Ray's raylet, GCS and workers of the child's instance)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the child and every process it started, as a machine crash would."""
    pids = [proc.pid, *_descendants(proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _results(out: Path):
    files = sorted((out / "results").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None


def _config(model_dir, input_dir, out, **kw):
    from server.batch.pipeline import BatchConfig

    return BatchConfig(
        model_dir=model_dir,
        input=str(input_dir),
        output=out,
        num_actors=1,
        batch_size=128,
        show_progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def first_run(model_dir, inputs, tmp_path_factory):
    from server.batch.pipeline import run_batch

    out = tmp_path_factory.mktemp("batch_out")
    summary = run_batch(
        _config(model_dir, inputs[0], out, with_embeddings=True, with_probabilities=True)
    )
    return out, summary


def test_output_equals_in_process_predict(model_dir, inputs, first_run):
    from embedder.profile import Profile
    from heads.model import ProfileModel

    _, valid, _, profiles = inputs
    out, summary = first_run
    table = _results(out)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == sorted(valid)
    assert summary["rows_written"] == len(valid)
    model = ProfileModel.load(model_dir)
    sample = ids[:300]
    plist = [Profile.from_dict(profiles[i])[0] for i in sample]
    expected_emb = model.encoder.encode(plist)
    expected = model.predict(plist)
    got = table.slice(0, 300)
    emb = np.stack(got.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(emb, expected_emb, atol=1e-5)
    assert set(table.column("embedding_version").to_pylist()) == {model.encoder.embedding_version}
    for head, preds in expected.items():
        assert got.column(f"{head}_argmax").to_pylist() == [p.argmax for p in preds]
        assert got.column(f"{head}_label").to_pylist() == [p.label for p in preds]
        assert got.column(f"{head}_reason").to_pylist() == [p.reason for p in preds]
        np.testing.assert_allclose(
            got.column(f"{head}_score").to_numpy(), [p.score for p in preds], atol=1e-5
        )
        probs = np.stack(got.column(f"{head}_probs").to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(probs, np.stack([p.probabilities for p in preds]), atol=1e-5)


def test_bad_rows_reported_and_counted(inputs, first_run):
    _, _, bad, _ = inputs
    out, summary = first_run
    assert summary["rows_bad"] == len(bad)
    got = sorted((b["file"], b["row"], b["field"]) for b in summary["bad_rows"])
    assert got == sorted(bad)
    assert summary["files_failed"] == []
    saved = json.loads((out / "summary.json").read_text())
    assert saved["rows_bad"] == len(bad)


def test_second_run_skips_everything(model_dir, inputs, first_run):
    from server.batch.pipeline import run_batch

    out, _ = first_run
    before = sorted(p.name for p in (out / "results").iterdir())
    summary = run_batch(
        _config(model_dir, inputs[0], out, with_embeddings=True, with_probabilities=True)
    )
    assert (
        summary["files_already_done"] == summary["files_total"] == N_FILES_JSONL + N_FILES_PARQUET
    )
    assert summary["rows_read"] == summary["rows_written"] == 0
    assert sorted(p.name for p in (out / "results").iterdir()) == before
    # A subset of the outputs (no embeddings) is also satisfied by these results.
    subset = run_batch(_config(model_dir, inputs[0], out, heads=("category",)))
    assert subset["files_already_done"] == subset["files_total"]


def test_rows_already_done_are_skipped_in_a_new_file(model_dir, inputs, first_run, tmp_path):
    """A re-export of known profiles under a new file name encodes nothing."""
    from server.batch.pipeline import run_batch

    out, _ = first_run
    copy_dir = tmp_path / "reexport"
    copy_dir.mkdir()
    shutil.copy(inputs[0] / "profiles-0.jsonl", copy_dir / "profiles-0-copy.jsonl")
    n_lines = len((copy_dir / "profiles-0-copy.jsonl").read_text().splitlines())
    summary = run_batch(
        _config(model_dir, copy_dir, out, with_embeddings=True, with_probabilities=True)
    )
    assert summary["rows_read"] == n_lines
    assert summary["rows_skipped"] == n_lines
    assert summary["rows_written"] == 0


@pytest.mark.slow  # a Ray batch run in a subprocess, killed, then run again
def test_killed_run_resumes_without_duplicates(model_dir, inputs, tmp_path):
    """SIGKILL the CLI midway (whole process group), re-run: every valid id once, no leftovers."""
    from server.batch.pipeline import run_batch

    src, valid, _, _ = inputs
    many = tmp_path / "many"
    many.mkdir()
    # 13 small files so that the kill lands between finished and unfinished files.
    for f in sorted(src.glob("*.jsonl"))[:2]:
        lines = f.read_bytes().splitlines()
        for k in range(6):
            (many / f"{f.stem}-{k}.jsonl").write_bytes(b"\n".join(lines[k::6]) + b"\n")
    shutil.copy(src / "profiles-p0.parquet", many / "profiles-p0.parquet")
    out = tmp_path / "out"
    env = {**os.environ, "RAY_ADDRESS": ""}
    cmd = [
        sys.executable,
        "-m",
        "server.cli",
        "batch",
        "--model",
        str(model_dir),
        "--input",
        str(many),
        "--output",
        str(out),
        "--num-actors",
        "1",
        "--batch-size",
        "32",
        "--num-cpus",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 120
    results = out / "results"
    while time.time() < deadline and proc.poll() is None:
        if results.is_dir() and len(list(results.glob("*.parquet"))) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    _kill_tree(proc)
    killed_with = len(list(results.glob("*.parquet")))
    assert 3 <= killed_with < 13
    summary = run_batch(_config(model_dir, many, out))
    assert summary["files_already_done"] >= 3
    assert summary["files_finished"] + summary["files_already_done"] == summary["files_total"] == 13
    ids = _results(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)), "duplicate ids after restart"
    expected = set()
    for f in many.glob("*.jsonl"):
        expected |= {
            json.loads(x).get("id") for x in f.read_text().splitlines() if x.startswith('{"')
        }
    expected |= set(pq.read_table(many / "profiles-p0.parquet", columns=["id"])["id"].to_pylist())
    assert set(ids) == (expected & valid)
    assert list((out / "_tmp").iterdir()) == []
    assert not list(results.glob(".*"))


def test_cli_batch_prints_summary_and_bad_rows(model_dir, inputs, tmp_path, capsys):
    from server.cli import main

    out = tmp_path / "cli_out"
    code = main(
        [
            "batch",
            "--model",
            str(model_dir),
            "--input",
            str(inputs[0] / "profiles-1.jsonl"),
            "--output",
            str(out),
            "--heads",
            "geolocation",
            "--num-actors",
            "1",
            "--no-progress",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["rows_bad"] == 3 and summary["files_finished"] == 1
    assert "row 11, field id" in captured.err
    cols = pq.read_schema(next((out / "results").glob("*.parquet"))).names
    assert "geolocation_label" in cols and "category_label" not in cols and "embedding" not in cols


def _audience_job(model_dir, followers, out, n_bootstrap=20):
    """``run_audience_job`` on one local actor, no progress bars; its summary."""
    from server.batch.audience_job import AudienceJobConfig, run_audience_job

    return run_audience_job(
        AudienceJobConfig(
            model_dir=model_dir,
            followers=str(followers),
            output=out,
            n_bootstrap=n_bootstrap,
            num_actors=1,
            show_progress=False,
        )
    )


def test_batch_audience_from_raw_follower_files(model_dir, inputs, tmp_path):
    """Raw follower files with influencer_id -> predictions -> groupby + map_groups estimates."""
    _, _, _, profiles = inputs
    followers = tmp_path / "followers"
    followers.mkdir()
    rows = list(profiles.values())[:300]
    with open(followers / "followers.jsonl", "w", encoding="utf-8") as fh:
        for i, r in enumerate(rows):
            rec = {**r, "influencer_id": f"inf-{i % 3}" if i < 297 else None}
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    out = tmp_path / "aud"
    summary = _audience_job(model_dir, followers, out)
    assert summary["influencers"] == 3
    assert summary["followers_used"] == 297 and summary["rows_without_influencer"] == 3
    lines = [json.loads(x) for x in (out / "audience.jsonl").read_text().splitlines()]
    assert [x["influencer_id"] for x in lines] == ["inf-0", "inf-1", "inf-2"]
    for rec in lines:
        assert rec["n"] == 99
        shares = rec["shares"].values()
        assert abs(sum(s["share"] for s in shares) - 1) < 1e-3
        assert all(0 <= s["lower"] <= s["upper"] <= 1 for s in shares)
    # Point estimates equal heads.audience run in-process on the same follower probabilities.
    from heads.audience import estimate_audience, head_audience_inputs
    from heads.model import ProfileModel

    head = ProfileModel.load(model_dir, heads=["geolocation"]).heads["geolocation"]
    preds = _results(out / "predictions")
    mask = [x == "inf-1" for x in preds.column("influencer_id").to_pylist()]
    probs = np.stack(preds.filter(pa.array(mask)).column("geolocation_probs").to_numpy(False))
    expected = estimate_audience(
        probs, labels=head.labels, n_bootstrap=0, **head_audience_inputs(head)
    )
    assert lines[1]["method"] == expected.method == "ensemble"  # the default, as the server's
    expected = expected.as_mapping()
    got = {k: v["share"] for k, v in lines[1]["shares"].items()}
    assert got == pytest.approx(expected, abs=1e-4)
    table = pq.read_table(out / "audience.parquet")
    assert table.num_rows == 3 and set(table.column_names) >= {"shares", "lower", "upper", "n"}
    # The predictions folder is a normal batch output: a second audience run reuses it.
    again = _audience_job(model_dir, followers, out)
    assert again["batch"]["files_already_done"] == 1


def test_reruns_keep_one_current_row_per_follower_and_influencer(model_dir, inputs, tmp_path):
    """Three ways a reused output folder went wrong: a follower of a second influencer was
    skipped as done, a changed input file kept its old rows beside the new ones, and a run of
    another head version was read by the audience job as more followers."""
    import os

    from server.batch.pipeline import run_batch

    _, _, _, profiles = inputs
    rows = list(profiles.values())[:40]
    followers = tmp_path / "followers"
    followers.mkdir()

    def write(name, recs):
        path = followers / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
        return path

    def audience():
        out = tmp_path / "aud"
        _audience_job(model_dir, followers, out, n_bootstrap=0)
        lines = [json.loads(x) for x in (out / "audience.jsonl").read_text().splitlines()]
        return {x["influencer_id"]: x["n"] for x in lines}

    write("a.jsonl", [{**r, "influencer_id": "A"} for r in rows[:20]])
    assert audience() == {"A": 20}
    # 1. the same 10 followers follow B too, in a file added later
    write("b.jsonl", [{**r, "influencer_id": "B"} for r in rows[:10]])
    assert audience() == {"A": 20, "B": 10}
    # 2. a.jsonl rewritten: one follower gone, one bio changed
    changed = [{**r, "influencer_id": "A"} for r in rows[:19]]
    changed[0]["biography"] = "moved to Lima 🇵🇪"
    path = write("a.jsonl", changed)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert audience() == {"A": 19, "B": 10}
    predictions = _results(tmp_path / "aud" / "predictions").to_pylist()
    a_rows = [r for r in predictions if r["influencer_id"] == "A"]
    assert sorted(r["id"] for r in a_rows) == sorted(r["id"] for r in changed)  # one row each
    # 3. a batch run of other settings into the same folder is not read as more followers
    run_batch(
        _config(
            model_dir,
            followers,
            tmp_path / "aud" / "predictions",
            with_probabilities=True,
            keep_fields=("influencer_id",),
        )
    )  # every head (the audience job ran geolocation alone): another spec, all rows again
    assert audience() == {"A": 19, "B": 10}


def test_a_kept_field_may_not_take_a_result_column_name(model_dir, inputs, tmp_path):
    from embedder.errors import InvalidInputError

    for name in ("id", "row_key", "geolocation_probs"):
        with pytest.raises(InvalidInputError, match="is a column of the results"):
            _config(model_dir, inputs[0], tmp_path / "out", keep_fields=(name,))


def test_read_row_keys_gives_the_column_in_file_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from server.batch.incremental import read_row_keys, row_key

    keys = [row_key(f"id{i}", bytes([i % 256]) * 32) for i in range(5000)]
    keys[7] = keys[7][:15] + b"\x00"  # a trailing zero byte is part of the key
    fixed = pa.array(keys, type=pa.binary(16))
    # two row groups, so the column arrives in chunks
    pq.write_table(pa.table({"row_key": fixed}), tmp_path / "f.parquet", row_group_size=1500)
    pq.write_table(pa.table({"row_key": pa.array(keys, type=pa.binary())}), tmp_path / "v.parquet")
    expected = np.asarray(keys, dtype="S16")
    for name in ("f.parquet", "v.parquet"):  # fixed-size buffers, and the plain-binary fallback
        got = read_row_keys(tmp_path / name)
        assert got.dtype == np.dtype("S16") and len(got) == len(keys)
        assert np.array_equal(got, expected) and got.tobytes() == expected.tobytes()
