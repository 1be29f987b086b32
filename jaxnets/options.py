"""Command-line options generated from the config dataclasses and the model registry: one source for every
option's name, type, choices, default and help.

Flags are `--field-name` (nested dataclasses such as `TrainConfig.optim` are flattened). argparse keeps
no defaults (SUPPRESS), so `given()` knows exactly which options were typed: a resumed run replaces only
those in its saved config.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from .models import MODEL_OPTIONS

_COMMA_KINDS = {"ints": int, "strs": str}
ONE_SHOT = ("resume", "overwrite")  # what to do with --out this time: never saved as part of the run


def positive_int(text: str) -> int:
    """argparse type for counts (batch sizes, steps, top-k): a whole number ≥ 1, else a one-line error."""
    if not text.strip().isdecimal() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return int(text)


def nonnegative_int(text: str) -> int:
    """argparse type for counts that may be zero (warm-up requests): a whole number ≥ 0, else a one-line error."""
    if not text.strip().isdecimal():
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 0, got {text!r}")
    return int(text)


def port(text: str) -> int:
    """argparse type for a TCP port: 1–65535."""
    if not text.strip().isdecimal() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1–65535, got {text!r}")
    return int(text)


def which(text: str) -> str | int:
    """argparse type for --which: best, latest or an epoch number."""
    from .integrity import parse_which

    try:
        return parse_which(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _comma_list(item: type):
    def parse(text: str):
        parts = [p.strip() for p in text.split(",")]
        try:
            return [item(p) for p in parts if p or item is str]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {item.__name__} values, got {text!r}") from None
    return parse


def _base(hint: Any) -> Any:
    """`int | None` → int; other unions and generics are returned as they are."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return args[0] if len(args) == 1 else hint
    return hint


def _argument(name: str, hint: Any, default: Any, meta: dict) -> tuple[str, dict]:
    hint = _base(hint)
    kwargs: dict[str, Any] = {"default": argparse.SUPPRESS}
    text = meta.get("help", "")
    silent = isinstance(default, bool) or default in (None, (), []) or "default" in text  # nothing useful to add
    kwargs["help"] = text if silent else f"{text} (default: {default})"
    if hint is bool:  # --x / --no-x, so a resumed run can turn a saved switch off (not the one-shot verbs)
        kwargs["action"] = "store_true" if name in ONE_SHOT else argparse.BooleanOptionalAction
    elif typing.get_origin(hint) in (list, tuple):
        kwargs["type"] = _comma_list(typing.get_args(hint)[0])
        kwargs["metavar"] = "A,B,…"
    else:
        kwargs["type"] = hint
    if meta.get("choices"):
        kwargs["choices"] = list(meta["choices"]())
    return flag(name), kwargs


def cli_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, type hint) of every field of `cls` that is an option, nested dataclasses included."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli"):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(cli_fields(hints[f.name]))
        else:
            out.append((f, hints[f.name]))
    return out


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per option field of `cls` (and of its nested configs), then one per model option."""
    for f, hint in cli_fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        name, kwargs = _argument(f.name, hint, default, dict(f.metadata))
        parser.add_argument(name, **kwargs)
    group = parser.add_argument_group("model options (only for the models that take them)")
    for name, (kind, help_text) in MODEL_OPTIONS.items():
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _comma_list(_COMMA_KINDS[kind]) if kind in _COMMA_KINDS else {"str": str,
                                                                                         "float": float}[kind]
        group.add_argument(flag(name), **kwargs)


def given(args: argparse.Namespace, cls: type) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(top-level fields, nested-config fields by config field name, model options) typed on the command line."""
    hints = typing.get_type_hints(cls)
    top, nested, model = {}, {}, {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli"):
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            inner = cli_fields(hints[f.name])
            nested[f.name] = {g.name: getattr(args, g.name) for g, _ in inner if hasattr(args, g.name)}
        elif hasattr(args, f.name):
            top[f.name] = getattr(args, f.name)
    for name in MODEL_OPTIONS:
        if hasattr(args, name):
            model[name] = getattr(args, name)
    return top, nested, model
