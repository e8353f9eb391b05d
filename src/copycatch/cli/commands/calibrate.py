"""``copycatch calibrate``: a key's statistic on innocent reference models, and the false-positive rate it implies.

Trains reference innocent models (other seeds and architectures; the owner's data, the thief's data, random
subsets; surrogates extracted from a different owner's model), adds any innocent models the user names,
verifies every one against each key with the fixed test, stores the null distribution beside the key
(``<key>.calibration.json``, which ``copycatch verify`` then uses) and prints the empirical false-positive rate
at each α with a Clopper–Pearson 95 % interval. Warns when a key can never reach α. See
:mod:`copycatch.verification.calibration`.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import options

VERB = "calibrate"
HELP = "null distribution of a key's statistic on innocent reference models; empirical false-positive rate"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        description="Build each key's null distribution from reference innocent models and report the empirical "
        "false-positive rate at alpha with a 95% confidence interval. References are trained here "
        "(--train N, cycling through: the owner's data with another seed/architecture, the thief's "
        "data, a random data subset, a surrogate extracted from a different owner's model) and/or "
        "given (--innocent). The result is written beside each key as <key>.calibration.json.",
        epilog="example:\n  copycatch calibrate --key victim.cckey --train 24 --archs mlp,cnn-small,lenet",
    )
    p.add_argument(
        "--key",
        required=True,
        action="append",
        help="key file, or key set (each part is calibrated, to <set>.part<i>.calibration.json); repeat: the "
        "references are shared",
    )
    p.add_argument(
        "--innocent",
        action="append",
        metavar="SUSPECT",
        help="an innocent model you hold: model file, .onnx, module:function or URL (repeatable)",
    )
    p.add_argument("--train", type=int, default=20, help="reference innocent models to train here (0: none)")
    p.add_argument("--archs", default="mlp,cnn-small,lenet", help="architectures the references cycle through")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of each reference")
    p.add_argument("--subset", type=float, default=0.5, help="data fraction of the 'subset' references")
    p.add_argument("--budget", type=int, default=None, help="queries of each extracted reference (default: all)")
    p.add_argument("--seed", type=int, default=1000, help="seed of the first reference (each gets its own)")
    p.add_argument(
        "--alpha",
        type=float,
        action="append",
        default=None,
        help="significance levels to report (repeatable; default 0.001 and 0.05)",
    )
    p.add_argument("-o", "--output", default=None, help="calibration file to write (one key only; default: beside it)")
    p.add_argument("--save-models", metavar="DIR", default=None, help="also keep the trained references here")
    options.add_data_options(p)
    p.set_defaults(data=None)  # default: the data set the key was made on
    options.add_common(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ... import api
    from ...core.errors import InvalidArgument
    from ...core.keyset import open_keys
    from ...verification.calibration import CalibrationPlan

    if args.train < 0:
        raise InvalidArgument(f"--train must be >= 0, got {args.train}")
    if args.train == 0 and not args.innocent:
        raise InvalidArgument("no reference models: give --train N and/or --innocent MODEL")
    splits = plan = None
    if args.train:
        metas = [key.meta for path in args.key for key in open_keys(path)[0]]
        splits = _splits_of(args, metas)
        plan = CalibrationPlan.from_dict(
            {
                "n_models": args.train,
                "archs": args.archs,
                "epochs": args.epochs,
                "subset": args.subset,
                "budget": args.budget,
                "seed": args.seed,
            }
        )
    results = api.calibrate(
        args.key,
        splits=splits,
        plan=plan,
        innocents=args.innocent or (),
        alphas=args.alpha or (1e-3, 0.05),
        output=args.output,
        save_models=args.save_models,
        progress=options.progress(args),
    )
    for calibration, path in results:
        options.say(calibration.summary())
        options.say(f"calibration written to {path}")
    return 0


def _splits_of(args: argparse.Namespace, metas: list[dict]) -> Any:
    """The split the references train on: --data, else the one data set the keys were made on."""
    from ...core.errors import InvalidArgument

    if args.data is None:
        datasets = {m.get("dataset") for m in metas}
        if len(datasets) != 1 or None in datasets:
            raise InvalidArgument("the keys do not name one data set; give --data")
        args.data = datasets.pop()
    splits = options.splits(args)
    fingerprint = metas[0].get("data_fingerprint")
    if fingerprint and splits.fingerprint != fingerprint:
        options.say(
            f"note: these data (fingerprint {splits.fingerprint[:12]}) differ from the key's "
            f"({fingerprint[:12]}); check --data, --split-seed and --max-train"
        )
    return splits
