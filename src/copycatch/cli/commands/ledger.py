"""``copycatch ledger``: who asked what — summarise a ``copycatch serve`` query ledger per API key."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import re
import time
from typing import Any

from .. import options

VERB = "ledger"
HELP = "summarise serve query ledgers per API key (requests, inputs, refusals, repeated queries)"

_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|hour|d|day|w|week)s?\s*$", re.IGNORECASE)
_UNIT = {
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
    "w": 604800,
    "week": 604800,
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        description="Read a query ledger written by `copycatch serve` (with its rotated files) and summarise it "
        "per API key: requests, answered inputs, refusals by status, distinct inputs and the share of "
        "repeated inputs (averaging attacks repeat queries), first and last request. Unreadable lines "
        "are counted, never fatal. Several ledgers (one per replica of a server sharing its limits through "
        "--state) are merged in time order, and each one's own counts are shown.",
        epilog="examples:\n  copycatch ledger copycatch-ledger.jsonl\n"
        "  copycatch ledger copycatch-ledger.jsonl --since 1h --key alice --json\n"
        "  copycatch ledger replica-a/ledger.jsonl replica-b/ledger.jsonl        # replicas merged",
    )
    p.add_argument(
        "file",
        nargs="+",
        metavar="FILE",
        help="the live ledger file (rotated FILE.NNNNNN files are read too); several: one per replica, merged",
    )
    p.add_argument("--key", action="append", metavar="ID", help="only these key ids (repeatable)")
    p.add_argument(
        "--since",
        default=None,
        metavar="WHEN",
        help="only requests since WHEN: an ISO date/time (UTC unless it says otherwise) or a duration "
        "ago such as 30min, 2h, 7d",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


def parse_since(text: str | None, *, now: float | None = None) -> float | None:
    from ...core.errors import InvalidArgument

    if text is None:
        return None
    m = _AGO.match(text)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT[m.group(2).lower()]
    try:
        when = _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(
            f"--since {text!r} is neither an ISO date/time (2025-01-31, 2025-01-31T12:00) "
            "nor a duration ago (30min, 2h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.timestamp()


def _counts(files: int, lines: int, corrupt: int) -> str:
    return (
        f"{files} file{'s' if files != 1 else ''}, {lines} requests, "
        f"{corrupt} unreadable line{'s' if corrupt != 1 else ''}"
    )


def _refused_text(refused: dict[str, int]) -> str:
    return ", ".join(f"{code}×{count}" for code, count in sorted(refused.items())) or "-"


def run(args: argparse.Namespace) -> int:
    from ... import api

    summary = api.ledger_summary(args.file, since=parse_since(args.since), keys=args.key)
    rows = summary["keys"]
    if args.json:
        options.say(json.dumps({**summary, "keys": [r.to_dict() for r in rows]}, indent=2))
        return 0
    since = summary["since"]
    when = (
        f", since {_dt.datetime.fromtimestamp(since, _dt.timezone.utc).isoformat(timespec='seconds')}" if since else ""
    )
    ledgers = summary["ledgers"]
    for ledger in ledgers:
        counts = _counts(ledger["files"], ledger["lines"], ledger["unreadable_lines"])
        options.say(f"ledger {ledger['ledger']}: {counts}{when if len(ledgers) == 1 else ''}")
    if len(ledgers) > 1:
        merged = _counts(len(summary["files"]), summary["lines"], summary["unreadable_lines"])
        options.say(f"{len(ledgers)} ledgers merged in time order: {merged}{when}")
    if not rows:
        options.say("no requests match")
        return 0
    header = ("key", "requests", "answered", "inputs", "distinct", "repeat", "refused", "first", "last")
    table = [header] + [
        (
            r.key,
            str(r.requests),
            str(r.answered),
            str(r.queries),
            str(r.unique_inputs),
            f"{r.repeat_rate:.1%}",
            _refused_text(r.refused),
            r.first[:19],
            r.last[:19],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    left = (0, 6, 7, 8)
    for row in table:
        cells = (c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        options.say("  ".join(cells).rstrip())
    return 0
