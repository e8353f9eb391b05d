"""``copycatch protect``: the recommended stack in one verb — a watermark in the weights, a mark at the API,
optionally a fingerprint, one key set."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from .. import options

VERB = "protect"
HELP = "the recommended stack: a training-time watermark plus an API-time mark, their keys in one key set"

DESCRIPTION = (
    "Protect a model two ways at once. The watermark (--watermark, a training-time scheme) is embedded in the "
    "weights: it survives a leak of the model file and extraction. The API-time mark (--api, e.g. DynaMarks) "
    "perturbs the served probabilities without changing any prediction when you serve the victim with the key set "
    "(copycatch serve --protect): a thief who extracts a surrogate through the API copies it. Each part's secret "
    "is drawn from its own seed, so the parts are independent; their keys are bundled in one key set (.cckeys), "
    "and `copycatch verify --key SET` tests every part and combines the p-values with Fisher's method. "
    "--fingerprint adds a fingerprint of the watermarked victim (it changes neither the weights nor the answers); "
    "its test asks whether a suspect behaves like this very victim, so it is not independent of the others and "
    "verify combines such a key set with Holm's adjustment instead."
)

EPILOG_EXAMPLES = textwrap.dedent("""\
    examples:
      copycatch protect -o victim.safetensors --keys victim.cckeys
      copycatch protect -p n_triggers=100 --api-param range_choices=4 -o victim.safetensors --keys victim.cckeys
      copycatch protect --api none -o victim.safetensors --keys victim.cckeys       # the watermark alone
      copycatch protect --fingerprint cae -o victim.safetensors --keys victim.cckeys   # + a fingerprint (Holm)
      copycatch serve victim.safetensors --protect victim.cckeys                  # the API-time part runs here
      copycatch steal --victim victim.safetensors --protect victim.cckeys --arch mlp -o surrogate.safetensors
      copycatch verify --key victim.cckeys --suspect surrogate.safetensors         # every part, combined
      copycatch key show victim.cckeys

    Seeds: the watermark uses --seed (the victim is the one `copycatch embed --seed` makes); part i > 0 uses
    the first 63 bits of SHA-256('copycatch.protect/<seed>/<i>/<scheme>'), recorded in the key set.""")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ...models import MODELS
    from ...schemes import SCHEMES
    from ...schemes.protection import ROLES, stack_role

    by_role = {role: [(n, s) for n, s in SCHEMES.describe() if stack_role(n) == role] for role in ROLES}
    epilog = "\n\n".join(
        [
            options.registry_table(by_role["watermark"], "training-time schemes (--watermark)"),
            options.registry_table(by_role["api"], "API-time schemes (--api)"),
            options.registry_table(by_role["fingerprint"], "fingerprints (--fingerprint)"),
            options.registry_table(MODELS.describe(), "architectures"),
            EPILOG_EXAMPLES,
        ]
    )
    p = subparsers.add_parser(
        VERB, help=HELP, formatter_class=options.Formatter, epilog=epilog, description=DESCRIPTION
    )
    p.add_argument("--watermark", default="margin", help="training-time scheme embedded in the weights (listed below)")
    p.add_argument("--api", default="dynamarks", help="API-time scheme applied when serving (listed below), or none")
    p.add_argument("--fingerprint", default=None, help="fingerprint of the watermarked victim (listed below); none")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--arch", default=None, help="train a fresh model of this architecture (default: the scheme's)")
    src.add_argument("--model", default=None, help="start from this trained model file")
    options.add_params_option(p, "watermark scheme")
    p.add_argument(
        "--api-param",
        action="append",
        metavar="NAME=VALUE",
        help="API-time scheme parameter (repeatable); in the stack DynaMarks weighs its favoured class 10, not the "
        "paper's 2 (favoured_weight=2 restores it)",
    )
    p.add_argument(
        "--fingerprint-param", action="append", metavar="NAME=VALUE", help="fingerprint parameter (repeatable)"
    )
    p.add_argument("-o", "--output", required=True, help="victim model file to write")
    p.add_argument("--keys", required=True, help="key set file to write (.cckeys; keep it secret)")
    options.add_key_seed_option(p)
    options.add_resume_option(
        p, "Without --key-seed, the key seed is the interrupted run's, kept in the checkpoint: keep it secret"
    )
    options.add_data_options(p)
    options.add_train_options(p)
    options.add_cost_options(p)
    options.add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ...core.errors import AccuracyCostExceeded

    out = options.writable(args.output, "model file")
    keys_path = options.writable(args.keys, "key set file")
    try:
        result = _protect(args, out, keys_path)
    except AccuracyCostExceeded as exc:  # the victim and key set are written; say so, then warn and exit 3
        result = exc.embedding
    options.say_resumed(result.info)
    keyset = result.keyset
    options.say(f"protected {result.victim.arch}: test accuracy {result.info['test_accuracy']:.4f}")
    for key, seed in zip(keyset, result.info["seeds"]):
        options.say(f"  {key.scheme:<18} digest {key.digest[:16]}…  seed {seed}")
    options.say(f"victim written to {out}; serve it with --protect {keys_path} (the API-time part runs there)")
    options.say(f"key set written to {keys_path} (digest {keyset.digest[:16]}…, {len(keyset)} keys); keep it secret")
    options.say_commitment(keys_path)
    return options.say_cost(result.info.get("accuracy_cost"), allow_cost=args.allow_cost)


def _protect(args: argparse.Namespace, out: Any, keys_path: Any) -> Any:
    from ... import api

    return api.protect(
        options.splits(args),
        watermark=args.watermark,
        watermark_params=options.params(args.param),
        api=args.api,
        api_params=options.params(args.api_param),
        fingerprint=args.fingerprint,
        fingerprint_params=options.params(args.fingerprint_param),
        arch=args.arch,
        model=args.model,
        config=options.train_config(args),
        output=out,
        keys=keys_path,
        progress=options.progress(args),
        reference=args.reference,
        max_cost=args.max_cost,
        allow_cost=args.allow_cost,
        # resuming without --key-seed: the interrupted run's seed, kept in its checkpoint
        key_seed=None if args.resume and args.key_seed is None else options.key_seed(args),
        resume=args.resume,
    )
