"""Command-line flags shared by several `distill` commands (run, tune, submit)."""

from __future__ import annotations


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
