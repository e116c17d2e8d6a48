"""The ``edgeci`` command line. Each subcommand lives in ``edgeci_p2p.commands.<name>``.

A command module exposes ``register(subparsers)``, which adds its parser and sets
``func`` (taking the parsed arguments, returning an exit code). Add a module to
``COMMANDS`` only once the command works.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: tuple[str, ...] = (
    "bench",
    "doctor",
    "infer",
    "peers",
    "plan",
    "profile",
    "units",
)


class CommandError(Exception):
    """A user-facing failure: printed as one line on stderr, exit code 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeci", description="edgeci-p2p: distributed CNN inference on edge clusters"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"edgeci_p2p.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (CommandError, ValueError, OSError) as e:
        print(f"edgeci {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"edgeci {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        print(f"edgeci {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
