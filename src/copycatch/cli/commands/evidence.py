"""``copycatch evidence check``: check signed evidence (or a signed transcript) with the owner's public key alone."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from .. import options

VERB = "evidence"
HELP = "check signed evidence with the owner's public key: signature, hash chain, recomputed p-values"

DESCRIPTION = (
    "Check evidence written by `copycatch verify --report DIR --sign-with owner.key` with the owner's public key "
    "alone: the signature (FILE.sig) of the exact bytes, each p-value recomputed from the recorded counts and the "
    "verdict from it, and the transcript (beside the evidence, or --transcript): its hash chain, that its lines are "
    "the ones the signed evidence lists, and its own signature. With the key (--key, once the owner discloses it), "
    "the evidence is also recomputed from the recorded answers. FILE may also be a signed transcript on its own."
)

EPILOG = textwrap.dedent(f"""\
    examples:
      copycatch evidence check case/evidence.json --public-key owner.pub
      copycatch evidence check case/evidence.json --public-key owner.pub --key victim.cckey
      copycatch evidence check case/transcript.jsonl --public-key owner.pub
    without copycatch (OpenSSL 3), the signature alone:
      openssl pkeyutl -verify -pubin -inkey owner.pub -rawin -in evidence.json -sigfile evidence.json.sig

    exit status:
      0  every check made passed
      {options.EXIT_CHECK_FAILED}  a check failed: bad or missing signature, broken chain, p-value or verdict mismatch
      {options.EXIT_ERROR}  usage error: missing file, unreadable public key or key (one line on stderr)""")

_MARK = {True: "ok", False: "FAIL", None: "--"}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB, help=HELP, formatter_class=options.Formatter, description=DESCRIPTION, epilog=EPILOG
    )
    actions = p.add_subparsers(dest="evidence_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="check a signed evidence file or transcript",
        formatter_class=options.Formatter,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    check.add_argument("file", metavar="FILE", help="evidence.json (or a transcript) signed by the owner")
    check.add_argument("--public-key", required=True, metavar="PUB", help="the owner's public key (.pub, PEM)")
    check.add_argument(
        "--transcript",
        metavar="T",
        default=None,
        help="the query transcript the evidence rests on; when not given, transcript.jsonl beside FILE if there",
    )
    check.add_argument(
        "--key",
        action="append",
        default=None,
        help="the key(s) the evidence was computed with, when disclosed: recompute it from the recorded answers",
    )
    check.add_argument("--json", action="store_true", help="print every check as JSON")
    check.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ... import api

    result = api.check_evidence(args.file, args.public_key, transcript=args.transcript, key=args.key or ())
    if args.json:
        options.say(json.dumps(result.to_dict(), indent=2, sort_keys=True))
    else:
        options.say(f"{result.file} ({result.kind}), public key sha256 {result.public_key_sha256}")
        width = max(len(c.name) for c in result.checks)
        for c in result.checks:
            options.say(f"  {_MARK[c.ok]:<4}  {c.name:<{width}}  {c.detail}")
        options.say(_conclusion(result))
    return 0 if result.ok else options.EXIT_CHECK_FAILED


def _conclusion(result: Any) -> str:
    if not result.ok:
        failed = result.failed
        return f"FAILED: {len(failed)} of {len(result.checks)} checks failed ({', '.join(c.name for c in failed)})"
    skipped = [c.name for c in result.checks if c.ok is None]
    line = f"VALID: all {len(result.checks) - len(skipped)} checks made passed"
    if result.kind == "evidence":
        line += f"; the owner's evidence says {str(result.verdict).upper()} at p = {result.p_value:.3g}"
    if skipped:
        line += f" (not checked: {', '.join(skipped)})"
    return line
