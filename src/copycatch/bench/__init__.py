"""Benchmark grids: run protections × attacks × seeds from one YAML file, resumably, and report them.

* :mod:`.grid` — the grid schema (strict), expansion into cells, content hashes;
* :mod:`.store` — the SQLite results store (one transaction per finished cell);
* :mod:`.cache` — trained models cached by configuration hash (safe under concurrency);
* :mod:`.cell` — what one cell runs and measures;
* :mod:`.executors` — serial, local process pool, Ray;
* :mod:`.runner` — :func:`run_grid`: resume, schedule, progress, write;
* :mod:`.report` — Markdown/HTML tables (mean ± std over seeds) and PNG plots.

The CLI verbs are ``copycatch bench GRID.yaml`` and ``copycatch report RESULTS -o DIR``.
"""

from .grid import Cell, Grid, GridError, load_grid, parse_grid
from .runner import RunSummary, run_grid
from .store import ResultsStore

__all__ = ["Cell", "Grid", "GridError", "ResultsStore", "RunSummary", "load_grid", "parse_grid", "run_grid"]
