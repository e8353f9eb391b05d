"""``copycatch demo``: the product's main job, end to end, on Fashion-MNIST.

1. the owner trains a clean model and protects the same model as ``copycatch protect`` does: a margin
   watermark in the weights (its strength from the data size) and DynaMarks on the served answers, two
   independent keys in one key set;
2. a thief steals the victim through its protected prediction API (soft-label extraction on the thief's own
   data, a surrogate architecture of the thief's choosing);
3. an innocent party trains its own model on the same thief data with true labels;
4. the owner verifies victim, surrogate, innocent model and the clean model against the key set, exactly as
   ``copycatch verify`` does (each part sequentially, Fisher's method over the independent parts), and prints one
   table with accuracies, each part's exact p-value, the combined p-value and the verdict.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from ..attacks.steal import steal
from ..core.errors import InvalidArgument
from ..core.params import Params
from ..data.base import load_splits
from ..models.io import save_model
from ..models.train import TrainConfig, accuracy, agreement, train_model
from ..oracles.local import ModelOracle
from ..schemes.protection import protect_model, protect_oracle
from ..verification.session import verify_suspect


@dataclasses.dataclass(frozen=True)
class DemoConfig(Params):
    kind = "demo"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    out: str = "demo-out"
    seed: int = 0
    device: str = "cpu"
    arch: str = "cnn-small"
    surrogate_arch: str = "mlp"
    epochs: int = 10
    surrogate_epochs: int = 20
    budget: int | None = None
    max_train: int | None = None
    alpha: float = 1e-3
    scheme_params: dict = dataclasses.field(default_factory=dict)  # margin parameters over the scheme's defaults

    def validate(self) -> None:
        if self.epochs < 1 or self.surrogate_epochs < 1:
            raise InvalidArgument(f"demo epochs must be >= 1, got {self.epochs}/{self.surrogate_epochs}")


def run_demo(cfg: DemoConfig | None = None, *, progress: bool | None = None, echo: bool = True) -> dict[str, Any]:
    """Run the story; print it stage by stage (``echo``) and return the report written to ``demo-results.json``."""
    cfg = cfg or DemoConfig()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if echo else (lambda *a, **k: None)
    t0 = time.perf_counter()
    splits = load_splits(cfg.data, seed=cfg.seed, data_dir=cfg.data_dir, max_train=cfg.max_train)
    say(f"data: {cfg.data}, split {splits.summary()}")
    timings: dict[str, float] = {}

    def stage(name: str, fn: Any) -> Any:
        start = time.perf_counter()
        say(f"[{time.perf_counter() - t0:6.1f}s] {name} …", flush=True)
        value = fn()
        timings[name] = round(time.perf_counter() - start, 1)
        return value

    models = _story(cfg, splits, stage, progress, say)
    victim, keyset = models["victim (protected)"], models["keyset"]
    rows = [_verdict_row(role, model, victim, keyset, splits, cfg.alpha) for role, model in models["suspects"]]
    wall = time.perf_counter() - t0
    for name, model in models["files"].items():
        save_model(model, out / f"{name}.safetensors")
    keyset.save(out / "victim.cckeys")
    report = {
        "config": cfg.to_dict(),
        "split": splits.summary(),
        "queries": models["queries"],
        "timings_s": timings,
        "wall_seconds": round(wall, 1),
        "rows": rows,
    }
    (out / "demo-results.json").write_text(json.dumps(report, indent=2, default=str))
    say("")
    say(format_table(rows, alpha=cfg.alpha))
    say("")
    cost = 100 * (rows[3]["test_accuracy"] - rows[0]["test_accuracy"])
    say(
        f"clean model accuracy {rows[3]['test_accuracy']:.4f} vs watermarked {rows[0]['test_accuracy']:.4f} "
        f"(cost {cost:+.2f} points)"
    )
    say(
        f"thief spent {models['queries']} queries; nulls: margin trigger hits among misclassified ~ "
        f"Binomial(m, 1/{splits.num_classes - 1}); DynaMarks: the secret is one uniform draw among all possible "
        "ones; combined: Fisher's method over the two independent keys"
    )
    say(f"wall time {wall:.0f}s; models, key and evidence in {out}/")
    return report


def _story(cfg: DemoConfig, splits: Any, stage: Any, progress: bool | None, say: Any) -> dict:
    """The owner's clean and protected models, the thief's surrogate, the innocent party's model."""
    owner_cfg = TrainConfig(epochs=cfg.epochs, seed=cfg.seed, device=cfg.device)
    clean = stage(
        "owner trains a clean model", lambda: train_model(cfg.arch, splits, config=owner_cfg, progress=progress)
    )
    protection = stage(
        "owner protects the model: margin watermark in the weights, DynaMarks on the API",
        lambda: protect_model(
            splits,
            watermark="margin",
            watermark_params=cfg.scheme_params,
            api="dynamarks",
            arch=cfg.arch,
            config=owner_cfg,
            progress=progress,
            reference=clean,  # the demo prints the cost against its clean model itself
            max_cost=None,
        ),
    )
    margin_key = protection.keyset.keys[0]
    shown = {k: margin_key.params[k] for k in ("lam", "ascent", *cfg.scheme_params) if k in margin_key.params}
    say(f"watermark: margin {', '.join(f'{k}={v}' for k, v in shown.items())} (λ from the data size unless given)")
    thief_cfg = TrainConfig(epochs=cfg.surrogate_epochs, seed=cfg.seed + 1, device=cfg.device)
    api = protect_oracle(ModelOracle(protection.victim, name="victim API"), protection.keyset)
    stolen = stage(
        "thief steals the victim through its API (soft-label extraction)",
        lambda: steal(
            api, splits.attacker_pool, arch=cfg.surrogate_arch, budget=cfg.budget, config=thief_cfg, progress=progress
        ),
    )
    innocent_cfg = TrainConfig(epochs=cfg.surrogate_epochs, seed=cfg.seed + 2, device=cfg.device)
    innocent = stage(
        "an innocent party trains on the same data with true labels",
        lambda: train_model(cfg.surrogate_arch, splits, on="attacker_pool", config=innocent_cfg, progress=progress),
    )
    suspects = [
        ("victim (protected)", protection.victim),
        ("surrogate (stolen)", stolen.surrogate),
        ("innocent (thief data, true labels)", innocent),
        ("clean (owner, no watermark)", clean),
    ]
    files = {"victim": protection.victim, "surrogate": stolen.surrogate, "innocent": innocent, "clean": clean}
    return {
        "suspects": suspects,
        "files": files,
        "keyset": protection.keyset,
        "queries": stolen.queries,
        "victim (protected)": protection.victim,
    }


def _verdict_row(role: str, model: Any, victim: Any, keyset: Any, splits: Any, alpha: float) -> dict[str, Any]:
    """Verify ``model`` the way ``copycatch verify`` does (sequential, transcript in memory) and tabulate it."""
    run = verify_suspect(model, [keyset], alpha=alpha)
    margin, api = run.evidences
    return {
        "model": role,
        "arch": model.arch,
        "test_accuracy": accuracy(model, splits.test),
        "agreement_with_victim": agreement(model, victim, splits.test.x),
        "hits": margin.metrics["successes"],
        "misclassified": margin.metrics["counted"],
        "queries": margin.queries + api.queries,
        "margin_p_value": margin.p_value,
        "dynamarks_p_value": api.p_value,
        "p_value": run.combined.p_value,
        "combination": run.combined.method,
        "verdict": run.verdict,
        "evidence": [e.to_dict() for e in run.evidences],
    }


def format_table(rows: list[dict[str, Any]], *, alpha: float) -> str:
    header = (
        f"{'model':<36}{'arch':<11}{'test acc':>9}{'agree':>7}{'hits/m':>8}{'margin p':>10}{'DynaMarks p':>12}"
        f"{'combined p':>11}{'queries':>8}  verdict (α={alpha:g})"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['model']:<36}{r['arch']:<11}{r['test_accuracy']:>9.4f}{r['agreement_with_victim']:>7.3f}"
            f"{str(r['hits']) + '/' + str(r['misclassified']):>8}{r['margin_p_value']:>10.1e}"
            f"{r['dynamarks_p_value']:>12.1e}{r['p_value']:>11.1e}{r['queries']:>8}  {r['verdict'].upper()}"
        )
    return "\n".join(lines)
