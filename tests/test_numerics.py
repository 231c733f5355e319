"""One list of numerics, checked by every entry point; the model's default applies everywhere."""

from __future__ import annotations

import json

import pytest

from embedder.numerics import NUMERICS, check_numerics, physical_cores
from server.cli import main
from server.config import ServerConfig


def test_numerics_list_and_threads(tmp_path) -> None:
    assert set(NUMERICS) == {
        "fp32", "bf16", "int8", "onnx-fp32", "onnx-int8", "openvino", "openvino-int8", "ct2-int8"
    }  # fmt: skip
    with pytest.raises(ValueError, match="onnx-fp16"):
        check_numerics("onnx-fp16")
    assert physical_cores() >= 1
    # two SMT siblings of one core count once; unreadable topology counts one core per CPU
    for cpu, core in ((0, "0"), (1, "0"), (2, "1")):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text("0\n")
        (topo / "core_id").write_text(core + "\n")
    assert physical_cores({0, 1, 2}, sysfs=tmp_path) == 2
    assert physical_cores({0, 7}, sysfs=tmp_path) == 2


def test_server_config_and_flags_accept_the_same_values(capsys) -> None:
    for value in NUMERICS:
        assert ServerConfig(numerics=value).numerics == value
    with pytest.raises(ValueError, match="numerics"):
        ServerConfig(numerics="fp8")
    assert main(["serve", "--numerics", "fp8", "--model", "nowhere"]) == 2
    assert "numerics" in capsys.readouterr().err


def test_model_json_numerics_is_the_default(tiny_base_dir, tmp_path) -> None:
    from embedder.encoder import ProfileEncoder
    from heads import standard_head
    from heads.model import ProfileModel, model_numerics, save_model

    encoder = ProfileEncoder.from_base(tiny_base_dir, num_layers=1)
    head = standard_head(
        "geolocation", embedding_version=encoder.embedding_version, in_dim=encoder.dim
    )
    path = save_model(tmp_path / "m", encoder, [head], extra={"numerics": "int8"})
    assert model_numerics(path) == "int8"
    assert ProfileModel.load(path).encoder.numerics == "int8"
    assert ProfileModel.load(path, numerics="bf16").encoder.numerics == "bf16"
    assert model_numerics(tmp_path) is None


# ---------------------------------------------------------------- chosen per machine, not per build
AMX = "avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8"


def _cpu(tmp_path, flags: str, name: str = "Test CPU"):
    from embedder.numerics_choice import cpu_info

    path = tmp_path / f"cpuinfo-{len(flags)}"
    path.write_text(f"processor\t: 0\nmodel name\t: {name}\nflags\t\t: fpu sse2 {flags}\n\n")
    return cpu_info(path)


def test_cpu_flags_decide_what_runs_natively(tmp_path) -> None:
    from embedder.numerics_choice import cpu_info, rule_choice, runnable_here

    amx, avx2 = _cpu(tmp_path, AMX, "Xeon AMX"), _cpu(tmp_path, "avx2 fma")
    assert amx.model == "Xeon AMX" and amx.native_bf16 and amx.vnni
    assert not avx2.native_bf16 and not avx2.vnni
    everything = ["bf16", "int8", "onnx-fp32", "onnx-int8"]
    # emulated bf16 is never tried; fp32 is always a candidate
    assert runnable_here(everything, avx2) == ["fp32", "int8", "onnx-fp32", "onnx-int8"]
    assert runnable_here(everything, amx) == ["fp32", *everything]
    assert rule_choice(everything, amx) == "bf16"
    assert rule_choice(everything, avx2) == "onnx-int8"
    assert rule_choice(["int8"], avx2) == "fp32"  # torch int8 without VNNI saturates
    # OpenVINO runs on every x86 CPU: the probe measures it wherever it is installed
    assert runnable_here(["openvino", "openvino-int8"], avx2) == [
        "fp32",
        "openvino",
        "openvino-int8",
    ]
    # so does CTranslate2 (the fastest engine measured on an AVX2-only CPU)
    assert runnable_here(["ct2-int8"], avx2) == ["fp32", "ct2-int8"]
    assert rule_choice([], amx) == "fp32"
    assert cpu_info(tmp_path / "missing").model == "unknown"  # no procfs: no flags, still works


def _model_with_check(tiny_base_dir, tmp_path, accurate):
    from embedder.encoder import ProfileEncoder
    from heads import standard_head
    from heads.model import save_model

    encoder = ProfileEncoder.from_base(tiny_base_dir, num_layers=1)
    head = standard_head(
        "geolocation", embedding_version=encoder.embedding_version, in_dim=encoder.dim
    )
    path = save_model(tmp_path / "m", encoder, [head], extra={"numerics": "onnx-fp32"})
    (path / "numerics.json").write_text(json.dumps({"accurate": accurate}))
    return path


def test_auto_probes_once_per_machine_and_caches(tiny_base_dir, tmp_path, monkeypatch) -> None:
    from heads.model import ProfileModel, load_encoder

    monkeypatch.setenv("PROFILE_EMBED_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PROFILE_EMBED_NUMERICS_PROBE", raising=False)
    path = _model_with_check(tiny_base_dir, tmp_path, ["fp32", "int8"])
    # numerics.json wins over the numerics an older build fixed in model.json
    first = load_encoder(path, threads=1)
    choice = first.numerics_choice
    assert choice["how"] == "probe" and choice["chosen"] in ("fp32", "int8")
    assert first.numerics == choice["chosen"]
    assert set(choice["profiles_per_s"]) == {"fp32", "int8"}
    assert all(rate > 0 for rate in choice["profiles_per_s"].values())
    cache = json.loads((tmp_path / "home" / "numerics-probe.json").read_text())
    assert [entry["chosen"] for entry in cache.values()] == [choice["chosen"]]
    # the second start on this machine reads the cache; the model sees the same choice
    model = ProfileModel.load(path, threads=1)
    assert model.encoder.numerics_choice["how"] == "cached"
    assert model.encoder.numerics == choice["chosen"]
    # another thread count is another probe; an explicit value is used as given
    assert load_encoder(path, threads=2).numerics_choice["how"] == "probe"
    assert load_encoder(path, "fp32").numerics_choice == {"chosen": "fp32", "how": "fixed"}
    assert load_encoder(path, "auto", threads=1).numerics_choice["how"] == "cached"
    # an entry that is not a record (edited by hand) is probed again, not a crash
    probe_file = tmp_path / "home" / "numerics-probe.json"
    probe_file.write_text(json.dumps({key: "garbage" for key in cache}))
    assert load_encoder(path, threads=1).numerics_choice["how"] == "probe"
    from embedder.profile import Profile

    vectors = model.encoder.encode([Profile(id="a", biography="📍 Lyon")])
    assert vectors.shape == (1, model.encoder.dim)


def test_auto_without_probe_uses_cpu_rules(tiny_base_dir, tmp_path, monkeypatch) -> None:
    from embedder.numerics_choice import rule_choice
    from heads.model import load_encoder

    monkeypatch.setenv("PROFILE_EMBED_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PROFILE_EMBED_NUMERICS_PROBE", "0")
    path = _model_with_check(tiny_base_dir, tmp_path, ["fp32", "bf16", "int8"])
    encoder = load_encoder(path, threads=1)
    assert encoder.numerics_choice["how"] == "rules"
    from embedder.numerics_choice import cpu_info

    assert encoder.numerics == rule_choice(["bf16", "int8"], cpu_info())
    assert not (tmp_path / "home" / "numerics-probe.json").exists()
    # only fp32 accurate: nothing to choose, nothing measured
    (path / "numerics.json").write_text(json.dumps({"accurate": ["fp32"]}))
    assert load_encoder(path).numerics_choice == {
        "chosen": "fp32",
        "how": "only",
        "candidates": ["fp32"],
    }


def test_broken_numerics_record_names_the_file(tiny_base_dir, tmp_path) -> None:
    from embedder.errors import ArtifactError
    from heads.evaluation.numerics_check import accurate_numerics

    path = _model_with_check(tiny_base_dir, tmp_path, ["fp32", "fp8"])
    with pytest.raises(ArtifactError, match=r"numerics.json.*fp8"):
        accurate_numerics(path)
    (path / "numerics.json").write_text("{}")
    with pytest.raises(ArtifactError, match="numerics check"):
        accurate_numerics(path)
    assert accurate_numerics(tmp_path) is None


def test_numerics_check_command_records_accurate_numerics(
    tiny_base_dir, tmp_path, monkeypatch, capsys
) -> None:
    from embedder.data import write_profiles
    from embedder.simulator.core import simulate_profiles
    from server.cli import main

    monkeypatch.setenv("PROFILE_EMBED_HOME", str(tmp_path / "home"))
    path = _model_with_check(tiny_base_dir, tmp_path, ["fp32"])
    data = tmp_path / "test.jsonl"
    write_profiles(data, simulate_profiles(40, seed=3, stream="test"))
    args = ["numerics", "check", "--model", str(path), "--data", str(data)]
    code = main([*args, "--rows", "30"])
    assert code == 0
    record = json.loads(capsys.readouterr().out)
    assert record["rows"] == 30 and record["accurate"][0] == "fp32"
    checked = {"int8", "onnx-fp32", "onnx-int8", "openvino", "openvino-int8", "ct2-int8"}
    assert checked <= set(record["checked"])
    # the same weights under onnx-fp32 give the same vectors: always accurate
    assert record["checked"]["onnx-fp32"]["min_cosine"] > 0.999
    assert "onnx-fp32" in record["accurate"]
    assert json.loads((path / "numerics.json").read_text()) == record
    assert main([*args, "--rows", "0"]) == 2
    assert "--rows" in capsys.readouterr().err
