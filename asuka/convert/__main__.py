"""`python -m asuka.convert <format> ...`: convert released checkpoints into diffusers folders.

Each format registers one sub-command here (`add_<format>_command(subparsers)` from its module).
"""

import argparse
import sys
from collections.abc import Sequence

from asuka.convert.asuka_flux import add_asuka_flux_command
from asuka.convert.mae import add_mae_command
from asuka.convert.strdiffusion import add_strdiffusion_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m asuka.convert", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="FORMAT")
    add_asuka_flux_command(subparsers)
    add_mae_command(subparsers)
    add_strdiffusion_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one conversion; a bad release or output folder exits with status 2 and the error message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
