"""bench/real_compare.py: two runs of the real-data suite, B minus A with paired intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def real_compare(load_bench):
    return load_bench("real_compare")


def _run(path: Path, sets: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sets": sets}))
    return path


def _set(y: np.ndarray, pred: np.ndarray, assigned: np.ndarray, digest: str = "abc") -> dict:
    return {
        "rows_digest": digest,
        "y": y.tolist(),
        "pred": pred.tolist(),
        "assigned": assigned.astype(int).tolist(),
    }


def test_b_minus_a_on_the_same_rows(real_compare, tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 5, n)
    pred_a = np.where(rng.random(n) < 0.6, y, (y + 1) % 5)
    pred_b = pred_a.copy()
    fixed = np.flatnonzero(pred_a != y)[:60]  # B gets 60 more rows right, nothing else changes
    pred_b[fixed] = y[fixed]
    given = rng.random(n) < 0.3
    a = _run(
        tmp_path / "A" / "metrics.json", {"s": _set(y, pred_a, given), "old": _set(y, y, given)}
    )
    b = _run(tmp_path / "B" / "metrics.json", {"s": _set(y, pred_b, given)})
    assert real_compare.main([str(a), str(b), "--names", "v3", "v4", "--n-bootstrap", "400"]) == 0
    out = capsys.readouterr().out
    assert "| set | n | rows with the same argmax | accuracy v3 / v4 | v4 - v3 |" in out
    row = next(line for line in out.splitlines() if line.startswith("| s |"))
    assert "| 2000 | 97.0% |" in row and "| +3.0 (+" in row  # 60 of 2000 rows: +3.0 points
    assert "Only in `v3` (not compared): old." in out
    result = real_compare.compare_runs(
        real_compare.load_run(a), real_compare.load_run(b), n_bootstrap=400
    )
    diff = result["sets"]["s"]["b_minus_a"]["accuracy"]
    assert diff["difference"] == pytest.approx(0.03)
    assert 0.0 < diff["interval"][0] < 0.03 < diff["interval"][1]  # every replicate gains
    own = result["sets"]["s"]["b_minus_a"]["selective_accuracy"]
    expect = (pred_b == y)[given].mean() - (pred_a == y)[given].mean()
    assert own["difference"] == pytest.approx(expect)
    # a run compared with itself: all zero
    same = real_compare.compare_runs(real_compare.load_run(a), real_compare.load_run(a))
    assert same["sets"]["s"]["b_minus_a"]["macro_f1"] == {"difference": 0.0, "interval": [0.0, 0.0]}
    docs = tmp_path / "X.md"
    docs.write_text("# X\n\n<!-- cmp:begin -->\nold\n<!-- cmp:end -->\n")
    argv = [str(a), str(b), "--docs", str(docs), "--marker", "cmp", "--n-bootstrap", "50"]
    assert real_compare.main(argv) == 0
    assert "\nold\n" not in docs.read_text() and "| s | 2000 |" in docs.read_text()


def test_runs_that_cannot_be_compared_are_refused_by_name(real_compare, tmp_path, capsys) -> None:
    y = np.array([0, 1, 1, 0])
    given = np.ones(4, bool)
    a = _run(tmp_path / "a.json", {"s": _set(y, y, given, digest="aaa")})
    other_rows = _run(tmp_path / "b.json", {"s": _set(y, y, given, digest="bbb")})
    assert real_compare.main([str(a), str(other_rows)]) == 2
    assert "set 's': the two runs scored different rows" in capsys.readouterr().err
    old = _run(tmp_path / "old.json", {"s": {"n": 4, "model": {}}})
    assert real_compare.main([str(a), str(old)]) == 2
    err = capsys.readouterr().err
    assert "old.json: set 's' lacks rows_digest, y, pred, assigned" in err and "again" in err
    broken = tmp_path / "broken.json"
    broken.write_text('{"sets": \n')
    assert real_compare.main([str(broken), str(a)]) == 2
    assert "broken.json: not JSON (line 2)" in capsys.readouterr().err
    assert real_compare.main([str(tmp_path / "none.json"), str(a)]) == 2
    assert "none.json: cannot read" in capsys.readouterr().err
    assert real_compare.main([str(a), str(a), "--n-bootstrap", "0"]) == 2
    assert "--n-bootstrap must be >= 1, got 0" in capsys.readouterr().err
