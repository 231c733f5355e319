"""Every long option of every command has its ``PROFILE_EMBED_<FLAG>`` fallback, generated or not.

The parser is walked, so a flag added later (by hand or from a config dataclass) is checked too.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import pytest

from server.cli import build_parser, main

#: Long options without an environment fallback, with the reason. Empty: every one has it.
EXEMPT: dict[str, str] = {}

#: Values tried, in order, until the flag's type and choices accept one (its converter decides).
_CANDIDATES = ("7", "3", "0.25", "balanced", "int8", "knn", "auto", "cpu", "x")

_MISSING = object()


def _walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                if path or name != "help":
                    yield (*path, name), child
                    yield from _walk(child, (*path, name))


def _commands() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    return list(_walk(build_parser()))


def _value(action: argparse.Action, default: Any) -> tuple[str, Any]:
    """An environment string the flag accepts and the value it must parse to, unlike ``default``."""
    if isinstance(action, argparse._StoreTrueAction):
        return "1", True
    if isinstance(action, argparse.BooleanOptionalAction):
        return ("0", False) if default is True else ("1", True)
    candidates = [str(c) for c in action.choices] if action.choices else list(_CANDIDATES)
    for raw in candidates:
        try:
            value = action.type(raw) if callable(action.type) else raw
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            continue
        if value != default and (action.choices is None or value in action.choices):
            return raw, value
    raise AssertionError(f"no test value for {action.option_strings}")


def _required_argv(parser: argparse.ArgumentParser, skip: str) -> list[str]:
    """Values for the parser's required options and positionals, except flag ``skip``'s."""
    argv: list[str] = []
    for action in parser._actions:
        if skip in action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        if action.option_strings and action.required:
            argv += [action.option_strings[-1], _value(action, None)[0]]
        elif not action.option_strings and action.nargs is None:
            argv.append(_value(action, None)[0])
    return argv


def _argv(path: tuple[str, ...], skip: str) -> list[str]:
    """A command line reaching ``path`` with every required value given but flag ``skip``'s."""
    parser = build_parser()
    argv: list[str] = []
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
        last = name == path[-1]
        argv += [name, *_required_argv(parser, skip if last else "")]
    return argv


def _cases() -> list[tuple[tuple[str, ...], str]]:
    out = []
    for path, parser in _commands():
        for action in parser._actions:
            longs = [s for s in action.option_strings if s.startswith("--")]
            if longs and action.dest != "help" and longs[0] not in EXEMPT:
                out.append((path, longs[0]))
    return out


def _env_name(flag: str) -> str:
    return "PROFILE_EMBED_" + flag[2:].upper().replace("-", "_")


def test_the_walk_reaches_nested_commands_and_generated_flags() -> None:
    cases = set(_cases())
    assert (("client", "predict"), "--target") in cases or (("client",), "--target") in cases
    assert (("index", "build"), "--nlist") in cases
    for generated in ("--max-queue-delay-ms", "--grace", "--metrics-tls"):
        assert (("serve",), generated) in cases
    assert (("train",), "--warmup-ratio") in cases and (("train-head",), "--kind") in cases
    assert (("calibrate",), "--target-precision") in cases


@pytest.mark.parametrize(("path", "flag"), _cases(), ids=[" ".join((*p, f)) for p, f in _cases()])
def test_every_long_option_reads_its_environment_variable(path, flag, monkeypatch) -> None:
    for name in [n for n in __import__("os").environ if n.startswith("PROFILE_EMBED_")]:
        monkeypatch.delenv(name)
    parser = dict(_commands())[path]
    action = next(a for a in parser._actions if flag in a.option_strings)
    argv = _argv(path, flag)
    # a required flag cannot be left out; its variable alone must then satisfy the parser
    without = None if action.required else build_parser().parse_args(argv)
    default = getattr(without, action.dest, _MISSING)
    raw, expected = _value(action, default)
    monkeypatch.setenv(_env_name(flag), raw)
    parsed = build_parser().parse_args(argv)
    assert getattr(parsed, action.dest, _MISSING) == expected, (flag, raw)
    # and the flag itself still wins over its variable
    if not isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        assert getattr(build_parser().parse_args([*argv, flag, raw]), action.dest) == expected


def test_a_bad_environment_value_is_a_usage_error_naming_the_variable(monkeypatch, capsys) -> None:
    from server.cli import _check_env_values

    monkeypatch.setenv("PROFILE_EMBED_METRICS_TLS", "maybe")
    assert main(["serve", "--model", "no-such-model"]) == 2  # refused before any work
    err = capsys.readouterr().err
    assert "PROFILE_EMBED_METRICS_TLS='maybe'" in err and "Traceback" not in err
    # the flag given on the command line wins over its refused variable
    args = build_parser().parse_args(["serve", "--no-metrics-tls"])
    _check_env_values(args)
    monkeypatch.setenv("PROFILE_EMBED_METRICS_TLS", "1")
    monkeypatch.setenv("PROFILE_EMBED_KIND", "forest")
    argv = ["train-head", "--head", "h", "--train", "t.jsonl", "--val", "v.jsonl"]
    assert main(argv) == 2
    assert "PROFILE_EMBED_KIND='forest'" in capsys.readouterr().err
    # a value one command's flag refuses does not break the commands without that flag
    _check_env_values(build_parser().parse_args(["serve"]))
