"""``copycatch train``: a clean model, the owner's (or, on the thief's data, an innocent one)."""

from __future__ import annotations

import argparse
from typing import Any

from .. import options

VERB = "train"
HELP = "train a clean model (owner's, or an innocent one on the thief's data)"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ...models import MODELS
    from ...models.train import TRAINABLE_PARTS

    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        epilog=options.registry_table(MODELS.describe(), "architectures"),
        description="Train an architecture with true labels. --on attacker_pool trains an innocent "
        "model on the thief's data, the control every verification should clear.",
    )
    p.add_argument("--arch", default="cnn-small", help="architecture (listed below)")
    p.add_argument("--on", default="owner_train", choices=TRAINABLE_PARTS)
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    options.add_data_options(p)
    options.add_train_options(p)
    options.add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ... import api

    out = options.writable(args.output, "model file")
    splits = options.splits(args)
    model = api.train(
        args.arch, splits, on=args.on, config=options.train_config(args), output=out, progress=options.progress(args)
    )
    acc = model.provenance["test_accuracy"]
    options.say(f"trained {args.arch} on {args.on} ({len(getattr(splits, args.on))} examples): test accuracy {acc:.4f}")
    options.say(f"model written to {out}")
    return 0
