"""Flags generated from config dataclasses: types, defaults kept in the class, help, refusals."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from embedder.errors import InvalidInputError
from server.commands.config_flags import add_config_flags, attribute_docs, config_from_args


@dataclass(frozen=True, kw_only=True)
class _Demo:
    """A config of every field type the generator supports.

    Attributes:
        count: how many; a long entry that
            continues on a second line.
        rate: a share.
        name: a name.
        path: a folder.
        on: a switch.
        limit: an optional cap.
        mode: one of two modes.
        tags: labels.
    """

    count: int = 3
    rate: float = 0.5
    name: str = "x"
    path: Path = Path("models")
    on: bool = False
    limit: int | None = None
    mode: Literal["fast", "slow"] = "fast"
    tags: tuple[str, ...] = ("a",)

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")


def _parse(*argv: str, **kwargs) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, _Demo, **kwargs)
    return parser.parse_args(argv)


def test_flags_not_given_leave_the_dataclass_defaults() -> None:
    args = _parse()
    assert vars(args) == {}
    assert config_from_args(_Demo, args) == _Demo()


def test_each_type_parses_from_the_command_line() -> None:
    args = _parse(
        "--count=4", "--rate=0.25", "--name=y", "--path=p", "--on", "--limit=none", "--mode=slow",
        "--tags=b, c",
    )  # fmt: skip
    assert config_from_args(_Demo, args) == _Demo(
        count=4, rate=0.25, name="y", path=Path("p"), on=True, limit=None, mode="slow",
        tags=("b", "c"),
    )  # fmt: skip
    assert config_from_args(_Demo, _parse("--limit", "9", "--no-on", "--tags", "")).limit == 9
    assert config_from_args(_Demo, _parse("--tags", "")).tags == ()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mode", "medium"], "invalid choice: 'medium'"),
        (["--count", "many"], "invalid int value: 'many'"),
        (["--name", "z"], "invalid choice: 'z'"),
        (["--limit", "9"], "got '9'; allowed: none, 1, 2"),
    ],
)
def test_bad_values_are_usage_errors(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        _parse(*argv, choices={"name": ("x", "y"), "limit": (1, 2)})
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_a_value_the_dataclass_refuses_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="count must be >= 1, got 0"):
        config_from_args(_Demo, _parse("--count", "0"))
    from heads.training.config import CalibrateConfig

    with pytest.raises(InvalidInputError, match=r"field '--target-precision': got 1\.5"):
        config_from_args(CalibrateConfig, _parse_calibrate("--target-precision", "1.5"))


def _parse_calibrate(*argv: str) -> argparse.Namespace:
    from heads.training.config import CalibrateConfig

    parser = argparse.ArgumentParser()
    add_config_flags(parser, CalibrateConfig)
    return parser.parse_args(argv)


def test_help_comes_from_the_docstring_with_the_default(capsys) -> None:
    docs = attribute_docs(_Demo)
    assert docs["count"] == "how many; a long entry that continues on a second line."
    parser = argparse.ArgumentParser()
    add_config_flags(parser, _Demo, skip={"rate"}, flags={"name": "--label"}, help={"on": "power"})
    text = " ".join(parser.format_help().split())
    assert "--count COUNT how many; a long entry that continues on a second line. [default: 3]" in (
        text
    )
    assert "--label LABEL a name. [default: x]" in text and "--rate" not in text
    assert "--on, --no-on power [default: False]" in text
    assert "--mode {fast,slow}" in text and "--limit LIMIT an optional cap. [default: none]" in text


def test_a_field_without_a_command_line_form_is_refused() -> None:
    @dataclass
    class Odd:
        """Attributes:
        blob: bytes.
        """

        blob: bytes = b""

    with pytest.raises(TypeError, match="no command-line form"):
        add_config_flags(argparse.ArgumentParser(), Odd)


def test_train_flags_reach_train_and_loop_configs() -> None:
    from heads.training.config import DEFAULT_TARGET_PRECISION, LoopConfig, TrainConfig
    from server.cli import build_parser
    from server.commands.train import build_config

    base = ["train", "--train", "t", "--val", "v", "-o", "o"]
    config = build_config(build_parser().parse_args(base))
    assert config == TrainConfig(loop=LoopConfig())
    assert config.target_precision == DEFAULT_TARGET_PRECISION
    args = build_parser().parse_args(
        [*base, "--heads", "geolocation,category", "--warmup-ratio", "0.1", "--no-augment",
         "--never-assign", "", "--device", "cpu", "--location-tokens"]
    )  # fmt: skip
    config = build_config(args)
    assert config.heads == ("geolocation", "category") and config.loop.warmup_ratio == 0.1
    assert config.never_assign == () and config.device == "cpu" and config.location_tokens
    assert config.loop.augment.single_post == 0.0


def test_the_default_target_precision_is_written_once() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    literal = re.compile(r"\b0\.90?\b(?!\d)")
    offenders = []
    for folder in ("heads", "server"):
        for path in (root / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                # the constant itself, and build-default's quality bar (the issue's, not a default)
                if code.startswith(("DEFAULT_TARGET_PRECISION =", "TARGETS =")):
                    continue
                if "target" in code.lower() and literal.search(code):
                    offenders.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert offenders == [], "use heads.training.config.DEFAULT_TARGET_PRECISION"
