"""``copycatch bench GRID.yaml``: run a benchmark grid into a resumable results store."""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Any

from .. import options

VERB = "bench"
HELP = "run a grid of schemes × attacks × seeds from one YAML file (resumable; SQLite results)"

DESCRIPTION = """\
Run every cell of a grid file — data set × victim architecture × scheme (+params) × attack chain (extraction
then removals, +params) × seed — and write one row per finished cell to RESULTS/results.sqlite. Re-running the
same command resumes: finished cells are never recomputed, and trained victims, clean models, surrogates and
innocent models are cached by configuration hash under RESULTS/cache, so cells sharing a victim train it once.
A killed run loses only the cells in flight. Then `copycatch report RESULTS -o DIR` prints the tables and plots."""

EPILOG = """\
grid file (YAML, strict: an unknown key is an error naming the valid ones):
  name: my-grid                         # required
  seeds: [0, 1, 2]                      # or a count
  alpha: 0.001
  data: {name: fashion-mnist, split_seed: 0, max_train: 20000}
  victim: {arch: cnn-small, train: {epochs: 5}}          # arch default: each scheme's own
  schemes: [margin, {name: margin, params: {n_triggers: 50}, sweep: {steps: [1, 5]}}]
  attacks:
    - extraction: {name: soft-label, arch: mlp, budget: 9000, train: {epochs: 10}, sweep: {budget: [1000, 9000]}}
      removals: ["prune:rate=0.5", {name: fine-tune, sweep: {epochs: [1, 5]}}]
      removal_labels: oracle            # removals train on the API's answers (default truth: true labels)
    - extraction: none                  # the leaked victim itself
  innocent: {arch: mlp}                 # control trained on the thief's data; null to skip
  experiments: [{name: table-2, attacks: [...]}]          # optional: several experiments, each overriding the above
Complete grids ship with copycatch: run one by its name (listed under `grid` above), e.g.
`copycatch bench fmnist-quick --dry-run`; benchmarks/README.md describes them."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ...attacks.extraction import EXTRACTION_ATTACKS
    from ...attacks.removal import REMOVAL_ATTACKS
    from ...bench.executors import EXECUTORS
    from ...bench.grid import packaged_grids
    from ...schemes import SCHEMES

    registries = "\n\n".join(
        [
            options.registry_table(SCHEMES.describe(), "schemes"),
            options.registry_table(EXTRACTION_ATTACKS.describe(), "extraction attacks"),
            options.registry_table(REMOVAL_ATTACKS.describe() or [("(none registered yet)", "")], "removal attacks"),
        ]
    )
    p = subparsers.add_parser(
        VERB,
        help=HELP,
        description=DESCRIPTION,
        epilog=EPILOG + "\n\n" + registries,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "grid", help=f"grid file (YAML), or the name of a grid shipped with copycatch: {', '.join(packaged_grids())}"
    )
    p.add_argument(
        "-o", "--results", default=None, metavar="DIR", help="results folder (default: bench-out/<grid name>)"
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: a process pool of --jobs workers; serial: in this process; ray: a Ray cluster",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        help="worker processes for --executor local (default: one per core); Ray: CPUs of a local Ray",
    )
    p.add_argument("--address", default=None, help="Ray cluster address for --executor ray (default: start one here)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto (not part of a cell's identity)")
    p.add_argument("--data-dir", default=None, help="folder holding the Fashion-MNIST IDX files")
    p.add_argument(
        "--cache",
        default=None,
        metavar="DIR",
        help="model cache (default RESULTS/cache); share one between grids to reuse their models",
    )
    p.add_argument(
        "--max-train",
        type=int,
        default=None,
        metavar="N",
        help="run the grid on at most N training images (owner, holdout and thief shrink together); the cells, "
        "the results folder's default name and the report say so",
    )
    p.add_argument(
        "--epochs-factor",
        type=float,
        default=None,
        metavar="F",
        help="multiply the training epochs of every victim, surrogate and innocent model by F (at least 1 epoch); "
        "a removal attack's own epochs are kept",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="run at most N unfinished cells, then stop")
    p.add_argument(
        "--no-retry-failed",
        dest="retry_failed",
        action="store_false",
        help="skip cells that failed in an earlier run (default: retry them)",
    )
    p.add_argument("--dry-run", action="store_true", help="validate the grid and list its cells; run nothing")
    p.add_argument("--report", default=None, metavar="DIR", help="write the report to DIR when the run ends")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no per-cell lines")
    return p


def run(args: argparse.Namespace) -> int:
    from ... import api
    from ...bench.store import store_path
    from ...core.errors import InvalidArgument

    if args.jobs is not None and args.jobs < 1:
        raise InvalidArgument(f"--jobs must be >= 1, got {args.jobs}")
    if args.dry_run:
        return _dry_run(
            *api.plan_bench(args.grid, args.results, max_train=args.max_train, epochs_factor=args.epochs_factor)
        )
    log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    summary = api.run_bench(
        args.grid,
        args.results,
        executor=args.executor,
        jobs=args.jobs,
        address=args.address,
        device=args.device,
        data_dir=args.data_dir,
        cache_dir=args.cache,
        retry_failed=args.retry_failed,
        limit=args.limit,
        progress=False if args.quiet else None,
        log=log,
        max_train=args.max_train,
        epochs_factor=args.epochs_factor,
    )
    results, grid_name = Path(summary.results), summary.grid
    print(
        f"grid {grid_name}: {summary.planned} cells; {summary.done_before} finished before, {summary.computed} "
        f"computed now, {summary.failed} failed ({summary.seconds / 60:.1f} min wall, "
        f"{summary.cpu_seconds / 60:.1f} CPU-min in cells; {summary.executor})"
    )
    print(f"results in {store_path(results)}")
    for cell_id, error in summary.failures:
        print(textwrap.shorten(f"  failed {cell_id}: {error}", 200))
    if args.report:
        info = api.bench_report(results, args.report, grid=grid_name)
        print(f"report in {Path(args.report) / 'report.md'} and report.html ({len(info['files'])} files)")
    if summary.interrupted:
        print(
            f"interrupted: {summary.computed + summary.failed} cells saved; run the same command to resume",
            file=sys.stderr,
        )
        return 130
    if summary.failed:
        print(f"{summary.failed} cells failed; run the same command to retry them", file=sys.stderr)
        return 1
    if summary.remaining:
        print(f"{summary.remaining} cells left (--limit); run the same command to continue")
    return 0


def _dry_run(grid: Any, results: Path, done: set[str]) -> int:
    from ...bench.grid import describe_cell

    cells = grid.cells
    options.say(
        f"grid {grid.name}: {len(cells)} cells in {len(grid.experiments)} experiment(s), "
        f"{sum(c.cell_id in done for c in cells)} already finished in {results}"
    )
    for name, exp_cells in grid.experiments.items():
        options.say(f"  {name}: {len(exp_cells)} cells")
    for cell in cells:
        options.say(f"  {'done' if cell.cell_id in done else 'todo'} {cell.cell_id} {describe_cell(cell.config)}")
    return 0
