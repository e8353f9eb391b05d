"""``copycatch embed``: watermark a model and write the victim and its secret key."""

from __future__ import annotations

import argparse
from typing import Any

from .. import options

VERB = "embed"
HELP = "watermark a model and write the victim and its secret key"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ...models import MODELS
    from ...schemes import SCHEMES

    epilog = (
        options.registry_table(
            [(n, f"[{_kind(SCHEMES.get(n).factory)}] {s}") for n, s in SCHEMES.describe()],
            "schemes [kind; modalities] (a fingerprint leaves the model's weights unchanged and only writes a key)",
        )
        + "\n\n"
        + options.registry_table(MODELS.describe(), "architectures")
    )
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        epilog=epilog,
        description="Embed a watermark with a scheme (listed below). Scheme parameters go in -p NAME=VALUE; "
        "each scheme's docstring lists them with defaults.",
    )
    p.add_argument("--scheme", default="margin", help="watermarking scheme (listed below)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--arch", default=None, help="train a fresh model of this architecture (default: the scheme's)")
    src.add_argument("--model", default=None, help="start from this trained model file")
    options.add_params_option(p, "scheme")
    p.add_argument("-o", "--output", required=True, help="victim model file to write")
    p.add_argument("--key", required=True, help="key file to write (keep it secret)")
    options.add_key_seed_option(p)
    options.add_resume_option(
        p, "Without --key-seed, the key seed is the interrupted run's, kept in the checkpoint: keep it secret"
    )
    options.add_cost_options(p)
    options.add_data_options(p)
    options.add_train_options(p)
    options.add_common(p)
    return p


def _kind(scheme: Any) -> str:
    return f"{scheme.kind}; {', '.join(scheme.modalities)}"


def run(args: argparse.Namespace) -> int:
    from ... import api
    from ...core.errors import AccuracyCostExceeded

    out = options.writable(args.output, "model file")
    key_path = options.writable(args.key, "key file")
    try:
        result = api.embed(
            args.scheme,
            options.splits(args).without_attacker_pool(),  # the owner's side never reads the thief's data
            arch=args.arch,
            model=args.model,
            params=options.params(args.param),
            config=options.train_config(args),
            output=out,
            key_path=key_path,
            progress=options.progress(args),
            reference=args.reference,
            max_cost=args.max_cost,
            allow_cost=args.allow_cost,
            # resuming without --key-seed: the interrupted run's seed, kept in its checkpoint
            key_seed=None if args.resume and args.key_seed is None else options.key_seed(args),
            resume=args.resume,
        )
    except AccuracyCostExceeded as exc:  # the victim and key are written; say so, then warn and exit 3
        result = exc.embedding
    options.say_resumed(result.info)
    options.say(f"embedded {args.scheme} into {result.victim.arch}: test accuracy {result.info['test_accuracy']:.4f}")
    options.say(f"victim written to {out}")
    options.say(f"key written to {key_path} (digest {result.key.digest[:16]}…); keep it secret")
    options.say_commitment(key_path)
    return options.say_cost(result.info.get("accuracy_cost"), allow_cost=args.allow_cost)
