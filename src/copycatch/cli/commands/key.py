"""``copycatch key show``: summarise a key or key set (scheme, digest, parameters, provenance), secrets only on
request. ``copycatch key dawn-records``: a DAWN verification key from one client's queries (ledger + record file).
``copycatch key keygen``: the owner's signing key pair, which signs evidence (``verify --sign-with``)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Any

from .. import options

VERB = "key"
HELP = "inspect a key file or key set; make the owner's signing key pair"


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
    commit = actions.add_parser(
        "commit",
        help="print a key's public commitment record, to publish or timestamp",
        formatter_class=options.Formatter,
        description="Print the commitment record of a key or key set (scheme, public parameters, the key's digest, "
        "the victim's weights digest, the secret seed's digest, UTC time) and its id, the SHA-256 to publish or "
        "have timestamped (e.g. by an RFC 3161 timestamp authority) so that a third party can later check that "
        "the key predates a suspect. The record beside the key (KEY.commit.json, written by embed and protect) is "
        "checked against the key and printed; without one, a record is made now and written there.",
    )
    commit.add_argument("file", help="key file (.cckey) or key set (.cckeys)")
    commit.add_argument("--victim", default=None, help="victim model file (default: the digest the key records)")
    commit.add_argument("-o", "--out", default=None, help="commitment file (default: FILE.commit.json)")
    commit.add_argument("--json", action="store_true", help="print the record alone, as JSON")
    commit.set_defaults(func=run_commit)
    records = actions.add_parser(
        "dawn-records",
        help="a DAWN verification key from one client's queries",
        formatter_class=options.Formatter,
        description="Join the server ledger's entries of one API key with the DAWN record file written beside it "
        "(<ledger>.dawn.jsonl) and write a key carrying that client's records, each checked against the secret; "
        "verify a suspect with it (copycatch verify --key OUT).",
    )
    records.add_argument("--key", required=True, help="the served DAWN key (.cckey), or a key set holding one")
    records.add_argument("--ledger", required=True, help="the server's query ledger (rotated files are read too)")
    records.add_argument("--client", required=True, help="the API key id of the client (anonymous without keys)")
    records.add_argument("--records", default=None, help="the DAWN record file (none: the one beside the ledger)")
    records.add_argument("-o", "--out", required=True, help="where to write the verification key (.cckey)")
    records.set_defaults(func=run_dawn_records)
    keygen = actions.add_parser(
        "keygen",
        help="the owner's signing key pair (Ed25519), to sign evidence",
        formatter_class=options.Formatter,
        description="Write a new Ed25519 key pair: OUT.key, the private key (PEM, mode 0600: keep it secret and "
        "offline), which signs evidence (copycatch verify --sign-with OUT.key), and OUT.pub, the public key to "
        "publish, with which anyone checks it (copycatch evidence check FILE --public-key OUT.pub).",
    )
    keygen.add_argument("-o", "--out", required=True, metavar="OUT", help="file name of the pair, without suffix")
    keygen.add_argument("--force", action="store_true", help="replace an existing key pair of that name")
    keygen.set_defaults(func=run_keygen)
    return p


def run_keygen(args: argparse.Namespace) -> int:
    from ... import api

    pair = api.keygen(args.out, force=args.force)
    options.say(f"wrote {pair.private} (private, mode 0600: keep it secret; it signs evidence in your name)")
    options.say(f"wrote {pair.public} (public: publish it; anyone checks your evidence with it)")
    options.say(f"public key sha256 {pair.fingerprint}")
    return 0


def run_dawn_records(args: argparse.Namespace) -> int:
    from ...core.errors import InvalidArgument
    from ...core.keyset import open_keys
    from ...schemes import scheme_for_key
    from ...schemes.dawn import Dawn
    from ...serve.dawn_records import client_records

    out = options.writable(args.out, "verification key")
    parts = [k for k in open_keys(args.key)[0] if k.scheme == Dawn.name]
    if len(parts) != 1:
        raise InvalidArgument(f"{args.key}: expected one DAWN key, found {len(parts)}")
    found = client_records(args.ledger, args.client, records=args.records)
    options.say(
        f"client {found.client}: {found.answered} inputs answered ({found.distinct} distinct); "
        f"{len(found.x)} of the {found.file_records} DAWN records are theirs"
    )
    key = scheme_for_key(parts[0]).with_records(
        parts[0], found.x, found.owner, found.wrong, source=f"ledger {args.ledger}, client {found.client}"
    )
    key.save(out)  # type: ignore[arg-type]
    count, minimum = key.meta["dawn_records"]["records"], Dawn.Params.from_dict(key.params).min_records
    options.say(f"wrote {out} (digest {key.digest[:16]}…, {count} records)")
    if count < minimum:
        print(
            f"copycatch: warning: {count} records, fewer than min_records={minimum}: verify will refuse this key",
            file=sys.stderr,
        )
    return 0


def run_commit(args: argparse.Namespace) -> int:
    from ... import api

    commitment, path, new = api.commit(args.file, victim=args.victim, output=args.out)
    if args.json:
        options.say(commitment.text().rstrip())
        return 0
    where = f"written to {path}" if new and path else (f"in {path}, checked against the key" if path else "")
    options.say(commitment.text().rstrip())
    options.say(f"commitment {where}; made {commitment.record['created']}")
    options.say(f"id (SHA-256 of the record; publish it or have it timestamped): {commitment.id}")
    return 0


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
