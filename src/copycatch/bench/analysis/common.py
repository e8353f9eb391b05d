"""What every study shares: its configuration, the models it looks at (cached), and its result."""

from __future__ import annotations

import copy
import csv
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from ...attacks.steal import steal
from ...core.errors import InvalidArgument
from ...core.key import Key
from ...core.params import Params
from ...data.base import Splits, load_splits
from ...models.base import Classifier
from ...models.train import TrainConfig, train_model
from ...oracles.local import ModelOracle
from ...schemes import SCHEMES, embed_scheme, protect_oracle
from ..cache import ArtifactCache, timed
from ..grid import THIEF_SEED_OFFSET, config_hash


@dataclasses.dataclass(frozen=True)
class StudyConfig(Params):
    """The models a study looks at: a victim watermarked with ``scheme``, its clean twin, and a surrogate stolen
    through the victim's API with ``thief`` (soft labels unless told otherwise) on the attacker pool.

    Defaults are CPU-sized (Fashion-MNIST, 6,000 owner images, cnn-small, 5 epochs, 5,000 thief queries); a study
    that averages over seeds runs ``seeds`` of them. Models are cached under ``cache_dir`` by their configuration.
    """

    kind: ClassVar[str] = "study"
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    max_train: int = 10_000
    arch: str = "cnn-small"
    epochs: int = 5
    scheme: str = "margin"
    scheme_params: dict = dataclasses.field(default_factory=dict)
    thief: str = "soft-label"
    thief_arch: str = "cnn-small"
    thief_epochs: int = 5
    thief_queries: int = 5_000
    seeds: tuple[int, ...] = (0,)
    cache_dir: str = ".copycatch-cache/analysis"
    device: str = "cpu"

    def validate(self) -> None:
        if self.max_train < 100:
            raise InvalidArgument(f"max_train must be >= 100, got {self.max_train}")
        if self.epochs < 1 or self.thief_epochs < 1:
            raise InvalidArgument(f"epochs must be >= 1, got {self.epochs} and thief_epochs {self.thief_epochs}")
        if self.thief_queries < 1:
            raise InvalidArgument(f"thief_queries must be >= 1, got {self.thief_queries}")
        if not self.seeds:
            raise InvalidArgument("seeds must name at least one seed")
        if self.scheme not in SCHEMES:
            raise InvalidArgument(f"unknown scheme {self.scheme!r}; schemes: {', '.join(SCHEMES.list())}")


@dataclasses.dataclass
class StudyModels:
    """One seed's models: ``clean`` (no watermark), ``victim`` and its ``key``, and the thief's ``surrogate``."""

    seed: int
    splits: Splits
    clean: Classifier
    victim: Classifier
    key: Key
    surrogate: Classifier


@dataclasses.dataclass
class StudyResult:
    """What a study wrote: the CSV behind the figure, the PNG (None without matplotlib) and a short summary."""

    study: str
    csv: Path
    png: Path | None
    rows: int
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


def study_models(config: StudyConfig, seed: int, *, scheme_params: dict | None = None) -> StudyModels:
    """The clean model, the victim and the surrogate of one seed, trained once and then read from the cache.

    ``scheme_params`` overrides ``config.scheme_params`` (a study that sweeps a scheme parameter, e.g. the layer
    the watermark is embedded in, asks for one victim per value)."""
    params = dict(config.scheme_params if scheme_params is None else scheme_params)
    splits = load_splits(config.dataset, seed=seed, data_dir=config.data_dir, max_train=config.max_train)
    cache = ArtifactCache(config.cache_dir)
    owner = TrainConfig(epochs=config.epochs, seed=seed, device=config.device)
    data = {"dataset": config.dataset, "max_train": config.max_train, "seed": seed}
    clean_spec = {"data": data, "arch": config.arch, "train": owner.to_dict()}
    victim_spec = {**clean_spec, "scheme": config.scheme, "params": params}
    thief_spec = {
        "victim": victim_spec,
        "thief": config.thief,
        "arch": config.thief_arch,
        "epochs": config.thief_epochs,
        "queries": config.thief_queries,
    }

    clean, _, _, _ = cache.get_or_build(
        "clean",
        config_hash(clean_spec),
        timed(lambda: train_model(config.arch, splits, config=owner, progress=False)),
        device=config.device,
    )

    def embed():
        base = copy.deepcopy(clean) if SCHEMES.get(config.scheme).factory.pretrain else None
        embedding = embed_scheme(
            config.scheme,
            splits,
            arch=None if base is not None else config.arch,
            model=base,
            params=params,
            config=owner,
            progress=False,
            reference=clean,
            max_cost=None,
            key_seed=f"{seed:064x}",  # reproducible keys: a study is an experiment, not a protection
        )
        return embedding.victim, embedding.key

    victim, key, _, _ = cache.get_or_build("victim", config_hash(victim_spec), timed(embed), device=config.device)

    def extract():
        thief_train = TrainConfig(epochs=config.thief_epochs, seed=seed + THIEF_SEED_OFFSET, device=config.device)
        api = protect_oracle(ModelOracle(victim, name="victim API"), key)
        pool = splits.attacker_pool
        result = steal(
            api,
            pool.subset(range(min(config.thief_queries, len(pool)))),
            attack=config.thief,
            arch=config.thief_arch,
            config=thief_train,
            class_names=splits.class_names,
            progress=False,
        )
        return result.surrogate, None, {"queries": result.queries}

    surrogate, _, _, _ = cache.get_or_build("surrogate", config_hash(thief_spec), timed(extract), device=config.device)
    return StudyModels(seed, splits, clean, victim, key, surrogate)


NO_PLOT = "figure skipped: matplotlib is not installed (pip install 'copycatch[report]')"


def write_csv(
    output: str | Path, study: str, columns: tuple[str, ...], rows: list[dict[str, Any]]
) -> tuple[Path, Path]:
    """Write ``output/<study>.csv`` (the folder created); return its path and the PNG's, ``output/<study>.png``."""
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path = folder / f"{study}.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return csv_path, folder / f"{study}.png"


def draw(png: Path, notes: list[str], plot: Callable[[Any, Path], None]) -> Path | None:
    """``plot(plt, png)`` draws the study's figure into ``png`` and the path is returned; without matplotlib nothing
    is drawn, :data:`NO_PLOT` joins ``notes`` and None is returned (the CSV alone stands)."""
    plt = pyplot()
    if plt is None:
        notes.append(NO_PLOT)
        return None
    plot(plt, png)
    return png


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or None without the ``report`` extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
