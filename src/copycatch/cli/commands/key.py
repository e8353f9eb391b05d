"""``copycatch key show``: summarise a key or key set (scheme, digest, parameters, provenance), secrets only on
request."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from .. import options

VERB = "key"
HELP = "inspect a key file or key set"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        description="Summarise a key (scheme, digest, parameters, provenance) without its secrets; for a key set "
        "(.cckeys), its digest and metadata and every part.",
    )
    actions = p.add_subparsers(dest="key_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="summarise a key or key set", formatter_class=options.Formatter)
    show.add_argument("file", help="key file (.cckey) or key set (.cckeys)")
    show.add_argument("--secrets", action="store_true", help="also print the secret tensors")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ...core.keyset import KeySet, load_key_file

    loaded = load_key_file(args.file)
    summary = loaded.summary(secrets=args.secrets)
    if args.json:
        options.say(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    if not isinstance(loaded, KeySet):
        options.say(f"key file:  {args.file}")
        _show_key(summary, secrets=args.secrets)
        return 0
    meta = summary["meta"]
    options.say(f"key set:   {args.file} ({len(loaded)} keys)")
    options.say(f"digest:    {summary['digest']}")
    independence = (
        "yes: the parts' secrets were drawn independently (verify combines them with Fisher's method)"
        if loaded.independent
        else "not declared (verify combines the parts with Holm's adjustment)"
    )
    rows = {"independent": independence, **{k: v for k, v in sorted(meta.items()) if k != "independent"}}
    width = max(len(k) for k in rows) + 2
    for k, v in rows.items():
        options.say(f"{k + ':':<{width}}{', '.join(map(str, v)) if isinstance(v, list) else v}")
    for i, part in enumerate(summary["parts"]):
        options.say(f"\npart {i}:")
        _show_key(part, secrets=args.secrets, indent="  ")
    return 0


def _show_key(summary: dict[str, Any], *, secrets: bool, indent: str = "") -> None:
    from ...schemes.embedding import describe_cost

    def say(text: str) -> None:
        options.say(indent + text)

    say(f"scheme:    {summary['scheme']}")
    say(f"digest:    {summary['digest']}")
    for k in ("created", "package_version", "dataset", "arch", "num_classes", "victim_sha256"):
        if k in summary["meta"]:
            say(f"{k + ':':<11}{summary['meta'][k]}")
    cost = summary["meta"].get("accuracy_cost")
    say(f"cost:      {describe_cost(cost)}")
    if cost and cost.get("reference_sha256"):
        say(f"reference: {cost['reference']}; sha256 {cost['reference_sha256'][:16]}…")
    say("params:    " + ", ".join(f"{k}={v}" for k, v in summary["params"].items()))
    say("secrets:   " + ("(shown below)" if secrets else "(hidden; --secrets to print them)"))
    for name, t in summary["tensors"].items():
        say(f"  {name}: {t['dtype']} {'×'.join(map(str, t['shape'])) or 'scalar'}")
        if secrets:
            options.say(textwrap.indent(textwrap.fill(json.dumps(t["values"]), 110), indent + "    "))
