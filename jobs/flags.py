"""Command-line flags shared by several `distill` commands (run, tune, submit)."""

from __future__ import annotations

import math

from distill.core.spec import SpecError


def add_overrides_flag(parser, what: str, example: str) -> None:
    """`--set KEY=VALUE [...]`, repeatable, collected flat into `args.overrides`."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        nargs="+",
        help=f"override a {what} field, e.g. {example}",
    )


def check_limit(name: str, value: float | None) -> None:
    """A choice limit (`--max-params`, `--min-speedup`): None or a positive finite number."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise SpecError(f"{name}: expected a positive number, got {value}")
