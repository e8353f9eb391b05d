"""``copycatch report RESULTS -o DIR``: Markdown/HTML tables and PNG plots from a results store."""

from __future__ import annotations

import argparse
from pathlib import Path

VERB = "report"
HELP = "tables (mean ± std over seeds, p-values) and plots from a `copycatch bench` results store"

DESCRIPTION = """\
Read RESULTS (a folder written by `copycatch bench`, or its results.sqlite) and write report.md, report.html,
cells.csv, summary.json and PNG plots to DIR: one table per experiment with the settings that vary, mean ± std
over seeds of accuracies, fidelity and the watermark statistic, median and worst p-values, detections and false
accusations (innocent and clean models) at the grid's α; plots of the statistic against every swept setting
(pruning rate, query budget, fine-tuning epochs, …) and of utility against evidence."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        VERB, help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results", help="results folder of `copycatch bench` (or its results.sqlite)")
    p.add_argument("-o", "--output", default=None, metavar="DIR", help="report folder (default: RESULTS/report)")
    p.add_argument("--grid", default=None, help="report only this grid (default: every grid in the store)")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="tables only")
    return p


def run(args: argparse.Namespace) -> int:
    from ... import api
    from ...bench.store import store_path

    results = Path(args.results)
    out = Path(args.output) if args.output else store_path(results).parent / "report"
    info = api.bench_report(results, out, grid=args.grid, plots=args.plots)
    for note in info["notes"]:
        print(f"note: {note}")
    print(
        f"report of {info['experiments']} experiment(s) in {out}: report.md, report.html, cells.csv, summary.json"
        f" and {sum(f.endswith('.png') for f in info['files'])} plots"
    )
    return 0
