"""Turn a results store into the tables and plots papers print.

For every experiment of every grid in the store (or one grid): cells that differ only in their seed form a
*group*; each group is one table row with mean ± std over its seeds (p-values: median and worst case, and how
many seeds reached a decision, since a mean of p-values means little). The table shows only the settings that
vary within the experiment — the smallest set of them that still tells the rows apart — and lists the fixed ones
once. Innocent models (trained on the thief's data with true labels) and the owner's clean model are verified
against every key, so false accusations sit next to detections.

Plots (PNG, matplotlib from the ``report`` extra): for every numeric setting that varies (pruning rate, query
budget, fine-tuning epochs, trigger-set size …) the watermark statistic, −log10 p and the suspect's accuracy
against it, one line per combination of the other settings, ± std over seeds; per experiment the
trade-off of accuracy and fidelity against the strength of the evidence; and the power view: the p-value the
fixed test gives on the first k key queries (median over seeds, log scale, α marked) against k, for the suspect
and the innocent model, one line per row of the table (per scheme when there are many rows). Those p-values come
from the answers each cell's fixed test collected (``<model>_power`` in the cell's metrics), nothing re-asked.

Files: ``report.md``, ``report.html``, ``cells.csv`` (one line per cell: flattened config and metrics),
``summary.json`` (the aggregated rows), ``*.png``.
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import InvalidArgument
from .grid import canonical, flatten
from .store import ResultsStore

P_FLOOR = 1e-300  # p-values that underflowed to 0 are drawn at −log10 = 300

# (metric, header, format) of the main table; "acc" → mean ± std, "p" → median / max, "k" → decisions k/n
COLUMNS: list[tuple[str, str, str]] = [
    ("clean_acc", "clean acc", "acc"),
    ("victim_acc", "victim acc", "acc"),
    ("victim_p", "victim p (max)", "pmax"),
    ("suspect_acc", "suspect acc", "acc"),
    ("suspect_fidelity", "fidelity", "acc"),
    ("suspect_stat", "statistic", "stat"),
    ("suspect_p", "p (median / max)", "p"),
    ("suspect_decision", "detected", "k"),
    ("innocent_p", "innocent p (min)", "pmin"),
    ("innocent_decision", "innocent accused", "k"),
    ("clean_p", "clean p (min)", "pmin"),
    ("extraction_queries", "queries", "int"),
    ("seconds_cell", "wall s", "int"),
    ("cpu_seconds_cell", "CPU s", "int"),
]

# Settings that rarely distinguish rows on their own; dropped first when looking for the fewest label columns.
_LOW_PRIORITY = ("innocent.", "removal_train.", "data.fractions.", "victim.arch_kwargs", "extraction.arch_kwargs")


def make_report(
    results: str | os.PathLike, out_dir: str | os.PathLike, *, grid: str | None = None, plots: bool = True
) -> dict[str, Any]:
    """Write the report files; returns ``{"files": [...], "experiments": n, "notes": [...]}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ResultsStore(results, create=False) as store:
        plan = store.plan(grid)
        if grid is not None and not plan:
            known = ", ".join(sorted(store.plan())) or "(none)"
            raise InvalidArgument(f"no grid {grid!r} in {store.path}; grids there: {known}")
        ok = {r["cell_id"]: r for r in store.cells(status="ok")}
        failed = {r["cell_id"]: r for r in store.cells(status="failed")}
        runs = store.runs()
        store_path = store.path
    descriptions = _descriptions(runs)
    notes: list[str] = []
    plotter = _Plotter(out) if plots else None
    if plotter is not None and not plotter.available:
        notes.append("plots skipped: matplotlib is not installed (pip install 'copycatch[report]')")
        plotter = None

    sections: list[dict[str, Any]] = []
    csv_rows: list[dict[str, Any]] = []
    for grid_name, experiments in plan.items():
        for exp_name, ids in experiments.items():
            rows = [ok[i] for i in ids if i in ok]
            section = _section(grid_name, exp_name, ids, rows, failed, descriptions)
            if plotter is not None and rows:
                section["plots"] = plotter.experiment(section)
            sections.append(section)
            for r in rows:
                csv_rows.append(
                    {
                        "grid": grid_name,
                        "experiment": exp_name,
                        "cell_id": r["cell_id"],
                        **{f"config.{k}": v for k, v in flatten(r["config"]).items()},
                        **dict(flatten(r["metrics"]).items()),
                    }
                )

    files = [
        _write_markdown(out, sections, store_path, runs, notes),
        _write_html(out, sections, store_path, notes),
        _write_csv(out, csv_rows),
        _write_summary(out, sections),
    ]
    files += [out / p for s in sections for p in s.get("plots", [])]
    return {"files": [str(f) for f in files], "experiments": len(sections), "notes": notes}


# ---------------------------------------------------------------------------------------------------------------------
# grouping
# ---------------------------------------------------------------------------------------------------------------------


def _section(
    grid: str,
    experiment: str,
    ids: Sequence[str],
    rows: list[dict[str, Any]],
    failed: dict[str, dict[str, Any]],
    descriptions: dict[tuple[str, str | None], str],
) -> dict[str, Any]:
    flat = [{k: v for k, v in flatten(r["config"]).items() if k != "seed"} for r in rows]
    paths = sorted({k for f in flat for k in f})
    varying = [p for p in paths if len({canonical(f.get(p)) for f in flat}) > 1]
    fixed = {p: flat[0].get(p) for p in paths if p not in varying} if flat else {}
    label_paths = sorted(_distinguishing(varying, flat), key=_column_order)
    groups: dict[str, dict[str, Any]] = {}
    for row, f in zip(rows, flat):
        key = canonical({p: f.get(p) for p in varying})
        group = groups.setdefault(key, {"labels": {p: f.get(p) for p in label_paths}, "rows": []})
        group["rows"].append(row)
    aggregated = [
        {
            "labels": g["labels"],
            "seeds": sorted(r["config"]["seed"] for r in g["rows"]),
            "stats": _aggregate([r["metrics"] for r in g["rows"]]),
            "statistic_name": g["rows"][0]["metrics"].get("statistic_name", "statistic"),
            "power": _power_values([r["metrics"] for r in g["rows"]]),
        }
        for g in groups.values()
    ]
    headers = {p: _short(p, fixed) for p in label_paths}
    if "scheme.name" not in label_paths and rows:
        headers = {"scheme.name": "scheme", **headers}
        for a in aggregated:
            a["labels"] = {"scheme.name": fixed.get("scheme.name"), **a["labels"]}
    missing = [i for i in ids if i not in {r["cell_id"] for r in rows}]
    return {
        "grid": grid,
        "experiment": experiment,
        "description": descriptions.get((grid, experiment)) or "",
        "grid_description": descriptions.get((grid, None)) or "",
        "planned": len(ids),
        "finished": len(rows),
        "failed": [(i, (failed[i].get("error") or "").splitlines()[0]) for i in missing if i in failed],
        "fixed": fixed,
        "label_paths": list(headers),
        "headers": headers,
        "groups": aggregated,
        "numeric_paths": [p for p in label_paths if _numeric_axis([a["labels"].get(p) for a in aggregated])],
        "plots": [],
    }


def _column_order(path: str) -> tuple[int, str]:
    """Scheme first, then data, victim, extraction, removals and the rest, as a reader follows the story."""
    for rank, prefix in enumerate(("scheme.name", "scheme.", "data.", "victim.", "extraction", "removals")):
        if path.startswith(prefix):
            return rank, path
    return 9, path


def _distinguishing(varying: list[str], flat: list[dict[str, Any]]) -> list[str]:
    """The fewest varying settings that still tell every group apart (low-priority ones dropped first)."""
    keep = list(varying)

    def distinct(cols: list[str]) -> int:
        return len({canonical([f.get(c) for c in cols]) for f in flat})

    target = distinct(varying)
    order = sorted(varying, key=lambda p: (not p.startswith(_LOW_PRIORITY), -len(p)))
    for path in order:
        trial = [c for c in keep if c != path]
        if trial and distinct(trial) == target:
            keep = trial
    return keep


def _aggregate(metrics: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for key, _, kind in COLUMNS:
        values = [m.get(key) for m in metrics if m.get(key) is not None]
        if not values:
            continue
        if kind == "k":
            out[key] = {"k": sum(bool(v) for v in values), "n": len(values)}
            continue
        nums = [float(v) for v in values if _finite(v)]
        if not nums:
            continue
        out[key] = {
            "mean": statistics.fmean(nums),
            "std": statistics.stdev(nums) if len(nums) > 1 else 0.0,
            "median": statistics.median(nums),
            "min": min(nums),
            "max": max(nums),
            "n": len(nums),
        }
    logs = [_neglog(m.get("suspect_p")) for m in metrics if _finite(m.get("suspect_p"))]
    if logs:
        out["suspect_neglog_p"] = {
            "mean": statistics.fmean(logs),
            "std": statistics.stdev(logs) if len(logs) > 1 else 0.0,
        }
    inn = [_neglog(m.get("innocent_p")) for m in metrics if _finite(m.get("innocent_p"))]
    if inn:
        out["innocent_neglog_p"] = {
            "mean": statistics.fmean(inn),
            "std": statistics.stdev(inn) if len(inn) > 1 else 0.0,
        }
    return out


def _power_values(metrics: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """``{role: {k: [p of every seed]}}`` for the suspect and the innocent model, from the cells' power curves (the
    suspect's, else the surrogate's: without removals they are the same model); k as text, for JSON."""
    out: dict[str, dict[str, list[float]]] = {}
    for role, sources in (("suspect", ("suspect_power", "surrogate_power")), ("innocent", ("innocent_power",))):
        for m in metrics:
            curve = next((m[s] for s in sources if isinstance(m.get(s), dict)), None)
            for k, p in zip((curve or {}).get("queries", []), (curve or {}).get("p", [])):
                if _finite(p):
                    out.setdefault(role, {}).setdefault(str(k), []).append(float(p))
    return out


def _short(path: str, fixed: dict[str, Any]) -> str:
    """Column title for a config path: ``removals[0].params.rate`` → ``prune rate``."""
    m = re.fullmatch(r"(removals|extraction\.post)\[(\d+)\]\.params\.(\w+)", path)
    if m:
        owner = fixed.get(f"{m.group(1)}[{m.group(2)}].name")
        return f"{owner} {m.group(3)}" if owner else f"{m.group(1).split('.')[-1]} {int(m.group(2)) + 1} {m.group(3)}"
    m = re.fullmatch(r"(removals|extraction\.post)\[(\d+)\]\.name", path)
    if m:
        return f"{'removal' if m.group(1) == 'removals' else 'post'} {int(m.group(2)) + 1}"
    names = {
        "scheme.name": "scheme",
        "extraction.name": "extraction",
        "extraction.arch": "surrogate arch",
        "victim.arch": "victim arch",
        "extraction.queries": "query set",
        "data.name": "data",
        "removals": "removals",
        "extraction": "extraction",
        "extraction.params.budget": "budget",
        "data.split_seed": "split seed",
        "data.max_train": "max train",
        "innocent.arch": "innocent arch",
        "alpha": "alpha",
    }
    if path in names:
        return names[path]
    for prefix, who in (
        ("scheme.params.", ""),
        ("extraction.params.", "extraction "),
        ("victim.train.", "victim "),
        ("extraction.train.", "thief "),
        ("removal_train.", "removal "),
        ("innocent.train.", "innocent "),
    ):
        if path.startswith(prefix):
            return who + path[len(prefix) :]
    return path


# ---------------------------------------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------------------------------------


def _cell(stats: dict[str, dict[str, float]], key: str, kind: str) -> str:
    s = stats.get(key)
    if s is None:
        return "—"
    if kind == "k":
        return f"{s['k']}/{s['n']}"
    if kind == "acc":
        return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"
    if kind == "stat":
        return f"{s['mean']:.3g} ± {s['std']:.2g}" if s["n"] > 1 else f"{s['mean']:.3g}"
    if kind == "p":
        return f"{s['median']:.2g} / {s['max']:.2g}"
    if kind == "pmax":
        return f"{s['max']:.2g}"
    if kind == "pmin":
        return f"{s['min']:.2g}"
    if kind == "int":
        return f"{s['mean']:.0f}"
    return f"{s['mean']:.3g}"


def _label(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _present(section: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The metric columns some row of the section has."""
    return [(k, h, kind) for k, h, kind in COLUMNS if any(k in g["stats"] for g in section["groups"])]


def table_rows(section: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    present = _present(section)
    header = [section["headers"][p] for p in section["label_paths"]] + ["seeds"] + [h for _, h, _ in present]
    body = []
    for g in section["groups"]:
        body.append(
            [_label(g["labels"].get(p)) for p in section["label_paths"]]
            + [str(len(g["seeds"]))]
            + [_cell(g["stats"], k, kind) for k, _, kind in present]
        )
    return header, body


def _statistic_names(section: dict[str, Any]) -> str:
    """``margin: trigger hits among misclassified; dynamarks: …`` (one name when all rows share it)."""
    by_scheme = {}
    for g in section["groups"]:
        by_scheme.setdefault(str(g["labels"].get("scheme.name")), g["statistic_name"])
    if len(set(by_scheme.values())) == 1:
        return next(iter(by_scheme.values()))
    return "; ".join(f"{scheme} — {name}" for scheme, name in by_scheme.items())


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row] for row in [header, *body]]
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def _fixed_lines(fixed: dict[str, Any]) -> list[str]:
    return [f"{k} = {_label(v)}" for k, v in sorted(fixed.items())]


def _write_markdown(
    out: Path, sections: list[dict[str, Any]], store: Path, runs: list[dict[str, Any]], notes: list[str]
) -> Path:
    lines = ["# copycatch benchmark report", "", f"Results: `{store}`.", ""]
    lines += [
        "Each row groups the cells that differ only in their seed: accuracies and statistics are mean ± std over "
        "seeds; p-values are the median and the worst (largest) over seeds; *detected* and *innocent accused* count "
        "the seeds whose verification rejected the null at the grid's α. The suspect is the thief's final model "
        "(surrogate after the removal chain); the innocent model is trained on the thief's data with true labels; "
        "the clean model is the owner's own model without a watermark.",
        "",
    ]
    if runs:
        last = runs[-1]
        versions = json.loads(last["versions"] or "{}")
        lines += [
            f"Last run `{last['run_id']}` of grid `{last['grid']}` on {last['host']} "
            f"({last['executor']}): versions " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())),
            "",
        ]
    lines += [f"> {n}" for n in notes]
    current = None
    for s in sections:
        if s["grid"] != current:
            current = s["grid"]
            lines += ["", f"## Grid `{current}`", ""]
            if s["grid_description"]:
                lines += [s["grid_description"], ""]
        lines += [f"### {s['experiment']}", ""]
        if s["description"]:
            lines += [s["description"], ""]
        lines += [
            f"{s['finished']} of {s['planned']} cells finished."
            + (f" {len(s['failed'])} failed." if s["failed"] else ""),
            "",
        ]
        if s["groups"]:
            lines += [_markdown_table(*table_rows(s)), ""]
            lines += ["Statistic: " + _statistic_names(s) + ".", ""]
        for png in s.get("plots", []):
            lines += [f"![{png}]({png})", ""]
        if s["fixed"]:
            lines += [
                "<details><summary>fixed settings</summary>",
                "",
                "```",
                *_fixed_lines(s["fixed"]),
                "```",
                "",
                "</details>",
                "",
            ]
        for cid, err in s["failed"]:
            lines.append(f"- failed `{cid}`: {err}")
    path = out / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


_HTML_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;max-width:1400px;color:#1d1d1f;line-height:1.4}
.table-wrap{overflow:auto;max-width:100%;max-height:75vh;margin:1em 0;border:1px solid #ccc}
table{border-collapse:separate;border-spacing:0;font-size:90%}
td,th{border-bottom:1px solid #ddd;border-right:1px solid #eee;padding:4px 10px;text-align:right;white-space:nowrap;
background:#fff}
thead th{position:sticky;top:0;z-index:2;background:#f3f3f3;vertical-align:bottom}
td:first-child,th:first-child{position:sticky;left:0;z-index:1;text-align:left;border-right:2px solid #ccc}
thead th:first-child{z-index:3}tbody tr:nth-child(even) td{background:#fafafa}
th[title]{cursor:help;text-decoration:underline dotted}
img{max-width:100%;height:auto}pre{background:#f7f7f7;padding:.5em;overflow-x:auto}
dl.columns dt{font-weight:600;margin-top:.4em}dl.columns dd{margin:0 0 0 1.2em}
"""

# What each column of the main table holds, in words: the header's tooltip and the column guide below the tables.
COLUMN_HELP = {
    "seeds": "how many seeds (cells) the row aggregates",
    "clean_acc": "test accuracy of the owner's model trained without a watermark (mean ± std over seeds)",
    "victim_acc": "test accuracy of the watermarked model as its API serves it",
    "victim_p": "p-value of the watermarked model itself, worst seed: the key must detect its own model",
    "suspect_acc": "test accuracy of the thief's final model (surrogate after the removal chain)",
    "suspect_fidelity": "share of test inputs on which the suspect agrees with the victim's API",
    "suspect_stat": "the scheme's test statistic on the suspect (named below the table)",
    "suspect_p": "the suspect's p-value (chance of its answers by luck): median / worst seed",
    "suspect_decision": "seeds whose suspect was called stolen at the grid's α",
    "innocent_p": "smallest p-value of an innocent model (trained on the thief's data with true labels)",
    "innocent_decision": "seeds whose innocent model was wrongly called stolen",
    "clean_p": "smallest p-value of the owner's clean model (no watermark)",
    "extraction_queries": "queries the thief sent to the victim's API",
    "seconds_cell": "wall-clock seconds per cell",
    "cpu_seconds_cell": "CPU seconds per cell",
}


def _html_table(section: dict[str, Any]) -> str:
    """The main table inside a box that scrolls both ways, so its many columns never widen the page; the header row
    and the first column stay in view while it scrolls."""
    e = html.escape
    header, body = table_rows(section)
    keys = [None] * len(section["label_paths"]) + ["seeds"] + [k for k, _, _ in _present(section)]
    cells = "".join(
        f"<th title='{e(COLUMN_HELP[k])}'>{e(h)}</th>" if k in COLUMN_HELP else f"<th>{e(h)}</th>"
        for k, h in zip(keys, header)
    )
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<div class='table-wrap'><table><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table></div>"


def _column_guide() -> str:
    e = html.escape
    items = "".join(f"<dt>{e(h)}</dt><dd>{e(COLUMN_HELP[k])}</dd>" for k, h, _ in [("seeds", "seeds", ""), *COLUMNS])
    return f"<details><summary>What the columns mean</summary><dl class='columns'>{items}</dl></details>"


def _write_html(out: Path, sections: list[dict[str, Any]], store: Path, notes: list[str]) -> Path:
    e = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'>",
        f"<title>copycatch benchmark report</title><style>{_HTML_CSS}</style></head><body>",
        "<h1>copycatch benchmark report</h1>",
        f"<p>Results: <code>{e(str(store))}</code>. Rows group cells that "
        "differ only in their seed: mean ± std over seeds; p-values median / worst; detections and false "
        "accusations counted at the grid's α. Wide tables scroll sideways inside their box; hover over a column "
        "title for what it holds.</p>",
        _column_guide(),
    ]
    parts += [f"<p><em>{e(n)}</em></p>" for n in notes]
    current = None
    for s in sections:
        if s["grid"] != current:
            current = s["grid"]
            parts.append(f"<h2>Grid <code>{e(current)}</code></h2>")
            if s["grid_description"]:
                parts.append(f"<p>{e(s['grid_description'])}</p>")
        parts.append(f"<h3>{e(s['experiment'])}</h3>")
        if s["description"]:
            parts.append(f"<p>{e(s['description'])}</p>")
        parts.append(
            f"<p>{s['finished']} of {s['planned']} cells finished"
            + (f"; {len(s['failed'])} failed" if s["failed"] else "")
            + ".</p>"
        )
        if s["groups"]:
            parts.append(_html_table(s))
            parts.append(f"<p>Statistic: {e(_statistic_names(s))}.</p>")
        parts += [f"<p><img src='{e(png)}' alt='{e(png)}'></p>" for png in s.get("plots", [])]
        if s["fixed"]:
            parts.append(
                "<details><summary>fixed settings</summary><pre>"
                + e("\n".join(_fixed_lines(s["fixed"])))
                + "</pre></details>"
            )
        if s["failed"]:
            parts.append(
                "<ul>" + "".join(f"<li>failed <code>{e(c)}</code>: {e(m)}</li>" for c, m in s["failed"]) + "</ul>"
            )
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _write_csv(out: Path, rows: list[dict[str, Any]]) -> Path:
    path = out / "cells.csv"
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_summary(out: Path, sections: list[dict[str, Any]]) -> Path:
    path = out / "summary.json"
    keep = ("grid", "experiment", "description", "planned", "finished", "failed", "headers", "groups", "plots")
    path.write_text(
        json.dumps([{k: s[k] for k in keep} for s in sections], indent=1, sort_keys=True, default=str), encoding="utf-8"
    )
    return path


def _descriptions(runs: list[dict[str, Any]]) -> dict[tuple[str, str | None], str]:
    """Descriptions from the grid files as last run (read with yaml.safe_load; tolerant of anything odd)."""
    import yaml

    out: dict[tuple[str, str | None], str] = {}
    for run in runs:
        try:
            raw = yaml.safe_load(run.get("grid_text") or "") or {}
        except yaml.YAMLError:
            continue
        if not isinstance(raw, dict):
            continue
        name = run["grid"]
        out[(name, None)] = str(raw.get("description") or "").strip()
        for exp in raw.get("experiments") or []:
            if isinstance(exp, dict) and exp.get("name"):
                out[(name, str(exp["name"]))] = str(exp.get("description") or "").strip()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------------------


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _neglog(p: float) -> float:
    return -math.log10(max(float(p), P_FLOOR))


def _numeric_axis(values: list[Any]) -> bool:
    nums = [v for v in values if _finite(v)]
    return len(nums) == len(values) and len(set(nums)) >= 2


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _power_series(s: dict[str, Any]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """The power view's lines: one per table row, or, past eight rows, one per scheme (its rows' seeds pooled)."""
    by_row = len(s["groups"]) <= 8
    series: dict[str, dict[str, dict[str, list[float]]]] = {}
    for g in s["groups"]:
        if by_row:
            name = ", ".join(f"{s['headers'][p]}={_label(g['labels'].get(p))}" for p in s["label_paths"]) or "all"
        else:
            name = str(g["labels"].get("scheme.name", "all"))
        line = series.setdefault(name, {})
        for role, by_k in g.get("power", {}).items():
            for k, ps in by_k.items():
                line.setdefault(role, {}).setdefault(k, []).extend(ps)
    return series


def _shade_rejection(ax: Any, threshold: float, *, above: bool, label: str | None = None) -> None:
    """Shade where the evidence is significant at α (above ``threshold`` on a −log10 p axis, below it on a log p
    axis), widening the axis so the shaded band shows even when no point reaches it."""
    lo, hi = ax.get_ylim()
    if above:
        hi = max(hi, threshold + 0.15 * (hi - lo))
        ax.axhspan(threshold, hi, color="red", alpha=0.1, zorder=0, label=label)
    else:
        lo = min(lo, threshold / 3)  # a third of α: a visible band on a log axis
        ax.axhspan(lo, threshold, color="red", alpha=0.1, zorder=0, label=label)
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1)
    ax.set_ylim(lo, hi)


def _save_png(fig: Any, path: Path, *, dpi: int) -> None:
    """Save ``fig`` as a 256-colour palette PNG: a line plot has few colours, so this is a third of the size of
    matplotlib's RGBA file, which matters for reports committed next to their results (benchmarks/results/)."""
    import io

    from PIL import Image  # a dependency of matplotlib

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


class _Plotter:
    def __init__(self, out: Path):
        self.out = out
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from matplotlib import ticker

            self.plt, self.ticker = plt, ticker
            self.available = True
        except ImportError:
            self.available = False

    def experiment(self, s: dict[str, Any]) -> list[str]:
        files = []
        base = _slug(f"{s['grid']}-{s['experiment']}")
        for axis in s["numeric_paths"]:
            name = self._sweep(s, axis, f"{base}-vs-{_slug(s['headers'][axis])}.png")
            if name:
                files.append(name)
        if len(s["groups"]) >= 2:
            files.append(self._tradeoff(s, f"{base}-tradeoff.png"))
        if any(g.get("power") for g in s["groups"]):
            files.append(self._power(s, f"{base}-power.png"))
        return files

    def _series(self, s: dict[str, Any], axis: str) -> dict[str, list[dict[str, Any]]]:
        others = [p for p in s["label_paths"] if p != axis]
        series: dict[str, list[dict[str, Any]]] = {}
        for g in s["groups"]:
            name = ", ".join(f"{s['headers'][p]}={_label(g['labels'].get(p))}" for p in others) or "all"
            series.setdefault(name, []).append(g)
        return series

    def _sweep(self, s: dict[str, Any], axis: str, filename: str) -> str | None:
        """Statistic, −log10 p and accuracy against ``axis``; one row of panels per statistic (schemes whose
        statistics differ cannot share an axis), one line per combination of the other varying settings."""
        series = self._series(s, axis)
        if len(series) > 24:
            return None  # unreadable; the table and cells.csv still hold every number
        rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for name, groups in series.items():
            rows.setdefault(groups[0]["statistic_name"], {})[name] = groups
        plt = self.plt
        fig, axes = plt.subplots(len(rows), 3, figsize=(15, 3.4 * len(rows) + 0.8), squeeze=False)
        alpha = s["fixed"].get("alpha")
        for r, (statistic, row_series) in enumerate(rows.items()):
            specs = [
                ("suspect_stat", statistic),
                ("suspect_neglog_p", "−log10 p (suspect)"),
                ("suspect_acc", "suspect test accuracy"),
            ]
            for ax, (metric, ylabel) in zip(axes[r], specs):
                for name, groups in row_series.items():
                    pts = sorted(
                        ((g["labels"][axis], g["stats"][metric]) for g in groups if metric in g["stats"]),
                        key=lambda t: t[0],
                    )
                    if pts:
                        ax.errorbar(
                            [x for x, _ in pts],
                            [st["mean"] for _, st in pts],
                            yerr=[st["std"] for _, st in pts],
                            marker="o",
                            capsize=3,
                            label=name,
                        )
                    if metric == "suspect_neglog_p":
                        inn = sorted(
                            (
                                (g["labels"][axis], g["stats"]["innocent_neglog_p"])
                                for g in groups
                                if "innocent_neglog_p" in g["stats"]
                            ),
                            key=lambda t: t[0],
                        )
                        if inn:
                            ax.plot([x for x, _ in inn], [st["mean"] for _, st in inn], linestyle=":", color="grey")
                if metric == "suspect_neglog_p" and _finite(alpha):
                    _shade_rejection(ax, -math.log10(alpha), above=True)
                ax.set_xlabel(s["headers"][axis])
                ax.set_ylabel(ylabel if len(ylabel) <= 40 else ylabel[:38] + "…", fontsize="small")
                ax.grid(alpha=0.3)
            axes[r][0].legend(fontsize="x-small")
        alpha_text = f"; shaded red: p ≤ α = {alpha:g}" if _finite(alpha) else ""
        fig.suptitle(
            f"{s['experiment']}: against {s['headers'][axis]} (mean ± std over seeds; dotted grey: the "
            f"innocent model{alpha_text})"
        )
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        _save_png(fig, self.out / filename, dpi=100)
        plt.close(fig)
        return filename

    def _power(self, s: dict[str, Any], filename: str) -> str:
        """p-value (median over seeds, log scale) against the key queries it was computed on: solid the suspect,
        dashed the innocent model, one colour per table row (per scheme past eight rows), α in red."""
        plt = self.plt
        fig, ax = plt.subplots(figsize=(8, 4.8))
        queries: set[int] = set()
        for i, (name, curves) in enumerate(_power_series(s).items()):
            colour = f"C{i % 10}"
            for role, style in (("suspect", "-"), ("innocent", "--")):
                pts = sorted((int(k), max(statistics.median(ps), P_FLOOR)) for k, ps in curves.get(role, {}).items())
                queries.update(k for k, _ in pts)
                if pts:
                    label = name if role == "suspect" else ("innocent model (dashed)" if i == 0 else None)
                    ax.plot([k for k, _ in pts], [p for _, p in pts], style, marker="o", color=colour, label=label)
        alpha = s["fixed"].get("alpha")
        ax.set_xscale("log")
        ax.set_yscale("log")
        if _finite(alpha):
            _shade_rejection(ax, alpha, above=False, label=f"p ≤ α = {alpha:g}")
        ax.set_xticks(sorted(queries), [str(k) for k in sorted(queries)])  # the k measured, not 2×10¹
        ax.xaxis.set_minor_formatter(self.ticker.NullFormatter())
        ax.set_xlabel("key queries answered (the first k of the key)")
        ax.set_ylabel("p-value (median over seeds)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small")
        fig.suptitle(f"{s['experiment']}: power against queries (solid: suspect; dashed: innocent model)")
        fig.tight_layout()
        _save_png(fig, self.out / filename, dpi=100)
        plt.close(fig)
        return filename

    def _tradeoff(self, s: dict[str, Any], filename: str) -> str:
        plt = self.plt
        fig, panels = plt.subplots(1, 3, figsize=(16, 4.2))
        by_scheme: dict[str, list[dict[str, Any]]] = {}
        for g in s["groups"]:
            by_scheme.setdefault(str(g["labels"].get("scheme.name", "")), []).append(g)
        for ax, (metric, xlabel) in zip(
            panels,
            (
                ("victim_acc", "victim API accuracy (the owner's cost)"),
                ("suspect_acc", "suspect test accuracy (the thief's gain)"),
                ("suspect_fidelity", "fidelity (agreement with the victim API)"),
            ),
        ):
            for scheme, groups in by_scheme.items():
                pts = [
                    (g["stats"][metric], g["stats"]["suspect_neglog_p"])
                    for g in groups
                    if metric in g["stats"] and "suspect_neglog_p" in g["stats"]
                ]
                if pts:
                    ax.errorbar(
                        [x["mean"] for x, _ in pts],
                        [y["mean"] for _, y in pts],
                        xerr=[x["std"] for x, _ in pts],
                        yerr=[y["std"] for _, y in pts],
                        fmt="o",
                        capsize=3,
                        label=scheme,
                    )
            alpha = s["fixed"].get("alpha")
            if _finite(alpha):
                _shade_rejection(ax, -math.log10(alpha), above=True)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("−log10 p (suspect)")
            ax.grid(alpha=0.3)
        panels[0].legend(fontsize="small")
        fig.suptitle(f"{s['experiment']}: utility vs evidence, one point per row of the table (shaded red: p ≤ α)")
        fig.tight_layout()
        _save_png(fig, self.out / filename, dpi=110)
        plt.close(fig)
        return filename
