"""``copycatch models``: list the architectures with the modality of the inputs each reads."""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from .. import options

VERB = "models"
HELP = "list the model architectures and the modality (image, text, audio) each reads"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        description="List the architectures `--arch` accepts, each with the modality of the data it trains on "
        "(image, text, audio) and the paper it follows. An architecture of another modality than the data's is "
        "refused.",
        epilog=textwrap.dedent("""\
            examples:
              copycatch models list
              copycatch models list --modality audio"""),
    )
    p.add_argument("action", choices=["list"])
    p.add_argument(
        "--modality", choices=options.MODALITIES, default=None, help="list only the architectures of this modality"
    )
    return p


def run(args: argparse.Namespace) -> int:
    from ...models import MODELS, list_models, model_modality

    names = list_models(modality=args.modality)
    width = max((len(n) for n in names), default=0)
    lines = [f"architectures{f' ({args.modality})' if args.modality else ''}:"]
    lines += [f"  {n:<{width}}  {model_modality(n):<5}  {MODELS.get(n).summary}" for n in names]
    options.say("\n".join(lines))
    return 0
