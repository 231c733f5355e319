"""The GPU path on a CPU machine: device choice, refusals, moving the encoder, the Ray plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embedder.devices import CUDA_NUMERICS, check_numerics_on, choose_device
from embedder.encoder import ProfileEncoder
from embedder.errors import InvalidInputError
from embedder.numerics import NUMERICS
from embedder.numerics_choice import GpuInfo, rule_choice, runnable_on_gpu
from embedder.profile import Profile
from server.batch.pipeline import BatchConfig, plan_actors

HAS_GPU = torch.cuda.is_available()
SAMPLE = Path(__file__).resolve().parents[1] / "embedder" / "data" / "sample_profiles.jsonl"
PROFILES = [
    Profile(id="a", biography="📍 paris | love food", captions=("bonjour lyon", "coffee")),
    Profile(id="b", full_name="João", biography="são paulo", captions=("rio beach",)),
    Profile(id="c"),
]


def test_choose_device_here() -> None:
    assert choose_device("auto") == ("cuda" if HAS_GPU else "cpu")
    assert choose_device("cpu") == "cpu"
    for bad in ("gpu", "cuda:x", "cuda:", "CPU", ""):
        with pytest.raises(InvalidInputError, match=r"auto, cpu, cuda, cuda:N") as err:
            choose_device(bad)
        assert err.value.field == "device" and repr(bad) in str(err.value)


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_cuda_without_gpu_is_invalid_input() -> None:
    for spec in ("cuda", "cuda:0"):
        with pytest.raises(InvalidInputError, match="no CUDA device") as err:
            choose_device(spec, field="--device")
        assert err.value.field == "--device"


@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
def test_cuda_index_beyond_the_gpus_is_invalid_input() -> None:
    n = torch.cuda.device_count()
    assert choose_device(f"cuda:{n - 1}") == f"cuda:{n - 1}"
    with pytest.raises(InvalidInputError, match=f"has {n} CUDA device"):
        choose_device(f"cuda:{n}")


def test_only_torch_numerics_run_on_cuda() -> None:
    for numerics in NUMERICS:
        assert check_numerics_on(numerics, "cpu") == numerics
    for numerics in CUDA_NUMERICS:
        assert check_numerics_on(numerics, "cuda:1") == numerics
    for numerics in ("int8", "onnx-fp32", "onnx-int8", "openvino", "openvino-int8", "ct2-int8"):
        with pytest.raises(InvalidInputError, match="runs on CPU only") as err:
            check_numerics_on(numerics, "cuda")
        assert repr(numerics) in str(err.value) and "fp32, bf16" in str(err.value)
        assert err.value.field == "numerics"


def test_numerics_choice_on_a_gpu_keeps_torch_numerics() -> None:
    everything = list(NUMERICS)
    assert runnable_on_gpu(everything, GpuInfo("H100", bf16=True)) == ["fp32", "bf16"]
    assert runnable_on_gpu(everything, GpuInfo("T4", bf16=False)) == ["fp32"]
    assert runnable_on_gpu(["onnx-int8", "int8"], GpuInfo("H100", bf16=True)) == ["fp32"]
    assert rule_choice(everything, GpuInfo("H100", bf16=True)) == "bf16"
    assert rule_choice(everything, GpuInfo("T4", bf16=False)) == "fp32"


@pytest.fixture(scope="module")
def encoder(tiny_base_dir) -> ProfileEncoder:
    return ProfileEncoder.from_base(tiny_base_dir, num_layers=2)


def test_encoder_to_cpu_round_trip_gives_identical_embeddings(encoder) -> None:
    assert encoder.device == torch.device("cpu")
    before = encoder.encode(PROFILES)
    version = encoder.embedding_version
    assert encoder.to("cpu") is encoder and encoder.to("auto" if not HAS_GPU else "cpu") is encoder
    after = encoder.encode(PROFILES)
    assert encoder.device == torch.device("cpu") and after.dtype == np.float32
    np.testing.assert_array_equal(before, after)
    assert encoder.refresh_version() == version  # moving weights does not change the version
    assert encoder.with_numerics("int8").device == encoder.device


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_encoder_to_cuda_without_gpu_refuses_and_stays_on_cpu(encoder) -> None:
    with pytest.raises(InvalidInputError, match="no CUDA device"):
        encoder.to("cuda")
    assert encoder.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in encoder.st_model.parameters())


@pytest.mark.skipif(not HAS_GPU, reason="needs a GPU")
def test_encoder_on_gpu_matches_cpu(tiny_base_dir) -> None:
    cpu = ProfileEncoder.from_base(tiny_base_dir, num_layers=2)
    expected = cpu.encode(PROFILES)
    gpu = ProfileEncoder.from_base(tiny_base_dir, num_layers=2).to("cuda")
    got = gpu.encode(PROFILES)
    assert got.dtype == np.float32 and isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert gpu.embedding_version == cpu.embedding_version
    bf16 = gpu.with_numerics("bf16").encode(PROFILES)
    assert (np.sum(bf16 * expected, axis=1) > 0.99).all()
    with pytest.raises(InvalidInputError, match="runs on CPU only"):
        gpu.with_numerics("int8")


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_cli_embed_cuda_without_gpu_exits_2(tiny_base_dir, tmp_path, capsys) -> None:
    from server.cli import main

    out = tmp_path / "v.npy"
    argv = ["embed", str(SAMPLE), "-o", str(out), "--base", str(tiny_base_dir), "--no-cache"]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device 'cuda' asks for a GPU but torch sees no CUDA device" in err
    assert "Traceback" not in err and not out.exists()
    assert main([*argv, "--device", "tpu"]) == 2
    assert "auto, cpu, cuda, cuda:N" in capsys.readouterr().err
    assert main([*argv, "--device", "cpu", "--no-progress"]) == 0
    assert np.load(out).shape[1] == 32


#: Every command that runs the encoder, with arguments that would run it (``{m}``: the model
#: folder, ``{d}``: a missing input, ``{t}``: a scratch folder). ``embed`` is tested above.
EMBEDDING_COMMANDS = {
    "predict": ["predict", "{d}", "-o", "{t}/p.jsonl", "--model", "{m}"],
    "evaluate": ["evaluate", "--model", "{m}", "--data", "{d}", "--report", "{t}/r"],
    "audience": ["audience", "{d}", "--model", "{m}", "--head", "geolocation", "--out", "{t}/a"],
    "train-head": ["train-head", "--model", "{m}", "--head", "category", "--train", "{d}",
                   "--val", "{d}"],
    "calibrate": ["calibrate", "--model", "{m}", "--data", "{d}"],
}  # fmt: skip


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
@pytest.mark.parametrize("command", sorted(EMBEDDING_COMMANDS))
def test_every_embedding_command_takes_device_and_refuses_a_missing_gpu_first(
    command, tiny_model_dir, tmp_path, capsys
) -> None:
    from server.cli import main

    fill = {"m": str(tiny_model_dir), "d": str(tmp_path / "missing.jsonl"), "t": str(tmp_path)}
    argv = [a.format(**fill) for a in EMBEDDING_COMMANDS[command]]
    assert main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    # The device is resolved before the input is read: the refusal names the GPU, not the file.
    assert "--device 'cuda' asks for a GPU but torch sees no CUDA device" in err
    assert "missing.jsonl" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert main([*argv, "--device", "gpu0"]) == 2
    assert "auto, cpu, cuda, cuda:N" in capsys.readouterr().err


def test_predict_on_cpu_as_asked_matches_auto_here(tiny_model_dir, tmp_path) -> None:
    from server.cli import main

    argv = ["predict", str(SAMPLE), "--model", str(tiny_model_dir)]
    assert main([*argv, "-o", str(tmp_path / "cpu.jsonl"), "--device", "cpu"]) == 0
    assert main([*argv, "-o", str(tmp_path / "auto.jsonl")]) == 0
    cpu = (tmp_path / "cpu.jsonl").read_text().splitlines()
    auto = [json.loads(line) for line in (tmp_path / "auto.jsonl").read_text().splitlines()]
    assert len(cpu) == len(auto) == len(SAMPLE.read_text().splitlines())
    for a, b in zip(map(json.loads, cpu), auto, strict=True):
        assert a["id"] == b["id"] and a["geolocation"]["argmax"] == b["geolocation"]["argmax"]
        # Identical on a CPU machine (auto is cpu); within GPU rounding where auto is a GPU.
        for label, prob in a["geolocation"]["probabilities"].items():
            assert b["geolocation"]["probabilities"][label] == pytest.approx(prob, abs=1e-4)


def _cfg(**kwargs) -> BatchConfig:
    return BatchConfig(model_dir=Path("m"), input="in", output=Path("out"), **kwargs)


def test_ray_actor_plan_on_a_cpu_cluster() -> None:
    plan = plan_actors(_cfg(), {"CPU": 8.0, "memory": 1e9})
    assert (plan.actors, plan.gpus, plan.device) == (4, 0.0, "cpu")
    assert plan.ray_options() == {"num_cpus": pytest.approx(7.5 / 4)}
    assert plan_actors(_cfg(device="cpu", num_actors=3), {"CPU": 8.0}).ray_options().keys() == {
        "num_cpus"
    }
    # int8 is fine on CPU actors
    assert plan_actors(_cfg(numerics="int8"), {"CPU": 2.0}).device == "cpu"
    with pytest.raises(InvalidInputError, match="reports no GPUs") as err:
        plan_actors(_cfg(device="cuda"), {"CPU": 8.0})
    assert err.value.field == "device" and "CPU=8" in str(err.value)


def test_ray_actor_plan_on_a_cluster_with_gpus() -> None:
    res = {"CPU": 16.0, "GPU": 2.0}
    plan = plan_actors(_cfg(), res)
    assert (plan.actors, plan.gpus, plan.device, plan.threads) == (2, 1.0, "cuda", 7)
    assert plan.ray_options() == {"num_cpus": 7.75, "num_gpus": 1.0}
    assert plan_actors(_cfg(device="cuda", num_actors=1), res).gpus == 1.0
    # more actors than GPUs share them, in fractions Ray accepts
    assert plan_actors(_cfg(num_actors=4), {"CPU": 16.0, "GPU": 1.0}).gpus == 0.25
    assert plan_actors(_cfg(num_actors=3), {"CPU": 16.0, "GPU": 1.0}).gpus == 0.3333
    # cpu asked for: GPUs left alone
    cpu_plan = plan_actors(_cfg(device="cpu"), res)
    assert (cpu_plan.actors, cpu_plan.gpus, cpu_plan.device) == (8, 0.0, "cpu")
    assert "num_gpus" not in cpu_plan.ray_options()
    with pytest.raises(InvalidInputError, match="'onnx-int8' runs on CPU only"):
        plan_actors(_cfg(numerics="onnx-int8"), res)
    assert plan_actors(_cfg(numerics="bf16"), res).device == "cuda"


def test_batch_config_refuses_bad_devices() -> None:
    with pytest.raises(InvalidInputError, match="Ray assigns each actor its GPU"):
        _cfg(device="cuda:1")
    with pytest.raises(InvalidInputError, match="got 'gpu'"):
        _cfg(device="gpu")


def test_serve_takes_a_device_and_refuses_a_malformed_one(tiny_model_dir, capsys) -> None:
    from embedder.devices import choose_device
    from server.cli import main
    from server.config import ServerConfig
    from server.runtime import Runtime

    # the flag is generated from ServerConfig.device; a malformed value is bad input (exit 2)
    assert main(["serve", "--model", str(tiny_model_dir), "--device", "gpu0"]) == 2
    err = capsys.readouterr().err
    assert "device must be one of auto, cpu, cuda, cuda:N, got 'gpu0'" in err
    # auto resolves to this machine's device and the server's encoder is loaded there
    runtime = Runtime.load(ServerConfig(model=tiny_model_dir, cache=None, device="auto"))
    assert str(runtime.model.encoder.device) == choose_device("auto")
