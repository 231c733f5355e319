"""The serve process's malloc settings (glibc mmap and trim thresholds)."""

from __future__ import annotations

import ctypes
import platform

import pytest

from server.allocator import ENV, TRIM_ENV, fix_malloc_thresholds


def test_env_setting_wins(monkeypatch):
    monkeypatch.setenv(ENV, "65536")
    assert fix_malloc_thresholds() is False
    monkeypatch.delenv(ENV)
    monkeypatch.setenv(TRIM_ENV, "65536")
    assert fix_malloc_thresholds() is False


@pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not hasattr(ctypes.CDLL(None), "mallopt"),
    reason="mallopt is glibc's",
)
def test_threshold_is_set_on_glibc(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv(TRIM_ENV, raising=False)
    assert fix_malloc_thresholds() is True


def test_trimmer_runs_at_most_once_per_interval():
    from server.allocator import Trimmer

    trim = Trimmer(interval_s=3600)
    if trim._trim is None:
        assert trim() is False
        return
    assert trim() is True
    assert trim() is False and trim.trims == 1
    assert Trimmer(interval_s=0)() is True
