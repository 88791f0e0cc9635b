"""Options shared by several commands, each defined once: the same flag means the same thing everywhere."""

from __future__ import annotations

import argparse

WEIGHTS_HELP = (
    "tail_* heads: the backbone weights file the token cache was extracted with (the same as `aigi extract "
    "--weights`; ALIAS=PATH per cache when the head reads several)"
)


def add_weights_argument(p: argparse.ArgumentParser) -> None:
    """`--weights [ALIAS=]PATH` (repeatable): the same flag on every command that trains or loads a head."""
    p.add_argument("--weights", action="append", default=[], metavar="[ALIAS=]PATH", help=WEIGHTS_HELP)
