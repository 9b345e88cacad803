"""`python -m launch`: the subcommands, each imported only when asked for, else one launch
(launch/options.py: the options; launch/run.py: what a launch does)."""

from __future__ import annotations

import importlib
import sys

from launch.options import SUBCOMMANDS, build_parser, given_options, prog
from launch.run import launch


def main(argv: list[str] | None = None) -> int:
    """`python -m launch [SUBCOMMAND] ...`: a subcommand's own command line, else a launch."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SUBCOMMANDS:
        module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
        return module.main(argv[1:], prog=f"{prog()} {argv[0]}")
    args = build_parser().parse_args(argv)
    return launch(args, given_options(argv))


if __name__ == "__main__":
    sys.exit(main())
