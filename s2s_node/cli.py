"""The `s2s-node` command: the parser and the commands that need no running node.

The `cli*` modules are the only ones that print. This one owns the top-level parser, `init`,
`id`, `run` and `debug`; the commands that talk to a running node live in `cli_remote`, the
shared conventions in `cli_base`.

Exit status: 0 success, 1 when the answer is "no" (a check failed), 2 bad usage or input.
Design: DESIGN.md section 11 (interfaces other people script against).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from s2s_node import __version__, cli_remote
from s2s_node.cli_base import (
    EXIT_NO,
    EXIT_OK,
    EXIT_USAGE,
    CommandParser,
    UsageError,
    add_command,
    add_location_options,
    print_json,
    resolve_args_data_dir,
)
from s2s_node.config import ConfigError, load_config
from s2s_node.datadir import DataDirError, create_signing_key, load_signing_key
from s2s_node.debugfiles import InputError
from s2s_node.remote import ClientApiError, NoRunningNodeError, UnreachableError
from s2s_node.tokens import init_access_token

EPILOG = """\
examples:
  s2s-node run                           run a node with the defaults (key created on first run)
  s2s-node init --data-dir /tmp/n1       create the data dir, key and token; print the identifier
  s2s-node id --data-dir /tmp/n1         print the identifier of that node
  s2s-node run --data-dir /tmp/n1        run the node until SIGINT/SIGTERM
  s2s-node peers --data-dir /tmp/n1      the peers the running node knows (--json for scripts)
  s2s-node room create --s2s --peer ID   open an s2s room with a peer; prints the room ID
  s2s-node send ROOM org.example.ping '{"n": 1}'
  s2s-node state ROOM                    the room's current state
  s2s-node dag ROOM --format svg --output room.svg
  s2s-node debug check room.json         verify hashes, signatures and auth of each event

Commands that talk to a running node find it through <data_dir>/node.json.
Exit status: 0 success, 1 when the answer is "no", 2 bad usage or input.
"""

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    """The `s2s-node` parser and the handler of each command."""
    parser = CommandParser(
        prog="s2s-node",
        description="A peer-to-peer Matrix node for server-to-server rooms (MSC3348).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"s2s-node {__version__}")
    add_location_options(parser, top=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)

    init = add_command(
        commands,
        "init",
        help="create the data directory and the node's key; print the identifier",
        description=(
            "Create the data directory and the node's ed25519 key (mode 0600), then print the"
            " node identifier. An existing key is never overwritten: init on an initialised"
            " directory prints the same identifier again."
        ),
        epilog="example:\n  s2s-node init --data-dir /tmp/n1",
    )
    init.add_argument("--json", action="store_true", help="print {identifier, server_user}")

    ident = add_command(
        commands,
        "id",
        help="print this node's identifier",
        description="Print the node identifier (the base32 of its verify key).",
        epilog="example:\n  s2s-node id --json",
    )
    ident.add_argument("--json", action="store_true", help="print a JSON object")

    run = add_command(
        commands,
        "run",
        help="run the node in the foreground until SIGINT/SIGTERM",
        description=(
            "Run the node: create the key and database on first use, listen for federation,"
            " log to stderr, and write <data_dir>/node.json (pid, identifier, client_url,"
            " federation_url) while running. Stops cleanly on SIGINT or SIGTERM."
        ),
        epilog=(
            "example:\n  s2s-node run --data-dir /tmp/n1 --set federation.listen=127.0.0.1:0"
            " --set discovery.enabled=false"
        ),
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override a config key (a TOML value, else a string); repeatable",
    )

    debug = commands.add_parser(
        "debug",
        help="work on event files (no node needed)",
        description="Tools that read event files; no running node is needed.",
    )
    add_location_options(debug, top=False)
    tools = debug.add_subparsers(dest="tool", metavar="TOOL", parser_class=CommandParser)

    check = add_command(
        tools,
        "check",
        help="verify hash, event ID, signatures and auth of each event in a file",
        description=(
            "Read a JSON (or gzip JSON) file of PDUs — a bare list, or"
            ' {"room_version", "events", "signing_keys": {server: {key_id: base64}}} — and'
            " print one JSON object per event, in file order: event_id, hash_ok,"
            ' signature_ok, auth ("allow" or "reject" against the event\'s own auth events; an'
            " event rejected earlier counts as rejected when later events cite it) and a"
            " reason when something fails. Without signing_keys, keys are derived from node"
            " identifiers. Exit status 1 if any event fails."
        ),
        epilog="example:\n  s2s-node debug check room.json | jq -c 'select(.auth != \"allow\")'",
        location=False,
    )
    check.add_argument("file")
    check.add_argument("--room-version", help="room version if the file does not say")

    resolve = add_command(
        tools,
        "resolve",
        help="run state resolution over the state sets of a file",
        description=(
            'Input: {"room_version", "events": [PDUs], "state_sets": [...]} (gzip accepted),'
            " each state set a list of event IDs or of [type, state_key, event_id] triples."
            ' Prints {"resolved_state": [[type, state_key, event_id], ...]} sorted.'
            " --repeat N resolves N times (events parsed once beforehand) and adds"
            " resolve_median_s."
        ),
        epilog="example:\n  s2s-node debug resolve v12-s1000-c100-k2.json.gz --repeat 7",
        location=False,
    )
    resolve.add_argument("file")
    resolve.add_argument("--repeat", type=int, default=0, metavar="N")
    resolve.add_argument("--room-version", help="room version if the file does not say")

    replay = add_command(
        tools,
        "replay",
        help="walk a DAG and print the state after an event or at the extremities",
        description=(
            "Add the file's events to a room graph in causal order (prev_events and"
            " auth_events first), resolving state at every merge and applying the"
            " authorisation rules, then print the state after --at EVENT_ID, or the resolved"
            ' state of the forward extremities: {"resolved_state": [[type, state_key,'
            " event_id], ...]}. Signatures are not checked here (see `debug check`)."
        ),
        epilog="example:\n  s2s-node debug replay room.json --at '$abc...'",
        location=False,
    )
    replay.add_argument("file")
    replay.add_argument("--at", metavar="EVENT_ID")
    replay.add_argument("--room-version", help="room version if the file does not say")

    handlers: dict[str, Handler] = {
        "init": cmd_init,
        "id": cmd_id,
        "run": cmd_run,
        "debug": cmd_debug,
    }
    handlers.update(cli_remote.add_commands(commands))
    return parser, handlers


# ----------------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    data_dir = resolve_args_data_dir(args)
    key, created = create_signing_key(data_dir)
    init_access_token(data_dir)  # the database and <data_dir>/access_token (0600), once
    if args.json:
        print_json({"identifier": key.identifier, "server_user": f"@:{key.identifier}"})
    else:
        sys.stdout.write(f"{key.identifier}\n")
    what = "created" if created else "already had"
    sys.stderr.write(f"s2s-node: {what} the key in {data_dir}\n")
    return EXIT_OK


def cmd_id(args: argparse.Namespace) -> int:
    key = load_signing_key(resolve_args_data_dir(args))
    if args.json:
        print_json({"identifier": key.identifier, "server_user": f"@:{key.identifier}"})
    else:
        sys.stdout.write(f"{key.identifier}\n")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    # The node pulls in trio, the store and the network stack; loaded on demand.
    from s2s_node import runner  # noqa: PLC0415
    from s2s_node.store import StoreError  # noqa: PLC0415

    config = load_config(args.config, args.overrides)
    try:
        runner.run(config, args.data_dir)
    except StoreError as exc:
        raise UsageError(f"cannot open the store: {exc}") from None
    except OSError as exc:
        raise UsageError(f"cannot run: {exc.strerror or exc}") from None
    return EXIT_OK


def cmd_debug(args: argparse.Namespace) -> int:
    # The debug tools pull in the whole core; loaded on demand to keep `init`/`id` quick.
    from s2s_node import debugtools  # noqa: PLC0415

    if args.tool == "check":
        results = debugtools.check_file(args.file, room_version=args.room_version)
        failed = 0
        for result in results:
            print_json(result)
            ok = result.get("hash_ok") and result.get("signature_ok")
            if not ok or result.get("auth") != "allow":
                failed += 1
        sys.stderr.write(f"s2s-node: {len(results)} events, {failed} failed\n")
        return EXIT_NO if failed else EXIT_OK
    if args.tool == "resolve":
        if args.repeat < 0:
            raise UsageError("--repeat must be 0 or more")
        print_json(
            debugtools.resolve_file(args.file, repeat=args.repeat, room_version=args.room_version)
        )
        return EXIT_OK
    if args.tool == "replay":
        print_json(debugtools.replay_file(args.file, at=args.at, room_version=args.room_version))
        return EXIT_OK
    raise UsageError("debug needs a tool: check, resolve or replay (see s2s-node debug --help)")


def main(argv: Sequence[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handlers[args.command](args)
    except ClientApiError as exc:
        return cli_remote.report_api_error(args, exc)
    except (
        UsageError,
        InputError,
        DataDirError,
        ConfigError,
        NoRunningNodeError,
        UnreachableError,
    ) as exc:
        sys.stderr.write(f"s2s-node: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
