"""Command-line conventions shared by the scripts: every long option in both spellings, and errors
said in one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def add_option_aliases(
    parser: argparse.ArgumentParser, renamed: Mapping[str, str] | None = None
) -> argparse.ArgumentParser:
    """Accept ``--a_b`` for every ``--a-b`` option of ``parser`` (and its subcommands) and the reverse.

    ``renamed`` maps old option names to the options that replaced them (``{"--batch-size":
    "--photos-per-batch"}``): the old names keep working, in both spellings. Aliases and old names
    are hidden from ``--help``. Abbreviated options are turned off: with two spellings registered,
    a prefix such as ``--top`` would match both and be refused as ambiguous. Call it once, after
    every option is added. Returns ``parser``.
    """
    parser.allow_abbrev = False
    # argparse has no public way to give an option a hidden name; its parser looks names up in this table.
    table = parser._option_string_actions
    spellings = [(option, action) for action in parser._actions for option in action.option_strings]
    spellings += [(old, table[new]) for old, new in (renamed or {}).items()]
    for option, action in spellings:
        if option.startswith("--"):
            for spelling in (option, "--" + option[2:].replace("-", "_"), "--" + option[2:].replace("_", "-")):
                table.setdefault(spelling, action)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in set(action.choices.values()):
                add_option_aliases(subparser)
    return parser


def run_script(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main`` as the command line does: a bad file, value or option (ValueError,
    OSError, RuntimeError, LookupError) ends with one ``error:`` message and exit status 2, without a
    traceback unless ``--debug`` was given. Anything else is a bug and shows its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        result = main(argv)
    except (ValueError, OSError, RuntimeError, LookupError) as error:
        if "--debug" in argv:
            raise
        message = str(error).strip() or type(error).__name__
        print(f"error: {message}\n(--debug shows the traceback)", file=sys.stderr)
        return 2
    return result if isinstance(result, int) else 0


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")


def add_demo_options(parser: argparse.ArgumentParser, demo_help: str) -> None:
    """``--demo`` (a script's run on generated data, ``demo_help`` saying what it does) and ``--demo-dir``."""
    parser.add_argument("--demo", action="store_true", help=demo_help)
    parser.add_argument("--demo-dir", default="demo_runs", help="where --demo writes its data and experiment")
