"""The `s2s-node` commands that talk to a running node over its client API.

Owns: the options, help texts, output (tables for people, `--json` for scripts) and exit
statuses of `peers`, `rooms`, `room create`, `send`, `state`, `upgrade`, `negotiations`,
`rules`, `token create` and `dag`. Each finds the node through `<data_dir>/node.json` and
authenticates with `<data_dir>/access_token` (or `--access-token`). Must not: start a node or
discovery (remote.find_running_node only reads files), or speak HTTP itself (remote does).

Exit statuses: 0 success; 1 when the answer is "no" (the node refused with 403, the thing
asked for does not exist (404), an upgrade negotiation failed, a filter matched nothing);
2 for bad usage or input, no running node, or a node that does not answer properly.

Design: DESIGN.md section 11 (the command line and the `--json` shapes scripts rely on).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from s2s_node.cli_base import (
    EXIT_NO,
    EXIT_OK,
    UsageError,
    add_command,
    add_location_options,
    print_json,
    print_table,
    resolve_args_data_dir,
)
from s2s_node.remote import ClientApi, ClientApiError, find_running_node

TOKEN_ENV = "S2S_NODE_ACCESS_TOKEN"
# The room type of an s2s room made with `--version`/`--name` (through createRoom); without
# them the node picks its configured type (`s2s.room_type`).
S2S_ROOM_TYPE = "support.feline.s2s"
DROP_RULE = "m.s2s.drop"
USER_RULE = "m.policy.rule.user"
SERVER_RULE = "m.policy.rule.server"
# A waiting upgrade may take the peer's whole negotiation timeout (upgrade.timeout_s, 300 s by
# default) plus the upgrade itself.
UPGRADE_WAIT_S = 3600.0
# `--match FIELD=GLOB`: a top-level event key or a dotted path into it (`content.membership`).
_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[^.=\s]+)*")
_VERSION_RATING = re.compile(r"([A-Za-z0-9.\-]+):(\d+)")
_CONTENT_WIDTH = 60

Handler = Callable[[argparse.Namespace], int]


# ---------------------------------------------------------------------------------- the parser


def _command(
    commands: Any, name: str, *, help: str, description: str, examples: str
) -> argparse.ArgumentParser:
    parser = add_command(
        commands,
        name,
        help=help,
        description=description,
        epilog="examples:\n" + examples,
        location=False,
    )
    add_remote_options(parser)
    return parser


def add_remote_options(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    add_location_options(parser, top=False)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    parser.add_argument(
        "--access-token",
        metavar="TOKEN",
        default=argparse.SUPPRESS,
        help=f"act as the user of this token (default: ${TOKEN_ENV}, else the server user's"
        " token in <data_dir>/access_token)",
    )


def add_commands(commands: Any) -> dict[str, Handler]:
    """Add the commands to the `s2s-node` subparsers; returns their handlers by name."""
    _command(
        commands,
        "peers",
        help="list the peers the running node knows",
        description=(
            "List the peers of the running node: identifier, addresses, federation port, whether"
            " its key was verified, whether it is alive, whether the link is encrypted."
            ' --json prints a list of {"identifier", "addresses", "port", "verified", "alive",'
            ' "encrypted"} (departed peers are not listed).'
        ),
        examples="  s2s-node peers\n  s2s-node peers --json | jq -r '.[].identifier'",
    )
    _command(
        commands,
        "rooms",
        help="list the rooms the node (or the token's user) is joined to",
        description=(
            "List joined rooms with their version, type, name and joined members. --json prints"
            ' a list of {"room_id", "room_version", "room_type", "name", "joined_members"}.'
        ),
        examples="  s2s-node rooms\n  s2s-node rooms --json",
    )

    room = add_command(
        commands,
        "room",
        help="room commands: room create",
        description="Room commands.",
        epilog="examples:\n  s2s-node room create --s2s --peer PEER_ID --json",
    )
    room_commands = room.add_subparsers(dest="room_command", metavar="SUBCOMMAND")
    create = _command(
        room_commands,
        "create",
        help="create a room",
        description=(
            "Create a room. --s2s makes an s2s room (room type support.feline.s2s or m.s2s, as"
            " the node is configured) created by the node's server user; --peer ID invites that"
            " peer's server user (and implies --s2s); the node keeps at most one live s2s room"
            " per peer, so asking again gives the same room. With --version or --name the s2s"
            " room is made through createRoom instead: always a new room, of type"
            " support.feline.s2s. Without --s2s the room is an"
            " ordinary room created by the token's user (the server user creates only s2s rooms:"
            " use a token from `s2s-node token create`). Prints the room ID; --json prints"
            ' {"room_id": ...}.'
        ),
        examples=(
            "  s2s-node room create --s2s --peer PEER_ID --json\n"
            "  s2s-node room create --s2s --version 11\n"
            '  s2s-node room create --name "Lobby" --access-token "$TOKEN"'
        ),
    )
    create.add_argument("--s2s", action="store_true", help="an s2s room of the server user")
    create.add_argument("--peer", metavar="ID", help="invite this peer (implies --s2s)")
    create.add_argument("--version", metavar="V", help="room version (default: the node's)")
    create.add_argument("--name", metavar="N", help="room name (m.room.name)")

    send = _command(
        commands,
        "send",
        help="send an event to a room",
        description=(
            "Send an event of TYPE with the JSON object CONTENT (`-` reads it from stdin);"
            " with --state-key, a state event. Prints the event ID; --json prints"
            ' {"event_id": ...}. A refusal (e.g. by a peer\'s drop rule) exits 1 and, with'
            " --json, prints the node's error body (errcode, error, rule)."
        ),
        examples=(
            "  s2s-node send '!room:ID' org.example.ping '{\"n\": 1}'\n"
            "  s2s-node send '!room:ID' m.room.topic '{\"topic\": \"hi\"}' --state-key ''"
        ),
    )
    send.add_argument("room", metavar="ROOM")
    send.add_argument("type", metavar="TYPE")
    send.add_argument("content", metavar="JSON")
    send.add_argument("--state-key", metavar="K", help="send a state event with this state key")

    state = _command(
        commands,
        "state",
        help="show a room's current state",
        description=(
            "Show the current state of ROOM (a table of type, state key, sender, content), only"
            " the events of TYPE, or the content of one state event (TYPE and STATE_KEY)."
            " --json prints the list of state events, or the one content object. Exits 1 when"
            " nothing matches."
        ),
        examples=(
            "  s2s-node state '!room:ID'\n"
            "  s2s-node state '!room:ID' m.room.member --json\n"
            "  s2s-node state '!room:ID' m.room.create ''"
        ),
    )
    state.add_argument("room", metavar="ROOM")
    state.add_argument("type", metavar="TYPE", nargs="?")
    state.add_argument("state_key", metavar="STATE_KEY", nargs="?")

    upgrade = _command(
        commands,
        "upgrade",
        help="negotiate and perform a room upgrade",
        description=(
            "Propose a room-version upgrade of ROOM to the other servers of the room: each"
            " rates the versions it accepts, the best common one wins, then the room is"
            " upgraded. --versions VERSION:RATING,... gives our ratings (0..100; default:"
            " the node's upgrade.versions). Waits for the outcome unless --no-wait. Prints"
            " the outcome; --json prints {status, version, new_room_id, error,"
            ' negotiation_id}. Exits 1 when the negotiation fails ("status": "failed").'
        ),
        examples=(
            "  s2s-node upgrade '!room:ID' --versions 12:100,11:50\n"
            "  s2s-node upgrade '!room:ID' --no-wait --json"
        ),
    )
    upgrade.add_argument("room", metavar="ROOM")
    upgrade.add_argument("--versions", metavar="V:R,...", help="our ratings, e.g. 12:100,11:50")
    upgrade.add_argument("--no-wait", action="store_true", help="return once proposed")

    negotiations = _command(
        commands,
        "negotiations",
        help="list the upgrade negotiations of a room",
        description="List the upgrade negotiations of ROOM and their state; --json a list.",
        examples="  s2s-node negotiations '!room:ID' --json",
    )
    negotiations.add_argument("room", metavar="ROOM")

    rules = add_command(
        commands,
        "rules",
        help="policy rules asked of peers: rules add | list | remove",
        description=(
            "Policy rules published in the s2s room shared with a peer: what this node asks"
            " the peer to drop before sending (DESIGN.md section 6)."
        ),
        epilog=(
            "examples:\n"
            "  s2s-node rules add PEER --match type=m.room.member"
            " --match content.membership=invite --reason 'no invites'\n"
            "  s2s-node rules add PEER --user '@spam*:*'\n  s2s-node rules list --json"
        ),
    )
    rule_commands = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    add = _command(
        rule_commands,
        "add",
        help="publish a rule in the s2s room shared with PEER",
        description=(
            "Publish a rule in the s2s room shared with PEER. --match FIELD=GLOB (repeatable;"
            " FIELD a top-level event key or a dotted content path such as content.membership)"
            ' publishes an m.s2s.drop rule {"match": {FIELD: GLOB, ...}, "reason": ...};'
            " --user GLOB / --server GLOB publish an MSC2313 m.policy.rule.user / .server rule"
            " with recommendation m.ban. Prints the event ID; --json the node's answer."
        ),
        examples=(
            "  s2s-node rules add PEER --match type=m.room.member"
            " --match content.membership=invite --reason 'no invites'\n"
            "  s2s-node rules add PEER --match 'sender=@john:*'\n"
            "  s2s-node rules add PEER --server 'evil*' --reason spam"
        ),
    )
    add.add_argument("peer", metavar="PEER")
    kind = add.add_mutually_exclusive_group(required=True)
    kind.add_argument("--match", metavar="FIELD=GLOB", action="append", help="repeatable")
    kind.add_argument("--user", metavar="GLOB", help="ban users matching GLOB")
    kind.add_argument("--server", metavar="GLOB", help="ban servers matching GLOB")
    add.add_argument("--reason", metavar="TEXT", help="why (shown to the peer)")
    add.add_argument("--state-key", metavar="K", help="state key (default: chosen by the node)")
    listing = _command(
        rule_commands,
        "list",
        help="list rules (ours and the peers')",
        description=(
            "List the rules in s2s rooms, ours (what we ask) and theirs (what peers ask of"
            " us), optionally only those shared with PEER; --json a list of {peer, room_id,"
            " type, state_key, content, direction}."
        ),
        examples="  s2s-node rules list\n  s2s-node rules list PEER --json",
    )
    listing.add_argument("peer", metavar="PEER", nargs="?")
    remove = _command(
        rule_commands,
        "remove",
        help="withdraw one of our rules",
        description="Withdraw our rule TYPE/STATE_KEY in the s2s room shared with PEER.",
        examples="  s2s-node rules remove PEER m.s2s.drop rule1",
    )
    remove.add_argument("peer", metavar="PEER")
    remove.add_argument("type", metavar="TYPE")
    remove.add_argument("state_key", metavar="STATE_KEY")

    token = add_command(
        commands,
        "token",
        help="access tokens: token create",
        description="Access tokens of the node's client API.",
        epilog="examples:\n  s2s-node token create --user alice --json",
    )
    token_commands = token.add_subparsers(dest="token_command", metavar="SUBCOMMAND")
    token_create = _command(
        token_commands,
        "create",
        help="create an access token for a local user",
        description=(
            "Create an access token for the local user @LOCALPART:<identifier> (creating the"
            " user), or, without --user, another token of the server user. Local users other"
            ' than the server user exist only through this. --json prints {"user_id",'
            ' "access_token"}.'
        ),
        examples="  s2s-node token create --user alice --json",
    )
    token_create.add_argument("--user", metavar="LOCALPART", help="the user's localpart")

    dag = _command(
        commands,
        "dag",
        help="draw a room's event graph (DOT, JSON or SVG)",
        description=(
            "Draw the event DAG of ROOM as the node holds it, with each event's receipt status"
            " (accepted, soft-failed, rejected) and the forward extremities marked. Writes to"
            " stdout or to --output FILE."
        ),
        examples=(
            "  s2s-node dag '!room:ID' --format svg --output room.svg\n"
            "  s2s-node dag '!room:ID' --format dot | dot -Tpng > room.png"
        ),
    )
    dag.add_argument("room", metavar="ROOM")
    dag.add_argument("--format", choices=("dot", "json", "svg"), default="dot")
    dag.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    dag.add_argument("--auth-edges", action="store_true", help="also draw auth_events")

    return {
        "peers": cmd_peers,
        "rooms": cmd_rooms,
        "room": cmd_room,
        "send": cmd_send,
        "state": cmd_state,
        "upgrade": cmd_upgrade,
        "negotiations": cmd_negotiations,
        "rules": cmd_rules,
        "token": cmd_token,
        "dag": cmd_dag,
    }


# -------------------------------------------------------------------------------- the commands


def connect(args: argparse.Namespace) -> ClientApi:
    """The client API of the node running for the command's data directory."""
    data_dir: Path = resolve_args_data_dir(args)
    node = find_running_node(data_dir)
    token = getattr(args, "access_token", None) or os.environ.get(TOKEN_ENV) or node.access_token
    return ClientApi(node.client_url, token)


def cmd_peers(args: argparse.Namespace) -> int:
    peers = connect(args).peers()
    if args.json:
        print_json(peers)
        return EXIT_OK
    rows = [
        [p.get(k) for k in ("identifier", "addresses", "port", "verified", "alive", "encrypted")]
        for p in peers
    ]
    print_table(["IDENTIFIER", "ADDRESSES", "PORT", "VERIFIED", "ALIVE", "ENCRYPTED"], rows)
    return EXIT_OK


def summarise_room(room_id: str, state: list[dict[str, Any]]) -> dict[str, Any]:
    """`{"room_id", "room_version", "room_type", "name", "joined_members"}` from its state."""
    summary: dict[str, Any] = {
        "room_id": room_id,
        "room_version": None,
        "room_type": None,
        "name": None,
        "joined_members": [],
    }
    for event in state:
        content = event.get("content")
        content = content if isinstance(content, dict) else {}
        kind, key = event.get("type"), event.get("state_key")
        if kind == "m.room.create" and key == "":
            summary["room_version"] = content.get("room_version", "1")
            summary["room_type"] = content.get("type")
        elif kind == "m.room.name" and key == "":
            summary["name"] = content.get("name")
        elif kind == "m.room.member" and content.get("membership") == "join":
            summary["joined_members"].append(key)
    summary["joined_members"].sort()
    return summary


def cmd_rooms(args: argparse.Namespace) -> int:
    api = connect(args)
    rooms = [summarise_room(r, api.state(r)) for r in sorted(api.joined_rooms())]
    if args.json:
        print_json(rooms)
        return EXIT_OK
    rows = [
        [r["room_id"], r["room_version"], r["room_type"], len(r["joined_members"]), r["name"]]
        for r in rooms
    ]
    print_table(["ROOM", "VERSION", "TYPE", "MEMBERS", "NAME"], rows)
    return EXIT_OK


def cmd_room(args: argparse.Namespace) -> int:
    if args.room_command != "create":
        raise UsageError("room needs a subcommand: create (see s2s-node room --help)")
    api = connect(args)
    s2s = bool(args.s2s or args.peer)
    if s2s and not (args.version or args.name):
        # The node's own path: its configured room type, one live room per peer.
        room_id = api.create_s2s_room(args.peer)
    else:
        body: dict[str, Any] = {}
        if s2s:
            body["creation_content"] = {"type": S2S_ROOM_TYPE}
            body["invite"] = [f"@:{args.peer}"] if args.peer else []
        if args.version:
            body["room_version"] = args.version
        if args.name:
            body["name"] = args.name
        room_id = api.create_room(body)
    if args.json:
        print_json({"room_id": room_id})
    else:
        sys.stdout.write(f"{room_id}\n")
    return EXIT_OK


def parse_content(text: str) -> dict[str, Any]:
    """The `JSON` argument: an object, or `-` for one on stdin."""
    if text == "-":
        text = sys.stdin.read()
    try:
        content = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"the content is not JSON: {exc}") from None
    if not isinstance(content, dict):
        raise UsageError("the content must be a JSON object")
    return content


def cmd_send(args: argparse.Namespace) -> int:
    content = parse_content(args.content)
    api = connect(args)
    if args.state_key is not None:
        event_id = api.put_state(args.room, args.type, args.state_key, content)
    else:
        event_id = api.send(args.room, args.type, content)
    if args.json:
        print_json({"event_id": event_id})
    else:
        sys.stdout.write(f"{event_id}\n")
    return EXIT_OK


def cmd_state(args: argparse.Namespace) -> int:
    api = connect(args)
    if args.state_key is not None:
        content = api.state_event(args.room, args.type, args.state_key)
        if args.json:
            print_json(content)
        else:
            sys.stdout.write(json.dumps(content, ensure_ascii=False, indent=2) + "\n")
        return EXIT_OK
    events = api.state(args.room)
    if args.type is not None:
        events = [e for e in events if e.get("type") == args.type]
    events.sort(key=lambda e: (str(e.get("type")), str(e.get("state_key"))))
    if args.json:
        print_json(events)
    else:
        rows = [
            [e.get("type"), e.get("state_key"), e.get("sender"), _short(e.get("content"))]
            for e in events
        ]
        print_table(["TYPE", "STATE_KEY", "SENDER", "CONTENT"], rows)
    if not events:
        sys.stderr.write("s2s-node: no such state\n")
        return EXIT_NO
    return EXIT_OK


def parse_versions(text: str) -> dict[str, int]:
    """`12:100,11:50` -> {"12": 100, "11": 50}; ratings 0..100, each version once."""
    ratings: dict[str, int] = {}
    for part in text.split(","):
        found = _VERSION_RATING.fullmatch(part.strip())
        if found is None:
            raise UsageError(f"--versions: {part.strip()!r} is not VERSION:RATING")
        version, rating = found.group(1), int(found.group(2))
        if rating > 100:
            raise UsageError(f"--versions: rating {rating} of {version} is over 100")
        if version in ratings:
            raise UsageError(f"--versions: {version} given twice")
        ratings[version] = rating
    return ratings


def cmd_upgrade(args: argparse.Namespace) -> int:
    versions = parse_versions(args.versions) if args.versions is not None else None
    api = connect(args)
    outcome = api.propose_upgrade(
        args.room, versions, wait=not args.no_wait, timeout=UPGRADE_WAIT_S
    )
    status = outcome.get("status")
    if args.json:
        print_json(outcome)
    elif status == "upgraded":
        version, new_room = outcome.get("version"), outcome.get("new_room_id")
        sys.stdout.write(f"upgraded to room version {version}: {new_room}\n")
    elif status == "failed":
        sys.stdout.write(f"failed: {outcome.get('error')}\n")
    else:
        sys.stdout.write(f"{status}: negotiation {outcome.get('negotiation_id')}\n")
    return EXIT_NO if status == "failed" else EXIT_OK


def cmd_negotiations(args: argparse.Namespace) -> int:
    items = connect(args).negotiations(args.room)
    if args.json:
        print_json(items)
        return EXIT_OK
    columns = ("negotiation_id", "state", "role", "peer", "version", "error")
    rows = [[item.get(c) for c in columns] for item in items]
    print_table([c.upper() for c in columns], rows)
    return EXIT_OK


def build_rule(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The rule type and content `rules add` publishes."""
    if args.match:
        match: dict[str, str] = {}
        for item in args.match:
            field, sep, glob = item.partition("=")
            if not sep or _FIELD.fullmatch(field) is None:
                raise UsageError(f"--match {item!r}: expected FIELD=GLOB, e.g. type=m.room.member")
            if field in match:
                raise UsageError(f"--match: {field} given twice")
            match[field] = glob
        content: dict[str, Any] = {"match": match}
        if args.reason is not None:
            content["reason"] = args.reason
        return DROP_RULE, content
    rule_type, entity = (
        (USER_RULE, args.user) if args.user is not None else (SERVER_RULE, args.server)
    )
    return rule_type, {"entity": entity, "recommendation": "m.ban", "reason": args.reason or ""}


def cmd_rules(args: argparse.Namespace) -> int:
    if args.rules_command is None:
        raise UsageError(
            "rules needs a subcommand: add, list or remove (see s2s-node rules --help)"
        )
    if args.rules_command == "add":
        rule_type, content = build_rule(args)
        answer = connect(args).add_rule(args.peer, rule_type, content, args.state_key)
        _print_event_answer(args, answer)
        return EXIT_OK
    if args.rules_command == "remove":
        answer = connect(args).remove_rule(args.peer, args.type, args.state_key)
        _print_event_answer(args, answer)
        return EXIT_OK
    rules = connect(args).rules(args.peer)
    if args.json:
        print_json(rules)
        return EXIT_OK
    columns = ("peer", "direction", "type", "state_key")
    rows = [[*(r.get(c) for c in columns), _short(r.get("content"))] for r in rules]
    print_table(["PEER", "DIRECTION", "TYPE", "STATE_KEY", "CONTENT"], rows)
    return EXIT_OK


def cmd_token(args: argparse.Namespace) -> int:
    if args.token_command != "create":
        raise UsageError("token needs a subcommand: create (see s2s-node token --help)")
    answer = connect(args).create_token(args.user)
    result = {"user_id": answer.get("user_id"), "access_token": answer.get("access_token")}
    if args.json:
        print_json(result)
    else:
        sys.stdout.write(f"user_id: {result['user_id']}\naccess_token: {result['access_token']}\n")
    return EXIT_OK


def cmd_dag(args: argparse.Namespace) -> int:
    # The renderers pull in the core; loaded on demand.
    from s2s_node import dagview  # noqa: PLC0415

    answer = connect(args).dag(args.room)
    nodes = build_dag_nodes_from_answer(answer)
    if args.format == "json":
        text = json.dumps(dagview.render_json(nodes, auth_edges=args.auth_edges)) + "\n"
    elif args.format == "svg":
        text = dagview.render_svg(nodes, auth_edges=args.auth_edges, title=args.room)
    else:
        text = dagview.render_dot(nodes, auth_edges=args.auth_edges, title=args.room)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        sys.stderr.write(f"s2s-node: {len(nodes)} events written to {args.output}\n")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def build_dag_nodes_from_answer(answer: Mapping[str, Any]) -> list[Any]:
    """`DagNode`s from the node's DAG answer (`GET .../rooms/{room}/dag`): `{"room_version",
    "events": [federation PDUs], "statuses": {event_id: status}, "forward_extremities"}`.

    The events are parsed with the room version's rules (their IDs recomputed and compared with
    the answer's); a malformed answer is bad input from the node (exit 2).
    """
    from s2s_node.core.events import EventFormatError, parse_pdu  # noqa: PLC0415
    from s2s_node.core.room import EventStatus  # noqa: PLC0415
    from s2s_node.core.rules import UnsupportedRoomVersionError, rules_for  # noqa: PLC0415
    from s2s_node.dagview import build_dag_nodes  # noqa: PLC0415

    events, raw_statuses = answer.get("events"), answer.get("statuses", {})
    extremities = answer.get("forward_extremities", [])
    if not (
        isinstance(events, list)
        and isinstance(raw_statuses, dict)
        and isinstance(extremities, list)
    ):
        raise UsageError("the node's DAG answer lacks events, statuses or forward_extremities")
    try:
        rules = rules_for(str(answer.get("room_version")))
        pdus = []
        for event in events:
            # The node adds each event's ID for convenience; room versions 10-12 compute it.
            claimed = event.get("event_id")
            pdu = parse_pdu(
                {k: v for k, v in event.items() if k != "event_id"}, rules, check_counts=False
            )
            if claimed is not None and claimed != pdu.event_id:
                raise ValueError(f"{claimed!r:.60} is not the ID of its event")
            pdus.append(pdu)
        statuses = {
            str(event_id): EventStatus(status)
            for event_id, status in raw_statuses.items()
            if status is not None
        }
    except (UnsupportedRoomVersionError, EventFormatError, ValueError, AttributeError) as exc:
        raise UsageError(f"the node's DAG answer has a malformed event: {exc}") from None
    return build_dag_nodes(pdus, statuses, {str(e) for e in extremities})


# ----------------------------------------------------------------------------------- errors


def report_api_error(args: argparse.Namespace, exc: ClientApiError) -> int:
    """One line on stderr (and the error body on stdout with --json); 1 for 403/404, else 2."""
    if getattr(args, "json", False):
        print_json(exc.body)
    message = f"s2s-node: the node answered {exc.status} {exc.errcode}: {exc.error}"
    rule = exc.body.get("rule")
    if isinstance(rule, dict) and str(rule.get("type")) not in exc.error:
        message += f" (rule {rule.get('type')} {rule.get('state_key')!r} in {rule.get('room_id')})"
    sys.stderr.write(message.replace("\n", " ") + "\n")
    return EXIT_NO if exc.status in (403, 404) else 2


def _print_event_answer(args: argparse.Namespace, answer: Mapping[str, Any]) -> None:
    if args.json:
        print_json(answer)
    else:
        sys.stdout.write(f"{answer.get('event_id')}\n")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= _CONTENT_WIDTH else text[: _CONTENT_WIDTH - 1] + "…"
