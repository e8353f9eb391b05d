"""``copycatch data``: list the data sets, or show a data set's standard owner/thief split."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .. import options

VERB = "data"
HELP = "list data sets or show a data set's standard split"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        formatter_class=options.Formatter,
        description="List the built-in data sets, or load one and show its owner/thief split.",
    )
    p.add_argument("action", choices=["list", "show"])
    options.add_data_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from ...data import DATASETS

    if args.action == "list":
        options.say(options.registry_table(DATASETS.describe(), "data sets"))
        return 0
    options.say(json.dumps(options.splits(args).describe(), indent=2))
    return 0
