"""The five seed papers side by side with copycatch: the tables of docs/reproductions.md, from committed results.

Each paper's grid (``src/copycatch/bench/grids/<paper>.yaml``) runs at the CPU scale of docs/reproductions.md with
``make reproduce PAPER=<paper>``, which writes ``benchmarks/results/<paper>/`` (the report, ``summary.json`` and
``cells.csv``: one row per cell, every setting and every measurement). This script reads only those committed
``cells.csv`` files and prints one markdown table per paper table: the paper's number (copied from the paper, the
reference constants below) next to ours (mean ± std over seeds; worst-seed p-values; detections counted at the grid's
α). A paper whose results are missing prints a line saying which command produces them.

    .venv/bin/python benchmarks/reproductions.py                   # every paper
    .venv/bin/python benchmarks/reproductions.py --papers dynamarks
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PAPERS = ("margin", "feature-sharing", "mea-defender", "frontier-stitching", "dynamarks", "margin-mixup")

Row = dict[str, str]


# ---------------------------------------------------------------------------------------------------------------------
# reading and aggregating cells.csv
# ---------------------------------------------------------------------------------------------------------------------


def load(paper: str) -> list[Row] | None:
    path = RESULTS / paper / "cells.csv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def select(rows: Iterable[Row], experiment: str | None = None, **where: object) -> list[Row]:
    """The rows of one table line: ``where`` maps a column (``__`` for ``.``) to its value, compared as text."""
    wanted = {k.replace("__", "."): str(v) for k, v in where.items()}
    return [
        r
        for r in rows
        if (experiment is None or r["experiment"] == experiment) and all(r.get(k) == v for k, v in wanted.items())
    ]


MISSING = ("", None, "None", "nan")  # how cells.csv writes a measurement a cell does not have


def values(rows: list[Row], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r.get(column) not in MISSING]


def spread(vs: list[float], digits: int = 1) -> str:
    """mean ± std (one value as it is; none as "—")."""
    if not vs:
        return "—"
    if len(vs) == 1:
        return f"{vs[0]:.{digits}f}"
    return f"{statistics.mean(vs):.{digits}f} ± {statistics.stdev(vs):.{digits}f}"


def mean_std(rows: list[Row], column: str, *, scale: float = 1.0, digits: int = 1) -> str:
    return spread([v * scale for v in values(rows, column)], digits)


def pct(rows: list[Row], column: str) -> str:
    """A rate column (0-1) as percent, mean ± std."""
    return mean_std(rows, column, scale=100.0, digits=1)


def worst_p(rows: list[Row], column: str = "suspect_p") -> str:
    vs = values(rows, column)
    return _p(max(vs)) if vs else "—"


def best_p(rows: list[Row], column: str) -> str:
    vs = values(rows, column)
    return _p(min(vs)) if vs else "—"


def _p(p: float) -> str:
    if p == 0 or p < 1e-300:
        return "< 1e-300"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def detected(rows: list[Row], column: str = "suspect_p") -> str:
    """Seeds whose p-value is ≤ the grid's α, as "k/n"."""
    ps = [(float(r[column]), float(r["config.alpha"])) for r in rows if r.get(column) not in MISSING]
    return f"{sum(p <= a for p, a in ps)}/{len(ps)}" if ps else "—"


def count_true(rows: list[Row], column: str) -> str:
    vs = [r.get(column) for r in rows if r.get(column) not in MISSING]
    return f"{sum(v == 'True' for v in vs)}/{len(vs)}" if vs else "—"


def table(headers: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def seeds(rows: list[Row]) -> int:
    return len({r["config.seed"] for r in rows})


def ratio(rows: list[Row], numerator: str, denominator: str) -> str:
    """mean ± std over seeds of numerator / denominator, in percent (a count of hits over the key's size)."""
    return spread([100 * float(r[numerator]) / float(r[denominator]) for r in rows if r.get(numerator) not in MISSING])


def accused(rows: list[Row], column: str = "innocent_p") -> str:
    """Innocent (or clean) models accused at the grid's α, over the distinct models of these rows."""
    models = {(r["config.seed"], r["config.victim.arch"], r.get(column)) for r in rows if r.get(column) not in MISSING}
    alpha = float(rows[0]["config.alpha"]) if rows else 0.0
    return f"{sum(float(p) <= alpha for *_, p in models)}/{len(models)}" if models else "—"


# ---------------------------------------------------------------------------------------------------------------------
# Margin (Kim et al., ICML 2023): Table 2 and Figure 3
# ---------------------------------------------------------------------------------------------------------------------

TRIGGERS = "suspect_metrics.triggers"


def acc_and_hits(rs: list[Row], acc: str, stat: str) -> str:
    """ "objective accuracy / watermark accuracy": an accuracy column and a count of trigger hits over the key."""
    return f"{mean_std(rs, acc, digits=3)} / {ratio(rs, stat, TRIGGERS)} %"


MARGIN_TABLE_2 = {  # CIFAR-10 columns: (EWE objective acc, EWE watermark acc, margin objective, margin watermark)
    "watermarked model": ("0.8610 / 0.2668", "0.8947 / 1.0000"),
    "distillation": ("0.8888 / 0.0164", "0.9255 / 0.6667"),
    "extraction, same source": ("0.8397 / 0.5101", "0.9063 / 0.7300"),
    "extraction, different source": ("0.7076 / 0.6624", "0.8699 / 0.8033"),
    "model w/o watermark": ("0.9356 / (garbled)", "0.9356 / 0.0000"),
}


def margin(rows: list[Row]) -> list[str]:
    t2 = "table-2"
    attacks = {
        "distillation": {"config__extraction__name": "distillation"},
        "extraction, same source": {
            "config__extraction__name": "soft-label",
            "config__extraction__queries": "attacker_pool",
        },
        "extraction, different source": {
            "config__extraction__name": "soft-label",
            "config__extraction__queries": "mnist-5k",
        },
    }
    ours: dict[str, dict[str, list[Row]]] = {
        scheme: {name: select(rows, t2, config__scheme__name=scheme, **w) for name, w in attacks.items()}
        for scheme in ("ewe", "margin")
    }
    body = []
    for name, (paper_ewe, paper_margin) in MARGIN_TABLE_2.items():
        if name in attacks:
            ewe, mar = ours["ewe"][name], ours["margin"][name]
            body.append(
                [
                    name,
                    paper_ewe,
                    acc_and_hits(ewe, "suspect_acc", "suspect_stat"),
                    worst_p(ewe),
                    paper_margin,
                    acc_and_hits(mar, "suspect_acc", "suspect_stat"),
                    worst_p(mar),
                    detected(mar),
                ]
            )
        else:
            role = "victim" if name == "watermarked model" else "clean"
            ewe = [r for rs in ours["ewe"].values() for r in rs]
            mar = [r for rs in ours["margin"].values() for r in rs]
            ewe1, mar1 = _one_per_seed(ewe), _one_per_seed(mar)
            body.append(
                [
                    name,
                    paper_ewe,
                    acc_and_hits(ewe1, f"{role}_acc", f"{role}_stat"),
                    worst_p(ewe1, f"{role}_p"),
                    paper_margin,
                    acc_and_hits(mar1, f"{role}_acc", f"{role}_stat"),
                    worst_p(mar1, f"{role}_p"),
                    detected(mar1, f"{role}_p"),
                ]
            )
    every = [r for rs in ours["margin"].values() for r in rs]
    out = [
        "**Table 2** (objective accuracy / watermark accuracy; paper: CIFAR-10 columns, ResNet-34). Watermark "
        "accuracy is the share of the 100 triggers on their secret label; the p-value is copycatch's exact binomial "
        "test over the misclassified triggers (worst seed; p ≤ α counts seeds at α = 1e-3). Innocent models (true "
        f"labels, the thief's data) accused by the margin key: {accused(every)}.",
        "",
        table(["model", "paper EWE", "ours EWE", "EWE p", "paper margin", "ours margin", "margin p", "p ≤ α"], body),
    ]
    for experiment, column, label, paper in (
        (
            "fig-3-trigger-set-size",
            "config.scheme.params.n_triggers",
            "triggers",
            "larger sets transfer less; 100 recommended",
        ),
        ("fig-3-margin-iterations", "config.scheme.params.steps", "K", "smaller K: higher accuracy, weaker transfer"),
        ("fig-3-lambda", "config.scheme.params.lam", "λ", "no difference over 0.25-2"),
    ):
        exp_rows = select(rows, experiment)
        settings = sorted({r[column] for r in exp_rows}, key=float)
        lines = []
        for v in settings:
            rs = select(exp_rows, **{column: v})
            lines.append(
                [
                    v,
                    pct(rs, "victim_acc"),
                    mean_std(rs, "watermark_cost", scale=100, digits=2),
                    ratio(rs, "victim_stat", TRIGGERS),
                    ratio(rs, "suspect_stat", TRIGGERS),
                    worst_p(rs),
                    detected(rs),
                ]
            )
        out += [
            "",
            f"**Figure 3, {label}** (same-source extraction; paper, in words: {paper}).",
            "",
            table(
                [
                    label,
                    "victim acc %",
                    "cost (points)",
                    "victim wm acc",
                    "surrogate wm acc",
                    "p (worst seed)",
                    "p ≤ α",
                ],
                lines,
            ),
        ]
    return out


MIXUP_TABLE_3 = {  # components: (watermarked, extraction same source, extraction other source), obj / wat acc
    "2": ("0.7928 / 1.0000", "0.8006 / 0.6700", "0.7524 / 0.8900"),
    "5": ("0.4480 / 1.0000", "0.4440 / 0.8300", "0.3966 / 0.8500"),
}


def margin_mixup(rows: list[Row]) -> list[str]:
    lines = []
    for components in ("1", "2", "5"):
        rs = select(rows, config__scheme__params__mixup_components=components)
        paper = MIXUP_TABLE_3.get(components, ("(Table 2: 0.8947 / 1.0000)", "0.9063 / 0.7300", "0.8699 / 0.8033"))
        victims = _one_per_seed(rs)
        line = [
            components,
            paper[0],
            acc_and_hits(victims, "victim_acc", "victim_stat"),
        ]
        for queries, paper_cell in (("attacker_pool", paper[1]), ("mnist-5k", paper[2])):
            at = select(rs, config__extraction__queries=queries)
            line += [
                paper_cell,
                acc_and_hits(at, "suspect_acc", "suspect_stat"),
                worst_p(at),
                detected(at),
            ]
        lines.append(line)
    clean = _one_per_seed(rows)
    return [
        "Mixup triggers of 1 (plain), 2 and 5 holdout images, 100 triggers, the paper's Algorithm 1; same-source and "
        "different-source (mnist-5k) soft-label extraction. Cells: objective accuracy / watermark accuracy (paper: "
        f"CIFAR-10; its CIFAR-100 column is our mnist-5k). Clean model {pct(clean, 'clean_acc')} %; innocent models "
        f"accused {accused(rows)}.",
        "",
        table(
            [
                "components",
                "paper victim",
                "ours victim",
                "paper same source",
                "ours same source",
                "p",
                "p ≤ α",
                "paper other source",
                "ours other source",
                "p",
                "p ≤ α",
            ],
            lines,
        ),
    ]


def _one_per_cell(rows: list[Row]) -> list[Row]:
    """A cell shared by several experiments has a row in each; count it once."""
    return list({r["cell_id"]: r for r in rows}.values())


def _one_per_seed(rows: list[Row]) -> list[Row]:
    """One row per seed: the victim, clean and innocent columns repeat over a seed's attack rows."""
    return list({r["config.seed"]: r for r in rows}.values())


# ---------------------------------------------------------------------------------------------------------------------
# Feature sharing (Tang et al., ICLR 2022 submission): Tables 2-3 and Figures 5-7
# ---------------------------------------------------------------------------------------------------------------------

FEATURE_SHARING_PAPER = {  # MNIST rows: protected val acc, stolen val acc, stolen watermark acc, WDR
    ("in", "baseline"): ("99.21", "98.83", "0.51", "0.0"),
    ("in", "EWE"): ("98.16", "98.80", "60.11", "76.0"),
    ("in", "feature sharing"): ("98.71", "98.25", "99.72", "100"),
    ("out", "baseline"): ("99.15", "98.81", "0.15", "0.0"),
    ("out", "EWE"): ("98.12", "98.76", "65.68", "79.5"),
    ("out", "feature sharing"): ("98.71", "98.25", "99.84", "100"),
}
WDR = "suspect_metrics.watermark_detection_rate"


def _fs_schemes(rows: list[Row], distribution: str) -> dict[str, list[Row]]:
    """baseline (whole-network fine-tuning), EWE and feature sharing (copycatch's default) of one distribution."""
    fs = select(rows, config__scheme__name="feature-sharing", config__scheme__params__distribution=distribution)
    ewe = select(rows, config__scheme__name="ewe")
    return {
        "baseline": select(fs, config__scheme__params__finetune="whole-network"),
        "EWE": [r for r in ewe if r.get("config.scheme.params.distribution", "out") == distribution],
        "feature sharing, decision layers": select(fs, config__scheme__params__finetune="decision-layers"),
        "feature sharing, output layer": select(fs, config__scheme__params__finetune="last-layer"),
    }


def feature_sharing(rows: list[Row]) -> list[str]:
    out: list[str] = []
    for experiment, distribution, label in (
        ("table-2-in-distribution", "in", "Table 2, in-distribution (3×3 white patch on source-class images)"),
        ("table-3-out-of-distribution", "out", "Table 3, out-of-distribution (one mnist-5k digit class)"),
    ):
        lines = []
        for name, rs in _fs_schemes(select(rows, experiment), distribution).items():
            paper = FEATURE_SHARING_PAPER[(distribution, name.split(",")[0])]
            victims = _one_per_seed(rs)
            lines.append(
                [
                    name,
                    " / ".join(paper),
                    pct(victims, "victim_acc"),
                    worst_p(victims, "victim_p"),
                    pct(rs, "suspect_acc"),
                    pct(rs, "suspect_metrics.watermark_accuracy"),
                    pct(rs, WDR),
                    worst_p(rs),
                    detected(rs),
                    accused(rs),
                ]
            )
        out += [
            f"**{label}** (paper: MNIST, a 4-layer CNN; Wilcoxon test at certainty 0.3 and α = 0.05, WDR over 200 "
            "draws of a tenth of the key). Paper cells: protected val acc / stolen val acc / stolen watermark acc / "
            "WDR, in %. Ours twice: fine-tuning the decision layers (the paper's recipe; copycatch's default in "
            "distribution) and the output layer alone (copycatch's default out of distribution; the figures below "
            "use it for both).",
            "",
            table(
                [
                    "method",
                    "paper",
                    "victim acc %",
                    "victim p",
                    "stolen acc %",
                    "stolen wm acc %",
                    "WDR %",
                    "p (worst seed)",
                    "p ≤ α",
                    "innocents accused",
                ],
                lines,
            ),
            "",
        ]
    for experiment, label, column, paper in (
        ("fig-5-model-pruning", "Figure 5, model pruning", "config.removals[0].params.rate", "98 % at 95 % pruned"),
        ("fig-6-fine-pruning", "Figure 6, fine-pruning", "config.removals[0].params.rate", "98 % at 95 % pruned"),
    ):
        exp_rows = select(rows, experiment)
        rates = sorted({r[column] for r in exp_rows}, key=float)
        lines = []
        for scheme, rs in (
            ("feature sharing, in", _fs_schemes(exp_rows, "in")["feature sharing, output layer"]),
            ("feature sharing, out", _fs_schemes(exp_rows, "out")["feature sharing, output layer"]),
            ("EWE", select(exp_rows, config__scheme__name="ewe")),
        ):
            for rate in rates:
                at = select(rs, **{column: rate})
                lines.append(
                    [
                        scheme,
                        rate,
                        pct(at, "suspect_acc"),
                        pct(at, "suspect_metrics.watermark_accuracy"),
                        worst_p(at),
                        detected(at),
                    ]
                )
        out += [
            f"**{label}** of the stolen model (paper: feature sharing keeps {paper}, EWE falls to 20 % or below).",
            "",
            table(["scheme", "rate", "stolen acc %", "stolen wm acc %", "p (worst seed)", "p ≤ α"], lines),
            "",
        ]
    q = select(rows, "fig-7-quantization")
    lines = []
    for scheme, rs in (
        ("feature sharing, in", _fs_schemes(q, "in")["feature sharing, output layer"]),
        ("feature sharing, out", _fs_schemes(q, "out")["feature sharing, output layer"]),
        ("EWE", select(q, config__scheme__name="ewe")),
    ):
        for answers in sorted({_answers(r) for r in rs}, key=_precision):
            at = [r for r in rs if _answers(r) == answers]
            lines.append(
                [
                    scheme,
                    answers,
                    pct(at, "suspect_acc"),
                    pct(at, "suspect_metrics.watermark_accuracy"),
                    worst_p(at),
                    detected(at),
                ]
            )
    out += [
        "**Figure 7, posterior quantisation** (the thief trains on answers quantised to k levels, or on hard labels; "
        "paper: transfer drops with precision, hard labels remove the watermark).",
        "",
        table(["scheme", "answers", "stolen acc %", "stolen wm acc %", "p (worst seed)", "p ≤ α"], lines),
    ]
    return out


def _precision(answers: str) -> float:
    """Sort key: probabilities, then the most levels first, hard labels last."""
    if answers == "hard labels":
        return math.inf
    return -float(answers.split()[0]) if answers[0].isdigit() else -math.inf


def _answers(row: Row) -> str:
    """What the thief trained on: "k levels" (quantised posteriors), "hard labels" or "probabilities"."""
    post = row.get("config.extraction.post[0].name", "")
    if post == "quantize":
        return f"{float(row['config.extraction.post[0].params.levels']):g} levels"
    return "hard labels" if post == "hard-label" else "probabilities"


# ---------------------------------------------------------------------------------------------------------------------
# MEA-Defender (Lv et al., IEEE S&P 2024): Tables 1-5, the evasion loss and Figure 6
# ---------------------------------------------------------------------------------------------------------------------

WSR = "suspect_metrics.watermark_success_rate"


def mea_line(label: str, rs: list[Row], paper: str = "") -> list[str]:
    """victim acc / WSR, extracted acc / WSR, the exact test and the paper's 30 % rule, for one table line."""
    victims = _one_per_seed(rs)
    line = [label] + ([paper] if paper != "" else [])
    return [
        *line,
        f"{pct(victims, 'victim_acc')} / {pct(victims, 'victim_stat')}",
        f"{pct(rs, 'suspect_acc')} / {pct(rs, WSR)}",
        worst_p(rs),
        detected(rs),
        count_true(rs, "suspect_metrics.paper_rule_stolen"),
    ]


MEA_COLUMNS = ["victim acc / WSR %", "extracted acc / WSR %", "p (worst seed)", "p ≤ α", "WSR > 30 % (paper's rule)"]


def mea_defender(rows: list[Row]) -> list[str]:
    t1 = "table-1-extraction-attacks"
    every = select(rows, t1)
    victims = _one_per_seed(every)
    out = [
        "**Table 1** (Fashion-MNIST, same architecture). Paper: victim 89.77 % / WSR 100 %; clean model not "
        f"stated. Ours: clean {pct(victims, 'clean_acc')} %, victim {pct(victims, 'victim_acc')} %, cost "
        f"{mean_std(victims, 'watermark_cost', scale=100, digits=2)} points; innocent models accused "
        f"{accused(every)}, their WSR {pct(every, 'innocent_stat')} %.",
        "",
        table(
            ["thief", "paper extracted acc / WSR", *MEA_COLUMNS],
            [
                mea_line("Hinton", select(every, config__extraction__name="distillation"), "89.46 % / 70.75 %"),
                mea_line("JBDA (Papernot)", select(every, config__extraction__name="jacobian"), "89.39 % / 82.30 %"),
                mea_line("Knockoff", select(every, config__extraction__name="knockoff"), "89.57 % / 85.50 %"),
            ],
        ),
    ]
    t2 = select(rows, "table-2-architectures")
    lines = [
        mea_line(f"{v} → {e}", select(t2, config__victim__arch=v, config__extraction__arch=e))
        for v in ("cnn-small", "cnn", "lenet")
        for e in ("cnn-small", "cnn", "lenet")
    ]
    out += [
        "",
        "**Table 2** (victim × extracted architecture, Knockoff; the paper's rows are CIFAR-10 only: VGG-like, "
        "AlexNet, ResNet18, extracted WSR 54.95-76.20 %, mean 66.72 %).",
        "",
        table(["victim → extracted", *MEA_COLUMNS], lines),
    ]
    t3 = select(rows, "table-3-query-sets")
    out += [
        "",
        "**Table 3** (Knockoff query sets; paper, CIFAR-10: in-distribution 97.93 %, CIFAR-100 95.85 %, "
        "TinyImageNet 97.99 %, Caltech 65.44 % WSR).",
        "",
        table(
            ["query set", *MEA_COLUMNS],
            [
                mea_line("thief's Fashion-MNIST pool", select(t3, config__extraction__queries="attacker_pool")),
                mea_line("mnist-5k (out of distribution)", select(t3, config__extraction__queries="mnist-5k")),
            ],
        ),
    ]
    t5 = select(rows, "table-5-watermark-loss")
    paper5 = {"com": "81.34/0.57 → 80.62/1.08", "ver": "82.50/80.80 → 80.76/26.95", "both": "81.07/100 → 81.06/76.20"}
    out += [
        "",
        "**Tables 4-5** (watermark loss ablation, Knockoff; paper, CIFAR-10, victim acc/WSR → extracted acc/WSR). "
        "L_ver only is the paper's Composite Backdoor column of Table 4; its EWE column is in the margin table "
        "above (EWE, same-source extraction).",
        "",
        table(
            ["loss", "paper", *MEA_COLUMNS],
            [
                mea_line(name, select(t5, config__scheme__params__watermark_losses=name), paper5[name])
                for name in ("com", "ver", "both")
            ],
        ),
    ]
    ev = select(rows, "evasion-loss")
    out += [
        "",
        "**Evasion loss** (Figure 2; paper, CIFAR-10: false-watermark rate WFPR 5.32 % victim / 5.26 % extracted "
        "with it, 51.68 % / 48.10 % without). WFPR here is the extracted model's rate on the false watermarks.",
        "",
        table(
            ["evasion share", "extracted WFPR %", *MEA_COLUMNS],
            [
                [
                    v,
                    pct(select(ev, config__scheme__params__evasion_fraction=v), "suspect_metrics.wfpr"),
                    *mea_line("", select(ev, config__scheme__params__evasion_fraction=v))[1:],
                ]
                for v in ("0.0", "0.125")
            ],
        ),
    ]
    ft, pr = select(rows, "fig-6-fine-tuning"), select(rows, "fig-6-pruning")
    ft_truth = select(rows, "fine-tuning-true-labels")
    out += [
        "",
        "**Figure 6** (the extracted model fine-tuned on the thief's queries labelled with the victim's answers, as "
        "the paper's thief; then the same with true labels, a stronger thief; then pruned. Paper, Fashion-MNIST SL: "
        "WSR stable at 81.3 % under fine-tuning; at 80 % pruning accuracy 64.32 %, WSR 70.1 %).",
        "",
        table(
            ["removal", *MEA_COLUMNS],
            [
                mea_line(f"fine-tune {e} epochs, {label}", select(rs, **{"config.removals[0].params.epochs": e}))
                for rs, label in ((ft, "API's answers"), (ft_truth, "true labels"))
                for e in ("1", "5", "10", "20")
            ]
            + [
                mea_line(f"prune {r}", select(pr, **{"config.removals[0].params.rate": r}))
                for r in ("0.1", "0.2", "0.4", "0.6", "0.8", "0.9")
            ],
        ),
    ]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Frontier stitching (Le Merrer et al., Neural Computing and Applications 2020): Tables 1-3 and §4.3
# ---------------------------------------------------------------------------------------------------------------------

FRONTIER_PAPER = {  # (net, attack, rate): "K elts removed / extraction rate / acc. after"
    ("cnn-small", "prune", "0.25"): "0.053 / 1.000 / 0.983",
    ("cnn-small", "prune", "0.5"): "0.263 / 1.000 / 0.984",
    ("cnn-small", "prune", "0.75"): "3.579 / 1.000 / 0.983",
    ("cnn-small", "prune", "0.85"): "34.000 / 0.789 / 0.936",
    ("mlp", "prune", "0.25"): "0.360 / 1.000 / 0.951",
    ("mlp", "prune", "0.5"): "0.704 / 1.000 / 0.947",
    ("mlp", "prune", "0.75"): "9.615 / 1.000 / 0.915",
    ("mlp", "prune", "0.85"): "(0.80: 24.438 / 1.000 / 0.877)",
    ("cnn-small", "svd", "0.25"): "1.867 / 1.000 / 0.987",
    ("cnn-small", "svd", "0.5"): "20.143 / 1.000 / 0.885",
    ("cnn-small", "svd", "0.75"): "69.643 / 0.000 / 0.426",
    ("cnn-small", "svd", "0.9"): "83.714 / 0.000 / 0.255",
    ("mlp", "svd", "0.25"): "0.385 / 1.000 / 0.973",
    ("mlp", "svd", "0.5"): "5.760 / 1.000 / 0.966",
    ("mlp", "svd", "0.75"): "48.423 / 0.077 / 0.953",
    ("mlp", "svd", "0.9"): "83.760 / 0.000 / 0.157",
    ("cnn-small", "adv-overwrite", ""): "17.842 / 1.000 / 0.983",
    ("mlp", "adv-overwrite", ""): "27.741 / 1.000 / 0.972",
}


def frontier_stitching(rows: list[Row]) -> list[str]:
    experiments = (
        ("table-1-pruning", "prune", "rate"),
        ("table-2-svd", "svd", "rate"),
        ("table-3-overwriting", "adv-overwrite", "lr"),  # at the training rate and a tenth of it
    )
    fp = select(rows, "false-positives")
    lines = []
    for net in ("cnn-small", "mlp"):  # the leaked model as it is: the key of the tables (ε = 0.25, control null)
        rs = select(
            fp, config__victim__arch=net, config__scheme__params__eps="0.25", config__scheme__params__null="control"
        )
        lines.append(
            [
                net,
                "none",
                "—",
                mean_std(rs, "suspect_metrics.hamming_distance", digits=1),
                count_true(rs, "suspect_metrics.paper_detected"),
                detected(rs),
                worst_p(rs),
                mean_std(rs, "suspect_acc", digits=3),
            ]
        )
    for experiment, attack, setting in experiments:
        exp_rows = select(rows, experiment)
        column = f"config.removals[0].params.{setting}"
        values_ = sorted(
            {r.get(column, "") for r in exp_rows}, key=lambda v: -float(v) if setting == "lr" else float(v)
        )
        for net in ("cnn-small", "mlp"):
            for value in values_:
                rs = select(exp_rows, config__victim__arch=net, **{column: value})
                label = f"{attack} {value}" if setting == "rate" else f"{attack}, lr {float(value):g}"
                lines.append(
                    [
                        net,
                        label,
                        FRONTIER_PAPER.get((net, attack, value if setting == "rate" else ""), "—"),
                        mean_std(rs, "suspect_metrics.hamming_distance", digits=1),
                        count_true(rs, "suspect_metrics.paper_detected"),
                        detected(rs),
                        worst_p(rs),
                        mean_std(rs, "suspect_acc", digits=3),
                    ]
                )
    leaked = [r for e, *_ in experiments for r in select(rows, e)]
    out = [
        "**Tables 1-3** (the leaked model itself, laundered; |K| = 100, ε = 0.25; paper: MNIST, Keras CNN and MLP, "
        "30 markings; ours: Fashion-MNIST, cnn-small and mlp, 5 seeds). Paper cells: key elements removed / "
        "extraction rate (share of markings still detected at p < 0.05 under its null) / accuracy after. Ours: key "
        "errors (mean ± std), detected under the paper's null and under copycatch's exact control null (α = 0.05), "
        f"accuracy after. Innocent models accused (control null): {accused(leaked)}.",
        "",
        table(
            ["net", "attack", "paper", "key errors", "paper's null", "exact null", "p (worst seed)", "acc after"],
            lines,
        ),
    ]
    fp_lines = []
    for eps in ("0.025", "0.1", "0.25", "0.5"):
        for null in ("paper", "control"):
            rs = select(fp, config__scheme__params__eps=eps, config__scheme__params__null=null)
            models = [("clean_p", "clean"), ("innocent_p", "innocent")]
            fp_lines.append(
                [eps, null, detected(rs, "victim_p")]
                + [f"{accused(rs, col)} (min p {best_p(rs, col)})" for col, _ in models]
            )
    out += [
        "",
        "**§4.3 / Figure 6, false positives** (unmarked models checked against keys made with each ε; paper: false "
        "positives at ε = 0.025 and 0.1 in some scenarios, none at 0.5, no rates given). Counted over both "
        "architectures × 5 seeds at α = 0.05: the owner's clean model (the unmarked model the key was cut from) and "
        "an innocent model trained on the thief's data.",
        "",
        table(["ε", "null", "marked model detected", "clean models accused", "innocent models accused"], fp_lines),
    ]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# DynaMarks (Chakraborty et al. 2022): Table I and Figures 1-2
# ---------------------------------------------------------------------------------------------------------------------

DYNAMARKS_TABLE_I = {  # Fashion-MNIST row: (δ_org, δ_alt, η)
    "averaging": (45.32, 17.99, 2.52),
    "prune": (41.83, 16.03, 2.61),
    "different architecture": (73.72, 28.71, 2.57),
}


def dynamarks(rows: list[Row]) -> list[str]:
    t1 = "table-1"
    lines = {
        "averaging": select(rows, t1, config__extraction__name="averaging"),
        "prune": select(rows, t1, config__extraction__arch="cnn-small", config__extraction__name="soft-label"),
        "different architecture": select(rows, t1, config__extraction__arch="resnet18"),
    }
    every = [r for rs in lines.values() for r in rs]
    out = [
        "**Table I** (Fashion-MNIST). Paper: F_org 90.72 %, F_alt 90.72 %; ours: clean "
        f"{pct(every, 'clean_acc')} %, through the perturbed API {pct(every, 'victim_acc')} %. The paper decides "
        "η > τ = 1; copycatch's exact permutation test gives the p-value (α = 1e-3).",
        "",
    ]
    body = []
    for name, rs in lines.items():
        d_org, d_alt, eta = DYNAMARKS_TABLE_I[name]
        body.append(
            [
                name,
                f"{d_org} / {d_alt} / **{eta}**",
                f"{mean_std(rs, 'suspect_metrics.delta_org', digits=2)} / "
                f"{mean_std(rs, 'suspect_metrics.delta_alt', digits=2)} / "
                f"**{mean_std(rs, 'suspect_metrics.eta', digits=2)}**",
                pct(rs, "suspect_acc"),
                count_true(rs, "suspect_metrics.paper_detected"),
                worst_p(rs),
                detected(rs),
                mean_std(rs, "innocent_stat", digits=2),
            ]
        )
    out.append(
        table(
            [
                "attack",
                "paper δ_org / δ_alt / η",
                "ours δ_org / δ_alt / η",
                "surrogate acc %",
                "η > 1 (paper's rule)",
                "p (worst seed)",
                "p ≤ α",
                "innocent η",
            ],
            body,
        )
    )
    for experiment, column, symbol, values_, paper in (
        (
            "fig-1-data-fraction",
            "config.extraction.params.data_fraction",
            "γ",
            ("0.1", "0.25", "0.5", "0.75", "1.0"),
            "Figure 1** (η against the thief's share γ of the training data; paper: η > τ at every γ, a benign model "
            "trained on half the data η = 0.19).",
        ),
        (
            "fig-2-pruning",
            "config.removals[0].params.rate",
            "κ",
            ("0.1", "0.2", "0.3", "0.4", "0.5"),
            "Figure 2** (η against the pruning rate κ of the surrogate; paper: η > τ at every κ, at κ = 50 % accuracy "
            "−11.17 points and η = 2.11).",
        ),
    ):
        lines = []
        for v in values_:
            rs = select(rows, experiment, **{column: v})
            lines.append(
                [
                    v,
                    mean_std(rs, "suspect_metrics.eta", digits=2),
                    pct(rs, "suspect_acc"),
                    count_true(rs, "suspect_metrics.paper_detected"),
                    worst_p(rs),
                    detected(rs),
                ]
            )
        out += [
            "",
            "**" + paper,
            "",
            table([symbol, "η", "surrogate acc %", "η > 1", "p (worst seed)", "p ≤ α"], lines),
        ]
    return out


# ---------------------------------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[list[Row]], list[str]]] = {
    "margin": margin,
    "feature-sharing": feature_sharing,
    "mea-defender": mea_defender,
    "frontier-stitching": frontier_stitching,
    "dynamarks": dynamarks,
    "margin-mixup": margin_mixup,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--papers", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    args = parser.parse_args(argv)
    for paper in args.papers:
        rows = load(paper)
        print(f"### {paper}\n")
        if rows is None:
            print(f"not run: `make reproduce PAPER={paper}` writes benchmarks/results/{paper}/\n")
            continue
        grid = rows[0]["grid"]
        scale = f"{rows[0]['config.data.max_train']} training images"
        cells = len({r["cell_id"] for r in rows})
        print(f"Grid `{grid}` ({cells} cells, {seeds(rows)} seeds, {scale}); {_wall(rows)}.\n")
        print("\n".join(sections_of(paper, rows)) + "\n")
    return 0


def sections_of(paper: str, rows: list[Row]) -> list[str]:
    return SECTIONS[paper](rows)


def _wall(rows: list[Row]) -> str:
    cpu = sum(values(_one_per_cell(rows), "cpu_seconds_cell"))
    return f"{cpu / 60:.0f} CPU-minutes in cells" if math.isfinite(cpu) else "time not recorded"


if __name__ == "__main__":
    sys.exit(main())
