"""``copycatch data``: list the data sets with their modality, show a data set's standard owner/thief split, or
prepare a text or audio data set (generate an offline stand-in, or check and link a real corpus)."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from .. import options

VERB = "data"
HELP = "list data sets, show a data set's standard split, or prepare a text or audio data set"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        description="List the built-in data sets and their modality (image, text, audio), load one and show its "
        "owner/thief split, or prepare one: `prepare NAME` generates an offline stand-in (wordnet-topics, "
        "spoken-keywords) deterministically from --seed into --out (default $COPYCATCH_DATA_DIR/NAME, else "
        "~/.cache/copycatch/NAME); `prepare NAME --path WHERE` reads a real corpus you have on disk, reporting any "
        "malformed file by name and line, and links it there. Either way it then loads by name (--data NAME).",
        epilog=textwrap.dedent("""\
            examples:
              copycatch data list --modality text
              copycatch data prepare wordnet-topics
              copycatch data prepare spoken-keywords --seed 1 -p clips_per_keyword=100
              copycatch data prepare ag-news --path ~/corpora/ag_news_csv
              copycatch data show wordnet-topics"""),
    )
    p.add_argument("action", choices=["list", "show", "prepare"])
    p.add_argument("name", nargs="?", default=None, help="the data set to prepare (or to show, instead of --data)")
    options.add_data_options(p)
    g = p.add_argument_group("list")
    g.add_argument(
        "--modality", choices=options.MODALITIES, default=None, help="list only the data sets of this modality"
    )
    g = p.add_argument_group("prepare")
    g.add_argument("--out", default=None, metavar="DIR", help="where the data set goes (default: the data root/NAME)")
    g.add_argument("--seed", type=int, default=0, help="seed of a stand-in's generation")
    g.add_argument("--path", default=None, help="a real corpus on disk to check and link instead of generating")
    g.add_argument("--workers", type=int, default=None, help="processes generating a stand-in (default: up to 2)")
    g.add_argument("--force", action="store_true", help="generate again even if the same stand-in is there")
    options.add_params_option(p, "stand-in generator (e.g. clips_per_keyword=20, per_class=500)")
    options.add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ...core.errors import InvalidArgument

    if args.action == "list":
        options.say(_list_table(args.modality))
        return 0
    if args.action == "show":
        if args.name:
            args.data = args.name
        options.say(json.dumps(options.splits(args).describe(), indent=2))
        return 0
    if not args.name:
        raise InvalidArgument(
            "copycatch data prepare needs the data set's name, e.g. `copycatch data prepare wordnet-topics`"
        )
    return _prepare(args)


def _list_table(modality: str | None) -> str:
    from ...data import DATASETS, GENERATORS, dataset_modality, list_datasets

    names = list_datasets(modality=modality)
    width = max((len(n) for n in names), default=0)
    lines = [f"data sets{f' ({modality})' if modality else ''}:"]
    for name in names:
        summary = DATASETS.get(name).summary
        lines.append(f"  {name:<{width}}  {dataset_modality(name):<5}  {summary}")
    stand_ins = ", ".join(GENERATORS.list())
    lines.append(f"stand-ins generated offline by `copycatch data prepare NAME`: {stand_ins}")
    return "\n".join(lines)


def _prepare(args: argparse.Namespace) -> int:
    from ...data import prepare_dataset

    prepared = prepare_dataset(
        args.name,
        out=args.out,
        seed=args.seed,
        path=args.path,
        params=options.params(args.param) if args.param else None,
        workers=args.workers,
        progress=options.progress(args),
        force=args.force,
    )
    d = prepared.describe()
    options.say(
        f"{d['dataset']} ({d['modality']}): {d['action']} in {d['directory']} — {d['train']:,} training and "
        f"{d['test']:,} test examples of {len(d['classes'])} classes, {d['files']:,} files, {d['megabytes']} MB, "
        f"{d['seconds']} s"
    )
    options.say(f"load it with --data {d['dataset']}" + (f" --data-dir {args.out}" if args.out else ""))
    return 0
