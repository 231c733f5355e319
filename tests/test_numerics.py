"""One list of numerics, checked by every entry point; the model's default applies everywhere."""

from __future__ import annotations

import pytest

from embedder.numerics import NUMERICS, check_numerics, physical_cores
from server.cli import main
from server.config import ServerConfig


def test_numerics_list_and_threads(tmp_path) -> None:
    assert set(NUMERICS) == {"fp32", "bf16", "int8", "onnx-fp32", "onnx-int8"}
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
