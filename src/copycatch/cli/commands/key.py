"""``copycatch key show``: summarise a key (scheme, digest, parameters, provenance), secrets only on request."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from .. import options

VERB = "key"
HELP = "inspect a key file"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        description="Summarise a key (scheme, digest, parameters, provenance) without its secrets.",
    )
    actions = p.add_subparsers(dest="key_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="summarise a key", formatter_class=options.Formatter)
    show.add_argument("file")
    show.add_argument("--secrets", action="store_true", help="also print the secret tensors")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ...core.key import Key

    summary = Key.load(args.file).summary(secrets=args.secrets)
    if args.json:
        options.say(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    options.say(f"key file:  {args.file}")
    options.say(f"scheme:    {summary['scheme']}")
    options.say(f"digest:    {summary['digest']}")
    for k in ("created", "package_version", "dataset", "arch", "num_classes", "victim_sha256"):
        if k in summary["meta"]:
            options.say(f"{k + ':':<11}{summary['meta'][k]}")
    options.say("params:    " + ", ".join(f"{k}={v}" for k, v in summary["params"].items()))
    options.say("secrets:   " + ("(shown below)" if args.secrets else "(hidden; --secrets to print them)"))
    for name, t in summary["tensors"].items():
        options.say(f"  {name}: {t['dtype']} {'×'.join(map(str, t['shape'])) or 'scalar'}")
        if args.secrets:
            options.say(textwrap.indent(textwrap.fill(json.dumps(t["values"]), 110), "    "))
    return 0
