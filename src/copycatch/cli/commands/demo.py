"""``copycatch demo``: the whole story on Fashion-MNIST (or a text or audio stand-in) — protect, steal, verify, print
the verdicts."""

from __future__ import annotations

import argparse
from typing import Any

from .. import options

VERB = "demo"
HELP = "the whole story on Fashion-MNIST (or text or audio): protect, steal, verify, print the verdicts"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        description="Train a clean model and protect the same model (a watermark in the weights, DynaMarks "
        "on the API: one key set), steal the protected API, train an innocent model on the thief's data, verify all "
        "of them against the key set. Images: margin watermark, soft-label extraction. Text and audio "
        "(--modality): MEA-Defender, Hinton distillation (T = 20) into another architecture over HTTP (the app of "
        "`copycatch serve` on a local port), on the stand-ins "
        "made by `copycatch data prepare wordnet-topics` and `copycatch data prepare spoken-keywords`.",
    )
    p.add_argument(
        "--modality",
        choices=options.MODALITIES,
        default=None,
        help="image (Fashion-MNIST, cnn-small → mlp), text (wordnet-topics, lstm → text-cnn) or audio "
        "(spoken-keywords, logmel-cnn → m5) (default image)",
    )
    p.add_argument(
        "--encoder",
        action="store_true",
        help="the self-supervised encoder story instead: a SimCLR encoder watermarked with MEA-Defender, served as an "
        "embedding API, stolen over HTTP with StolenEncoder, verified with an innocent encoder (Fashion-MNIST; "
        "--seed and --data-dir apply)",
    )
    p.add_argument("--data", default=None, help="data set (default: the modality's, fashion-mnist for images)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="folder for the models, key and evidence (default demo-out)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--surrogate-arch", default=None)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--device", default=None)
    options.add_params_option(p, "watermark (margin; mea-defender for text and audio)")
    options.add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ... import api
    from ...bench.demo import DemoConfig
    from ...core.errors import InvalidArgument

    given = {
        "modality": args.modality,
        "data": args.data,
        "data_dir": args.data_dir,
        "out": args.out,
        "seed": args.seed,
        "device": args.device,
        "epochs": args.epochs,
        "surrogate_arch": args.surrogate_arch,
        "max_train": args.max_train,
        "scheme_params": options.params(args.param) or None,
    }
    if args.encoder and args.modality not in (None, "image"):
        raise InvalidArgument(f"--encoder is the image encoder story; it does not take --modality {args.modality}")
    config = DemoConfig.from_dict({k: v for k, v in given.items() if v is not None})
    api.demo(config, encoder=args.encoder, progress=options.progress(args))
    return 0
