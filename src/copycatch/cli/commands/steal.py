"""``copycatch steal``: play the thief — query the victim's API and train a surrogate on the answers."""

from __future__ import annotations

import argparse
from typing import Any

from .. import options

VERB = "steal"
HELP = "extract a surrogate from a victim through its prediction API"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    from ...attacks.extraction import EXTRACTION_ATTACKS
    from ...models import MODELS
    from ...oracles.postprocess import POSTPROCESSORS

    epilog = "\n\n".join(
        [
            options.registry_table(EXTRACTION_ATTACKS.describe(), "extraction attacks"),
            options.registry_table(POSTPROCESSORS.describe(), "output post-processors (--post)"),
            options.registry_table(MODELS.describe(), "architectures"),
        ]
    )
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        epilog=epilog,
        description="Play the thief: query the victim (only through its outputs) and train a surrogate.",
    )
    p.add_argument(
        "--victim",
        "--oracle",
        dest="victim",
        required=True,
        help="the victim the thief queries: model file, http(s):// prediction API, .onnx file or module:function",
    )
    p.add_argument("--attack", default="soft-label", help="extraction attack (listed below)")
    p.add_argument(
        "--arch",
        default=None,
        help="surrogate architecture: the thief's free choice (default: mlp for images, text-cnn for text, "
        "logmel-cnn for audio)",
    )
    p.add_argument("--budget", type=int, default=None, help="queries the thief may spend (default: one per pool input)")
    p.add_argument(
        "--queries",
        default="attacker_pool",
        help="what the thief queries: attacker_pool, or another data set name for out-of-distribution queries",
    )
    p.add_argument(
        "--protect",
        default=None,
        metavar="KEY",
        help="apply the API-time protection of this key or key set (.cckeys) to the victim, as its server does",
    )
    p.add_argument("--post", action="append", metavar="SPEC", help="output post-processor, e.g. top-k:k=3 (repeatable)")
    options.add_params_option(p, "attack")
    p.add_argument("-o", "--output", required=True, help="surrogate model file to write")
    p.add_argument(
        "--then",
        action="append",
        metavar="SPEC",
        type=options.removal_spec,
        help="then apply this removal attack to the surrogate, on the attacker pool (repeatable, in order; "
        "see `copycatch remove --help`)",
    )
    options.add_resume_option(p, "The checkpoint keeps every answer bought, as it arrives: none is bought twice")
    options.add_data_options(p)
    options.add_train_options(p)
    options.add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ... import api

    out = options.writable(args.output, "surrogate file")
    result = api.steal(
        args.victim,
        args.queries,
        splits=options.splits(args),
        attack=args.attack,
        arch=args.arch,
        params=options.params(args.param),
        budget=args.budget,
        config=options.train_config(args),
        key=args.protect,
        postprocess=args.post or (),
        then=args.then or (),
        output=out,
        progress=options.progress(args),
        resume=args.resume,
    )
    options.say_resumed(result.info)
    line = (
        f"stole a {result.surrogate.arch} surrogate with {args.attack}: {result.queries} queries, "
        f"test accuracy {result.info['test_accuracy']:.4f}"
    )
    if "agreement" in result.info:
        line += f", agreement with victim {result.info['agreement']:.4f}"
    options.say(line)
    laundering = result.info.get("laundering")
    if laundering is not None:
        options.say_steps(laundering.report["steps"])
        if laundering.evasions:
            guards = "+".join(e.name for e in laundering.evasions)
            options.say(f"deployment (model behind {guards}) written to {laundering.report['deployment']}")
        options.say(f"laundered the surrogate with {len(args.then)} removal attack(s)")
    options.say(f"surrogate written to {out}")
    return 0
