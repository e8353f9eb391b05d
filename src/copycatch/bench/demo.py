"""``copycatch demo``: the product's main job, end to end, on Fashion-MNIST (or the text or audio stand-in).

1. the owner trains a clean model and protects the same model as ``copycatch protect`` does: a watermark in the
   weights and DynaMarks on the served answers, two independent keys in one key set. Images: the margin watermark
   (its strength from the data size). Text and audio (``modality``): MEA-Defender (Lv et al., "MEA-Defender: A
   Robust Watermark against Model Extraction Attack", IEEE S&P 2024, Table 1: a single-layer LSTM on AG News, M5 on
   Speech Commands), on the offline stand-ins ``wordnet-topics`` and ``spoken-keywords`` (``copycatch data
   prepare``);
2. a thief steals the victim through its protected prediction API, on its own data, with a surrogate architecture
   of its choosing: soft-label extraction for images; for text and audio the paper's attack, Hinton distillation
   at T = 20, into another architecture (LSTM → Kim's CNN, log-mel CNN → M5). The image API is the in-process
   oracle with the key set's API-time protection; the text and audio API is `copycatch serve`'s app on a local port
   (token ids and float clips as JSON), which applies the same protection server-side;
3. an innocent party trains its own model on the same thief data with true labels;
4. the owner verifies victim, surrogate, innocent model and the clean model against the key set, exactly as
   ``copycatch verify`` does (each part sequentially, Fisher's method over the independent parts), and prints one
   table with accuracies, each part's exact p-value, the combined p-value and the verdict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..attacks.steal import steal
from ..core.errors import InvalidArgument
from ..core.params import Params
from ..data.base import MODALITIES, load_splits
from ..models.base import create_for
from ..models.io import save_model
from ..models.train import TrainConfig, accuracy, agreement, train_model
from ..oracles.base import Oracle
from ..oracles.http import HttpOracle
from ..oracles.local import ModelOracle
from ..schemes.protection import protect_model, protect_oracle
from ..verification.session import verify_suspect

# per modality, what the demo uses where its configuration leaves None: the data set, the owner's and the thief's
# architectures, the watermark, the extraction attack, the epochs of the owner and of the thief and innocent party,
# the learning rate, and the architectures' sizes (CPU-sized: the text and audio stories fit in 10 minutes on 2
# cores; at the default 1e-3 the LSTM and the CNNs need twice the epochs for the same accuracy)
MODALITY_DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {
        "data": "fashion-mnist",
        "arch": "cnn-small",
        "surrogate_arch": "mlp",
        "watermark": "margin",
        "attack": "soft-label",
        "epochs": 10,
        "surrogate_epochs": 20,
        "lr": 1e-3,
        "http": False,
    },
    "text": {
        "data": "wordnet-topics",
        "arch": "lstm",
        "surrogate_arch": "text-cnn",
        "watermark": "mea-defender",
        "attack": "distillation",
        "epochs": 12,
        "surrogate_epochs": 8,
        "lr": 3e-3,
        # twice the scheme's L_com weight: the victim's source texts then carry more target probability for a thief
        # to copy
        "watermark_params": {"com_weight": 0.05},
        "http": True,
        "http_batch": 256,
        "arch_kwargs": {"lstm": {"embed_dim": 64, "hidden": 64}, "text-cnn": {"embed_dim": 64, "channels": 32}},
    },
    "audio": {
        "data": "spoken-keywords",
        "arch": "logmel-cnn",
        "surrogate_arch": "m5",
        "watermark": "mea-defender",
        "attack": "distillation",
        # in 8 epochs the log-mel CNN does not yet tell the secret merge from other mixtures of the keywords
        "epochs": 16,
        "surrogate_epochs": 12,
        "lr": 3e-3,
        "http": True,
        "http_batch": 32,  # 32 one-second clips as JSON lists are about 5 MB, under the server's 32 MiB body cap
        "arch_kwargs": {"m5": {"width": 16}, "logmel-cnn": {"width": 16}},
    },
}


@dataclasses.dataclass(frozen=True)
class DemoConfig(Params):
    """The demo's settings; None takes the modality's value from :data:`MODALITY_DEFAULTS` (see :meth:`resolved`)."""

    kind = "demo"
    modality: str = "image"
    data: str | None = None
    data_dir: str | None = None
    out: str = "demo-out"
    seed: int = 0
    device: str = "cpu"
    arch: str | None = None
    surrogate_arch: str | None = None
    epochs: int | None = None
    surrogate_epochs: int | None = None
    lr: float | None = None
    budget: int | None = None
    max_train: int | None = None
    alpha: float = 1e-3
    # watermark parameters over the modality's (MODALITY_DEFAULTS) and the scheme's defaults
    scheme_params: dict = dataclasses.field(default_factory=dict)

    def validate(self) -> None:
        if self.modality not in MODALITIES:
            raise InvalidArgument(f"unknown demo modality {self.modality!r}; valid: {', '.join(MODALITIES)}")
        epochs = [e for e in (self.epochs, self.surrogate_epochs) if e is not None]
        if any(e < 1 for e in epochs):
            raise InvalidArgument(f"demo epochs must be >= 1, got {self.epochs}/{self.surrogate_epochs}")
        if self.lr is not None and not self.lr > 0:
            raise InvalidArgument(f"demo learning rate must be positive, got lr={self.lr}")

    def resolved(self) -> DemoConfig:
        """This configuration with the modality's defaults where it says None."""
        defaults = MODALITY_DEFAULTS[self.modality]
        fields = ("data", "arch", "surrogate_arch", "epochs", "surrogate_epochs", "lr")
        resolved = self.replace(**{f: defaults[f] for f in fields if getattr(self, f) is None})
        return resolved.replace(scheme_params={**defaults.get("watermark_params", {}), **self.scheme_params})

    @property
    def watermark(self) -> str:
        return MODALITY_DEFAULTS[self.modality]["watermark"]

    @property
    def attack(self) -> str:
        return MODALITY_DEFAULTS[self.modality]["attack"]

    @property
    def http(self) -> bool:
        """Whether the thief steals over HTTP from `copycatch serve`'s app (text and audio) or in process (images)."""
        return MODALITY_DEFAULTS[self.modality]["http"]

    def arch_kwargs(self, arch: str) -> dict[str, Any]:
        """The demo's size for ``arch`` (empty: the architecture's defaults)."""
        return dict(MODALITY_DEFAULTS[self.modality].get("arch_kwargs", {}).get(arch, {}))


def run_demo(cfg: DemoConfig | None = None, *, progress: bool | None = None, echo: bool = True) -> dict[str, Any]:
    """Run the story; print it stage by stage (``echo``) and return the report written to ``demo-results.json``."""
    cfg = (cfg or DemoConfig()).resolved()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    say = print if echo else (lambda *a, **k: None)
    t0 = time.perf_counter()
    splits = load_splits(cfg.data, seed=cfg.seed, data_dir=cfg.data_dir, max_train=cfg.max_train)
    if splits.modality != cfg.modality:
        raise InvalidArgument(f"the {cfg.modality} demo needs {cfg.modality} data; {cfg.data!r} is {splits.modality}")
    say(f"data: {cfg.data} ({splits.modality}), split {splits.summary()}")
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
        # a text model's file carries the vocabulary its ids come from (the surrogate's: the victim's, see steal)
        save_model(model, out / f"{name}.safetensors", vocabulary=getattr(model, "vocabulary", splits.vocabulary))
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
    wrong = splits.num_classes - 1
    if cfg.watermark == "margin" and _ranked(rows):
        null = (
            f"margin: each trigger's secret label is one of its {wrong} wrong classes drawn uniformly, so its rank "
            f"among them in the suspect's scores is uniform on 1..{wrong} (rank: its mean over the triggers, 1 = the "
            f"suspect's top wrong class, {(wrong + 1) / 2:g} expected under the null; exact randomisation test)"
        )
    elif cfg.watermark == "margin":
        null = f"margin trigger hits among misclassified ~ Binomial(m, 1/{wrong})"
    else:
        null = (
            "MEA-Defender: the target answered on true watermarks no more often than on some false-watermark group "
            "(the largest one-sided Fisher exact p-value)"
        )
    say(
        f"thief spent {models['queries']} queries; nulls: {null}; DynaMarks: the secret is one uniform draw among "
        "all possible ones; combined: Fisher's method over the two independent keys"
    )
    say(f"wall time {wall:.0f}s; models, key and evidence in {out}/")
    return report


def _story(cfg: DemoConfig, splits: Any, stage: Any, progress: bool | None, say: Any) -> dict:
    """The owner's clean and protected models, the thief's surrogate, the innocent party's model."""
    owner_cfg = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, device=cfg.device)
    clean = stage(
        "owner trains a clean model",
        lambda: train_model(cfg.arch, splits, config=owner_cfg, progress=progress, **cfg.arch_kwargs(cfg.arch)),
    )
    protection = stage(
        f"owner protects the model: {cfg.watermark} watermark in the weights, DynaMarks on the API",
        lambda: protect_model(
            splits,
            watermark=cfg.watermark,
            watermark_params=cfg.scheme_params,
            api="dynamarks",
            model=create_for(cfg.arch, splits, seed=owner_cfg.seed, **cfg.arch_kwargs(cfg.arch)),
            config=owner_cfg,
            progress=progress,
            reference=clean,  # the demo prints the cost against its clean model itself
            max_cost=None,
        ),
    )
    say(_watermark_line(cfg, protection.keyset.keys[0]))
    # the served model reads the owner's vocabulary: the thief's texts are encoded with it (attacks.steal)
    protection.victim.vocabulary = splits.vocabulary
    thief_cfg = TrainConfig(epochs=cfg.surrogate_epochs, lr=cfg.lr, seed=cfg.seed + 1, device=cfg.device)
    # a text API taking token ids publishes its vocabulary: the thief knows its size
    known = {"vocab_size": len(splits.vocabulary)} if splits.vocabulary is not None else {}
    with _victim_api(cfg, protection) as (api, where):
        stolen = stage(
            f"thief steals the victim through its API {where} ({cfg.attack} into a {cfg.surrogate_arch})",
            lambda: steal(
                api,
                splits.attacker_pool,
                attack=cfg.attack,
                arch=cfg.surrogate_arch,
                budget=cfg.budget,
                config=thief_cfg,
                arch_kwargs={**cfg.arch_kwargs(cfg.surrogate_arch), **known},
                progress=progress,
            ),
        )
    stolen.surrogate.vocabulary = splits.vocabulary
    innocent_cfg = TrainConfig(epochs=cfg.surrogate_epochs, lr=cfg.lr, seed=cfg.seed + 2, device=cfg.device)
    innocent = stage(
        "an innocent party trains on the same data with true labels",
        lambda: train_model(
            cfg.surrogate_arch,
            splits,
            on="attacker_pool",
            config=innocent_cfg,
            progress=progress,
            **cfg.arch_kwargs(cfg.surrogate_arch),
        ),
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


@contextlib.contextmanager
def _victim_api(cfg: DemoConfig, protection: Any) -> Iterator[tuple[Oracle, str]]:
    """(the victim's API as the thief sees it, where it is): `copycatch serve`'s app on a local port, the key set's
    API-time protection applied by the server, for text and audio; the same protection in process for images."""
    if not cfg.http:
        yield protect_oracle(ModelOracle(protection.victim, name="victim API"), protection.keyset), "in process"
        return
    from ..serve import ServeConfig, create_app, serve_in_thread

    app = create_app(protection.victim, ServeConfig(), key=protection.keyset)
    with serve_in_thread(app) as url:
        victim = protection.victim
        batch = MODALITY_DEFAULTS[cfg.modality]["http_batch"]
        yield HttpOracle(url, num_classes=victim.num_classes, input_shape=victim.input_shape, batch_size=batch), url


def _watermark_line(cfg: DemoConfig, key: Any) -> str:
    """One line naming the watermark's parameters that matter (λ for margin; classes and rule for MEA-Defender)."""
    if cfg.watermark == "margin":
        shown = {k: key.params[k] for k in ("lam", "ascent", *cfg.scheme_params) if k in key.params}
        listed = ", ".join(f"{k}={v}" for k, v in shown.items())
        return f"watermark: margin {listed} (λ from the data size unless given)"
    p = key.params
    families = p.get("false_families") or ("other rule", "shared class", "other pair")
    controls = {
        "other rule": "the sources by " + ", ".join(m for m in p["evasion_mixers"] if m != p["rule"]),
        "shared class": "a source with another class",
        "other pair": "other class pairs",
    }
    return (
        f"watermark: mea-defender, classes {p['source_a']} + {p['source_b']} → {p['target']} by {p['rule']} "
        f"(false watermarks: {'; '.join(controls[f] for f in families)})"
    )


def _verdict_row(role: str, model: Any, victim: Any, keyset: Any, splits: Any, alpha: float) -> dict[str, Any]:
    """Verify ``model`` the way ``copycatch verify`` does (sequential, transcript in memory) and tabulate it."""
    run = verify_suspect(model, [keyset], alpha=alpha)
    mark, api = run.evidences
    row = {
        "model": role,
        "arch": model.arch,
        "test_accuracy": accuracy(model, splits.test),
        "agreement_with_victim": agreement(model, victim, splits.test.x),
        "watermark": mark.scheme,
        "watermark_statistic": mark.statistic,
        "watermark_p_value": mark.p_value,
        "queries": mark.queries + api.queries,
        "dynamarks_p_value": api.p_value,
        "p_value": run.combined.p_value,
        "combination": run.combined.method,
        "verdict": run.verdict,
        "evidence": [e.to_dict() for e in run.evidences],
    }
    if mark.scheme == "margin":
        row.update(hits=mark.metrics["successes"], misclassified=mark.metrics["counted"], margin_p_value=mark.p_value)
        # present when the suspect answered scores: its p-value is then the rank test's, not the hit count's
        row["secret_rank_mean"] = mark.metrics.get("secret_rank_mean")
    return row


def _ranked(rows: list[dict[str, Any]]) -> bool:
    """Whether every margin row was tested by the rank of its secret labels (the suspects answered scores)."""
    return all(r.get("secret_rank_mean") is not None for r in rows)


def format_table(rows: list[dict[str, Any]], *, alpha: float) -> str:
    margin = all(r["watermark"] == "margin" for r in rows)
    ranked = margin and _ranked(rows)
    # margin: the secret labels' mean rank among the wrong classes (scores) or trigger hits among misclassified
    # triggers (labels); MEA-Defender: the watermark success rate (WSR)
    mark_name = ("rank" if ranked else "hits/m") if margin else "WSR"
    mark_header = f"{mark_name:>8}{'margin p' if margin else 'MEA p':>10}"
    header = (
        f"{'model':<36}{'arch':<11}{'test acc':>9}{'agree':>7}{mark_header}{'DynaMarks p':>12}"
        f"{'combined p':>11}{'queries':>8}  verdict (α={alpha:g})"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        if ranked:
            mark = f"{r['secret_rank_mean']:.2f}"
        elif margin:
            mark = f"{r['hits']}/{r['misclassified']}"
        else:
            mark = f"{r['watermark_statistic']:.3f}"
        lines.append(
            f"{r['model']:<36}{r['arch']:<11}{r['test_accuracy']:>9.4f}{r['agreement_with_victim']:>7.3f}"
            f"{mark:>8}{r['watermark_p_value']:>10.1e}"
            f"{r['dynamarks_p_value']:>12.1e}{r['p_value']:>11.1e}{r['queries']:>8}  {r['verdict'].upper()}"
        )
    return "\n".join(lines)
