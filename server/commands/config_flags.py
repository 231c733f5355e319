"""Flags generated from a config dataclass, so each setting's default is written once: in the class.

``add_config_flags(parser, ConfigCls)`` adds one ``--field-name`` per field, typed from the
annotation, with the help text of the class docstring's ``Attributes:`` entry and
``default=argparse.SUPPRESS``: a flag not given leaves no attribute, and ``config_from_args``
then lets the dataclass default apply. ``server.cli`` gives every generated flag its
``PROFILE_EMBED_<FLAG>`` environment fallback like any other.

Types: ``int``, ``float``, ``str``, ``Path``; ``bool`` -> ``--x/--no-x``; ``X | None`` also takes
``none``; ``tuple[X, ...]`` a comma-separated list (empty string: the empty tuple); ``Literal``
values or a ``choices`` entry -> fixed allowed values. Fields holding another dataclass are left
to the caller (``train`` adds ``LoopConfig``'s own flags).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from embedder.errors import EmbedderError, InvalidInputError

T = TypeVar("T")

_SCALARS: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str, Path: Path}


def add_config_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_cls: type[Any],
    *,
    only: Iterable[str] | None = None,
    skip: Collection[str] = (),
    flags: Mapping[str, str] | None = None,
    help: Mapping[str, str] | None = None,
    choices: Mapping[str, Collection[Any]] | None = None,
    types_: Mapping[str, Callable[[str], Any]] | None = None,
) -> tuple[str, ...]:
    """Add one ``--field-name`` flag per field of ``config_cls``; return the field names added.

    Args:
        parser: the parser (or argument group) to add to.
        config_cls: a dataclass whose docstring has an ``Attributes:`` section.
        only: add just these fields, in this order (default: every field, in class order).
        skip: fields to leave out (set elsewhere, or not a command-line setting).
        flags: field -> flag spelling, where an older spelling must keep working
            (``{"grace_s": "--grace"}``).
        help: field -> help text, replacing the docstring's (the default is still appended).
        choices: field -> the values allowed, where the annotation cannot say so.
        types_: field -> converter from the command-line string, where the generic one will not do
            (``serve``'s ``--metrics-port -1`` meaning off).

    Raises:
        TypeError: a field's annotation has no command-line form and no ``types_`` entry.
    """
    hints = typing.get_type_hints(config_cls)
    by_name = {f.name: f for f in dataclasses.fields(config_cls)}
    docs = attribute_docs(config_cls)
    names = list(only) if only is not None else list(by_name)
    added = []
    for name in names:
        field = by_name[name]
        if name in skip or dataclasses.is_dataclass(hints[name]):
            continue
        flag = (flags or {}).get(name, "--" + name.replace("_", "-"))
        default = _default_of(field)
        text = (help or {}).get(name) or docs.get(name, "")
        text = f"{text} [default: {_show(default)}]".strip().replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": text}
        if hints[name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            allowed = (choices or {}).get(name)
            convert, metavar, fixed = _converter(hints[name], allowed, (types_ or {}).get(name))
            metavar = metavar or flag[2:].upper().replace("-", "_")  # --grace: GRACE
            kwargs.update(type=convert, metavar=metavar)
            if fixed is not None:  # argparse's own check and "invalid choice" message
                kwargs.update(choices=fixed, metavar=None)
        parser.add_argument(flag, **kwargs)
        added.append(name)
    return tuple(added)


def config_from_args(config_cls: type[T], args: argparse.Namespace, **extra: Any) -> T:
    """Build ``config_cls`` from the flags given (the rest keep the class defaults) and ``extra``.

    Raises:
        InvalidInputError: the class refused a value (its ``__post_init__`` ``ValueError``); a
            bad setting is the user's mistake (exit 2), not a failed run.
    """
    names = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values.update(extra)
    try:
        return config_cls(**values)
    except InvalidInputError as err:
        if err.field in names and err.source is None:  # name the flag the user typed
            flag = "--" + err.field.replace("_", "-")
            raise InvalidInputError(err.reason, field=flag, line=err.line) from err
        raise
    except EmbedderError:
        raise
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"invalid settings: {err}") from err


def given_fields(config_cls: type[Any], args: argparse.Namespace) -> tuple[str, ...]:
    """The fields of ``config_cls`` set by a flag or its environment variable."""
    return tuple(f.name for f in dataclasses.fields(config_cls) if hasattr(args, f.name))


def attribute_docs(config_cls: type[Any]) -> dict[str, str]:
    """Field -> its ``Attributes:`` entry of the class docstring, on one line, markup removed."""
    doc = config_cls.__doc__ or ""
    section = re.split(r"^\s*Attributes:\s*$", doc, maxsplit=1, flags=re.MULTILINE)
    if len(section) < 2:
        return {}
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    entry = re.compile(r"^\s{4,8}(\w+): (.*)$")
    for line in section[1].splitlines():
        match = entry.match(line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(config_cls)}:
            current = out.setdefault(match.group(1), [match.group(2).strip()])
        elif current is not None and line.strip():
            current.append(line.strip())
        elif current is not None and not line.strip():
            current = None  # a blank line ends the section
    return {k: " ".join(v).replace("``", "") for k, v in out.items()}


def _default_of(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "''"
    return "none" if value is None else str(value)


def _converter(
    hint: Any, allowed: Collection[Any] | None, custom: Callable[[str], Any] | None
) -> tuple[Callable[[str], Any], str | None, Collection[Any] | None]:
    """The ``type=`` callable of a field, its metavar, and the ``choices=`` argparse can check.

    Allowed values of a field that may also be None are checked by the callable (argparse would
    refuse ``none``), and so are those of a list's items.
    """
    optional = False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        optional = True
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    if typing.get_origin(hint) is typing.Literal:
        allowed = allowed if allowed is not None else typing.get_args(hint)
        hint = type(typing.get_args(hint)[0])
    if custom is not None:
        return custom, None, None
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        scalar = _scalar(item)
        return _tuple_of(scalar, allowed), None, None
    scalar = _scalar(hint)
    if not optional:
        return scalar, None, tuple(allowed) if allowed is not None else None
    shown = ["none", *map(str, allowed or ())]
    metavar = "{" + ",".join(shown) + "}" if allowed is not None else None
    return _one(scalar, allowed, optional), metavar, None


def _scalar(hint: Any) -> Callable[[str], Any]:
    if hint not in _SCALARS:
        raise TypeError(f"no command-line form for a field of type {hint!r}; pass types_=")
    return _SCALARS[hint]


def _one(
    scalar: Callable[[str], Any], allowed: Collection[Any] | None, optional: bool
) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        if optional and raw.strip().lower() == "none":
            return None
        value = scalar(raw)
        if allowed is not None and value not in allowed:
            shown = ", ".join([*(["none"] if optional else []), *map(str, allowed)])
            raise argparse.ArgumentTypeError(f"got {raw!r}; allowed: {shown}")
        return value

    convert.__name__ = getattr(scalar, "__name__", "value")  # argparse names it in errors
    return convert


def _tuple_of(
    scalar: Callable[[str], Any], allowed: Collection[Any] | None
) -> Callable[[str], tuple[Any, ...]]:
    def convert(raw: str) -> tuple[Any, ...]:
        values = tuple(scalar(v.strip()) for v in raw.split(",") if v.strip())
        bad = [v for v in values if allowed is not None and v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(
                f"got {', '.join(map(str, bad))}; allowed: {', '.join(map(str, allowed or ()))}"
            )
        return values

    convert.__name__ = "comma-separated list"
    return convert


def add_device_flag(p: argparse.ArgumentParser) -> None:
    """Add ``--device`` (default ``auto``: a GPU when torch sees one) to a command that embeds.

    Every command that runs the encoder takes it, so a GPU machine uses its GPU whichever
    command embeds; the value is resolved (``embedder.devices.choose_device``) before any input
    is read, so a GPU asked for where there is none costs nothing.
    """
    p.add_argument(
        "--device",
        type=device_flag,
        default="auto",
        help="where the encoder runs: auto (a GPU when torch sees one, default), cpu, cuda or "
        "cuda:N; on a GPU only fp32 and bf16 numerics run",
    )


def device_flag(value: str) -> str:
    """argparse type of a ``--device`` flag: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    The form is checked when the flag (or ``PROFILE_EMBED_DEVICE``) is parsed; whether the
    machine has that GPU is checked when the command runs (``embedder.devices.choose_device``).
    """
    from embedder.devices import check_device_spec

    try:
        return check_device_spec(value, field="--device")
    except InvalidInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
