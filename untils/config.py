"""Dataclass configs that any script can override from the command line.

Every field of a config dataclass becomes an option: ``--max_epoch 2`` and
``--max-epoch 2`` both work. Values are converted with the field's type, so a wrong
type is an error, and argparse rejects unknown options.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false/1/0/yes/no), got {text!r}")


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """Return (inner type, whether None is allowed) for ``Optional[X]``/``X | None``."""
    args = typing.get_args(annotation)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return annotation, False


def _none_or(convert):
    def parse(text: str):
        if str(text).lower() in {"none", "null"}:
            return None
        return convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _argument_spec(annotation: Any, derived: bool = False) -> dict[str, Any]:
    """argparse's settings for a field; ``none`` gives None to an Optional field and to a ``derived`` one
    (typed as the value its ``__post_init__`` puts in place of None)."""
    inner, optional = _strip_optional(annotation)
    optional = optional or derived
    origin = typing.get_origin(inner)
    if inner is bool:  # "--flag" alone means true, as in every script's own switches
        spec: dict[str, Any] = {"type": parse_bool, "metavar": "BOOL", "nargs": "?", "const": True}
    elif inner in (int, float, str):
        spec = {"type": inner, "metavar": inner.__name__.upper()}
    elif origin in (list, tuple):
        item_args = [a for a in typing.get_args(inner) if a is not Ellipsis]
        item_type = item_args[0] if item_args else str
        fixed = origin is tuple and Ellipsis not in typing.get_args(inner)
        spec = {"type": item_type, "nargs": len(item_args) if fixed else "+", "metavar": item_type.__name__.upper()}
    else:
        raise TypeError(f"config fields of type {annotation!r} cannot be set from the command line")
    if optional:
        spec["type"] = _none_or(spec["type"])
    return spec


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type, exclude: Sequence[str] = ()) -> None:
    """Add one option per field of ``config_cls`` (a dataclass) to ``parser``, except ``exclude``
    (e.g. the training options of a script that only evaluates)."""
    group = parser.add_argument_group(f"{config_cls.__module__} options (defaults from {config_cls.__module__}.py)")
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if not field.init or field.name in exclude:
            continue
        spec = _argument_spec(hints[field.name], derived=field.metadata.get("derived", False))
        default = field.default if field.default is not dataclasses.MISSING else "derived"
        help_text = field.metadata.get("help", "")
        flags = [f"--{field.name}"]
        dashed = f"--{field.name.replace('_', '-')}"
        if dashed != flags[0]:
            flags.append(dashed)
        group.add_argument(
            *flags,
            dest=f"cfg__{field.name}",
            default=argparse.SUPPRESS,
            help=f"{help_text} (default: {default})".strip(),
            **spec,
        )


def given_config_options(args: argparse.Namespace) -> dict[str, Any]:
    """The config options given on the command line (by field name), from :func:`add_config_arguments`."""
    return {key[len("cfg__") :]: value for key, value in vars(args).items() if key.startswith("cfg__")}


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f"config option {name}={value!r} is not one of {list(choices)}")
