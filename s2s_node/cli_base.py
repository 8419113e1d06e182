"""What every `s2s-node` command shares: exit statuses, the parser class, the `--data-dir` and
`--config` options, how a subcommand's parser is made, and printing JSON and tables.

Owns: the conventions of DESIGN.md section 11 (exit status 0 success, 1 when the answer is
"no", 2 bad usage or input; `--data-dir` before or after the subcommand). Must not: know any
command (cli and cli_remote do).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from s2s_node.config import load_config
from s2s_node.datadir import resolve_data_dir

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line usage or input; exit status 2."""


class CommandParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors exit with status 2 and one line."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"s2s-node: error: {message}\n")


def add_location_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """`--data-dir` and `--config`, accepted before or after the subcommand (the subcommand's
    value wins)."""
    default = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default,
        help="data directory (default: the config's data_dir, else $XDG_DATA_HOME/s2s-node"
        " or ~/.local/share/s2s-node)",
    )
    parser.add_argument(
        "--config", metavar="FILE", default=default, help="TOML config (see node.example.toml)"
    )


def add_command(
    commands: Any, name: str, *, help: str, description: str, epilog: str, location: bool = True
) -> argparse.ArgumentParser:
    """A subcommand of `commands` (an argparse subparsers object) whose `epilog` (its examples)
    is printed as written; with `location`, it takes `--data-dir` and `--config` too."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if location:
        add_location_options(parser, top=False)
    return parser


def resolve_args_data_dir(args: argparse.Namespace) -> Path:
    """The data directory of a command: `--data-dir`, else the config's, else the default."""
    if args.data_dir is not None:
        return resolve_data_dir(args.data_dir)
    config = load_config(args.config) if args.config is not None else None
    return resolve_data_dir(config.data_dir if config is not None else None)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Columns padded to their widest cell; the last column is never padded."""
    cells = [[str(h) for h in headers], *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        padded = [text.ljust(width) for text, width in zip(row[:-1], widths, strict=False)]
        sys.stdout.write("  ".join([*padded, row[-1]]).rstrip() + "\n")


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value).replace("\n", " ")
