"""Benchmark grids: a strict YAML schema, expanded into fully resolved cells with content hashes.

A grid file names the axes of an experiment; every combination is a *cell*::

    data set (+ split seed) × victim architecture (+ training) × scheme (+ params)
        × attack chain (extraction (+ params, surrogate arch, budget, post-processors) then removals) × seed

A file holds either one experiment (``schemes``/``attacks`` at the top) or several under ``experiments``,
each inheriting the top-level settings and overriding what it names::

    name: margin-paper                  # required; names the results folder and the report
    description: ...
    seeds: [0, 1, 2]                    # or an int N for 0..N-1
    alpha: 0.001                        # significance level of every decision
    data: {name: fashion-mnist, split_seed: 0, max_train: 20000, fractions: {owner_holdout: 0.05}}
    victim: {arch: cnn-small, train: {epochs: 5}}      # arch default: the scheme's own
    schemes:
      - margin                          # a bare name, or
      - {name: margin, params: {n_triggers: 50}, sweep: {steps: [1, 5]}}
    attacks:
      - extraction: {name: soft-label, arch: mlp, budget: 9000, train: {epochs: 10},
                     post: ["round:decimals=2"], queries: attacker_pool, sweep: {budget: [1000, 9000]}}
        removals: ["prune:rate=0.5", {name: fine-tune, sweep: {epochs: [1, 5]}}]
        removal_labels: oracle          # the removals train on the API's answers (default truth: true labels)
      - extraction: none                # the leaked victim itself, then removals
        removals: [{name: prune, sweep: {rate: [0.25, 0.5]}}]
    innocent: {arch: mlp}               # default: the surrogate's arch and training; null: no innocent model
    experiments:
      - {name: table-2, attacks: [...]}

``sweep`` (on a victim, scheme, extraction, removal or post-processor entry) expands into one entry per
combination of its lists; a key names a field of the entry (``arch``, ``budget``, ``train.epochs``) or else
a parameter. Every name is checked against the registries and every parameter against its typed ``Params``
when the grid loads, so a typo fails at once, naming the bad key and the valid ones.

A cell's id is a hash of its resolved configuration (every default filled in), so the same experiment in
another grid file, or a re-run, finds the same cell. The package version is *not* hashed: results survive
upgrades and record the versions that produced them.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..core.errors import CopycatchError, InvalidArgument

CELL_FORMAT = "copycatch.bench.cell/1"

TOP_KEYS = ("name", "description", "seeds", "alpha", "data", "victim", "schemes", "attacks", "innocent", "experiments")
EXPERIMENT_KEYS = ("name", "description", "seeds", "alpha", "data", "victim", "schemes", "attacks", "innocent")
DATA_KEYS = ("name", "split_seed", "max_train", "fractions")
VICTIM_KEYS = ("arch", "arch_kwargs", "train", "sweep")
SCHEME_KEYS = ("name", "params", "sweep")
CHAIN_KEYS = ("extraction", "removals", "removal_train", "removal_labels")
REMOVAL_LABELS = ("truth", "oracle")  # what the removal chain trains on: the thief's true labels or the API's answers
EXTRACTION_KEYS = ("name", "arch", "arch_kwargs", "budget", "queries", "post", "params", "train", "sweep")
COMPONENT_KEYS = ("name", "params", "sweep")
INNOCENT_KEYS = ("arch", "arch_kwargs", "train")
SPLIT_PARTS = ("attacker_pool", "owner_train", "owner_holdout")
NO_EXTRACTION = ("none", "leaked")

# Seeds of the models a cell trains, derived from its seed so that every model differs but all repeat.
THIEF_SEED_OFFSET, INNOCENT_SEED_OFFSET, REMOVAL_SEED_OFFSET = 1, 2, 3


class GridError(InvalidArgument):
    """A grid file that does not follow the schema; the message names the place, the bad key and the valid ones."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One fully resolved combination; ``config`` is canonical JSON-able data, ``cell_id`` its hash."""

    cell_id: str
    config: dict[str, Any]
    experiments: tuple[str, ...]

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


@dataclasses.dataclass
class Grid:
    name: str
    description: str
    path: str | None
    text: str
    experiments: dict[str, list[Cell]]

    @property
    def cells(self) -> list[Cell]:
        """Every distinct cell once, in first-appearance order (experiments may share cells)."""
        seen: dict[str, Cell] = {}
        for cells in self.experiments.values():
            for cell in cells:
                if cell.cell_id in seen:
                    seen[cell.cell_id] = dataclasses.replace(
                        seen[cell.cell_id],
                        experiments=tuple(dict.fromkeys(seen[cell.cell_id].experiments + cell.experiments)),
                    )
                else:
                    seen[cell.cell_id] = cell
        return list(seen.values())


# ---------------------------------------------------------------------------------------------------------------------
# hashing
# ---------------------------------------------------------------------------------------------------------------------


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def config_hash(obj: Any, *, length: int = 16) -> str:
    return hashlib.sha256((CELL_FORMAT + canonical(obj)).encode()).hexdigest()[:length]


def artifact_specs(config: Mapping[str, Any]) -> dict[str, dict[str, Any] | None]:
    """The part of a cell's config each trained model depends on; equal specs share one cached model."""
    clean = {"kind": "clean", "data": config["data"], "victim": config["victim"], "seed": config["seed"]}
    victim = {**clean, "kind": "victim", "scheme": config["scheme"]}
    surrogate = None
    if config["extraction"] is not None:
        surrogate = {"kind": "surrogate", "victim": victim, "extraction": config["extraction"], "seed": config["seed"]}
    innocent = None
    if config["innocent"] is not None:
        innocent = {"kind": "innocent", "data": config["data"], "innocent": config["innocent"], "seed": config["seed"]}
    return {"clean": clean, "victim": victim, "surrogate": surrogate, "innocent": innocent}


# ---------------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------------


def packaged_grids() -> list[str]:
    """Names of the grids shipped inside the package (``copycatch/bench/grids/NAME.yaml``), sorted."""
    return sorted(p.name.removesuffix(".yaml") for p in _packaged().iterdir() if p.name.endswith(".yaml"))


def load_grid(path: str | Path) -> Grid:
    """Read, validate and expand a grid file (``yaml.safe_load``; nothing in it is executed).

    ``path`` is a grid file, or the name of a grid shipped inside the package (``fmnist-quick``, see
    :func:`packaged_grids`); a file of that name in the working folder wins.
    """
    if Path(path).is_file():
        return parse_grid(Path(path).read_text(encoding="utf-8"), source=str(path))
    name = str(path)
    if name in packaged_grids():
        return parse_grid((_packaged() / f"{name}.yaml").read_text(encoding="utf-8"), source=name)
    raise InvalidArgument(f"{path}: no such grid file, nor a packaged grid ({', '.join(packaged_grids())})")


def _packaged() -> Any:
    from importlib.resources import files

    return files(__package__) / "grids"


def parse_grid(text: str, *, source: str = "<grid>") -> Grid:
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise GridError(f"{source}: not valid YAML{where}: {problem}") from None
    try:
        return _build(raw, text, source)
    except GridError:
        raise
    except CopycatchError as exc:  # a registry or Params error raised without a location
        raise GridError(f"{source}: {exc}") from None


def _build(raw: Any, text: str, source: str) -> Grid:
    top = _mapping(raw, source, TOP_KEYS)
    name = _string(top.get("name"), f"{source}: name")
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise GridError(f"{source}: name {name!r} must use only letters, digits, '-', '_' and '.'")
    description = str(top.get("description") or "").strip()
    if "experiments" in top:
        experiments_raw = top["experiments"]
        if not isinstance(experiments_raw, list) or not experiments_raw:
            raise GridError(f"{source}: experiments must be a non-empty list")
    else:
        experiments_raw = [{"name": "main"}]
    defaults = {k: v for k, v in top.items() if k not in ("name", "description", "experiments")}
    experiments: dict[str, list[Cell]] = {}
    for i, exp_raw in enumerate(experiments_raw):
        where = f"{source}: experiments[{i}]" if "experiments" in top else source
        exp = _mapping(exp_raw, where, EXPERIMENT_KEYS)
        exp_name = _string(exp.get("name"), f"{where}: name")
        if exp_name in experiments:
            raise GridError(f"{where}: experiment name {exp_name!r} is used twice")
        merged = {**defaults, **{k: v for k, v in exp.items() if k not in ("name", "description")}}
        experiments[exp_name] = _expand_experiment(merged, exp_name, where)
    return Grid(name=name, description=description, path=source, text=text, experiments=experiments)


def _expand_experiment(spec: Mapping[str, Any], exp_name: str, where: str) -> list[Cell]:
    for required in ("schemes", "attacks"):
        if required not in spec:
            raise GridError(f"{where}: missing {required!r} (at the top level or in the experiment)")
    seeds = _seeds(spec.get("seeds", [0]), f"{where}: seeds")
    alpha = _alpha(spec.get("alpha", 1e-3), f"{where}: alpha")
    datas = _data_entries(spec.get("data", {"name": "fashion-mnist"}), f"{where}: data")
    scheme_entries = _list(spec["schemes"], f"{where}: schemes")
    schemes = [s for i, e in enumerate(scheme_entries) for s in _schemes(e, f"{where}: schemes[{i}]")]
    victims = _victims(spec.get("victim", {}), f"{where}: victim")
    chains = [
        c
        for i, e in enumerate(_list(spec["attacks"], f"{where}: attacks"))
        for c in _chains(e, f"{where}: attacks[{i}]")
    ]
    innocent_raw = spec.get("innocent", {})
    innocent_spec = (
        None if innocent_raw in (None, False) else _mapping(innocent_raw, f"{where}: innocent", INNOCENT_KEYS)
    )

    cells = []
    for data, victim, scheme, chain, seed in itertools.product(datas, victims, schemes, chains, seeds):
        victim_resolved = dict(victim)
        if victim_resolved["arch"] is None:
            from ..schemes import SCHEMES

            victim_resolved["arch"] = SCHEMES.get(scheme["name"]).factory.default_arch
        extraction = chain["extraction"]
        config = {
            "data": data,
            "victim": victim_resolved,
            "scheme": scheme,
            "extraction": extraction,
            "removals": chain["removals"],
            "removal_train": chain["removal_train"],
            **chain["labels"],
            "innocent": _innocent(innocent_spec, extraction, victim_resolved, f"{where}: innocent"),
            "alpha": alpha,
            "seed": seed,
        }
        cells.append(Cell(config_hash(config), config, (exp_name,)))
    return cells


# ---------------------------------------------------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------------------------------------------------


def _data_entries(raw: Any, where: str) -> list[dict[str, Any]]:
    from ..data.base import DATASETS, SplitFractions

    entries = raw if isinstance(raw, list) else [raw]
    out = []
    for i, entry in enumerate(entries):
        at = f"{where}[{i}]" if isinstance(raw, list) else where
        if isinstance(entry, str):
            entry = {"name": entry}
        m = _mapping(entry, at, DATA_KEYS)
        name = _string(m.get("name", "fashion-mnist"), f"{at}: name")
        if not name.endswith(".npz") and name not in DATASETS:
            raise GridError(
                f"{at}: unknown data set {name!r}; valid data sets: {', '.join(DATASETS.list())} (or a .npz file)"
            )
        split_seed = _int(m.get("split_seed", 0), f"{at}: split_seed", minimum=0)
        max_train = m.get("max_train")
        if max_train is not None:
            max_train = _int(max_train, f"{at}: max_train", minimum=1)
        fractions = _params(SplitFractions, m.get("fractions") or {}, f"{at}: fractions")
        out.append({"name": name, "split_seed": split_seed, "max_train": max_train, "fractions": fractions})
    return out


def _train(raw: Any, where: str) -> dict[str, Any]:
    from ..models.train import TrainConfig

    m = _mapping(
        raw or {},
        where,
        tuple(k for k in TrainConfig.field_names() if k not in ("seed", "device")),
        hint={"seed": "seeds come from the grid's `seeds`", "device": "the device is `copycatch bench --device`"},
    )
    resolved = _params(TrainConfig, m, where)
    return {k: v for k, v in resolved.items() if k not in ("seed", "device")}


def _victims(raw: Any, where: str) -> list[dict[str, Any]]:
    out = []
    for entry, at in _sweep(_mapping(raw or {}, where, VICTIM_KEYS), where, VICTIM_KEYS):
        arch = entry.get("arch")
        if arch is not None:
            _arch(arch, f"{at}: arch")
        out.append(
            {
                "arch": arch,
                "arch_kwargs": _kwargs(entry.get("arch_kwargs"), f"{at}: arch_kwargs"),
                "train": _train(entry.get("train"), f"{at}: train"),
            }
        )
    return out


def _schemes(raw: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(raw, str):
        raw = {"name": raw}
    out = []
    for entry, at in _sweep(_mapping(raw, where, SCHEME_KEYS), where, SCHEME_KEYS):
        from ..schemes import SCHEMES

        name, cls = _registered(SCHEMES, entry, at)
        out.append({"name": name, "params": _params(cls.Params, entry.get("params") or {}, f"{at}: params")})
    return out


def _chains(raw: Any, where: str) -> list[dict[str, Any]]:
    m = _mapping(raw, where, CHAIN_KEYS)
    if "extraction" not in m:
        raise GridError(f"{where}: missing 'extraction' (an attack name, a mapping, or none for the leaked victim)")
    extractions = _extractions(m["extraction"], f"{where}: extraction")
    removal_lists = [
        _components(e, f"{where}: removals[{i}]", "removal")
        for i, e in enumerate(_list(m.get("removals") or [], f"{where}: removals", allow_empty=True))
    ]
    removal_train = _train(m.get("removal_train"), f"{where}: removal_train")
    labels = m.get("removal_labels", "truth")
    if labels not in REMOVAL_LABELS:
        raise GridError(f"{where}: removal_labels must be one of {', '.join(REMOVAL_LABELS)}, got {labels!r}")
    # the default is left out of the cell, so that the ids of cells written before the key existed stay the same
    label_entry = {} if labels == "truth" else {"removal_labels": labels}
    out = []
    for extraction in extractions:
        for removals in itertools.product(*removal_lists):
            out.append(
                {
                    "extraction": extraction,
                    "removals": list(removals),
                    "removal_train": removal_train,
                    "labels": label_entry,
                }
            )
    return out


def _extractions(raw: Any, where: str) -> list[dict[str, Any] | None]:
    from ..attacks.extraction import EXTRACTION_ATTACKS

    if raw is None or (isinstance(raw, str) and raw.lower() in NO_EXTRACTION) or raw is False:
        return [None]
    if isinstance(raw, str):
        raw = {"name": raw}
    out: list[dict[str, Any] | None] = []
    for entry, at in _sweep(_mapping(raw, where, EXTRACTION_KEYS), where, EXTRACTION_KEYS):
        name, cls = _registered(EXTRACTION_ATTACKS, entry, at)
        params = dict(entry.get("params") or {})
        if entry.get("budget") is not None:
            params["budget"] = entry["budget"]
        arch = _string(entry.get("arch", "mlp"), f"{at}: arch")
        _arch(arch, f"{at}: arch")
        queries = _string(entry.get("queries", "attacker_pool"), f"{at}: queries")
        if queries not in SPLIT_PARTS and not queries.endswith(".npz"):
            from ..data.base import DATASETS

            if queries not in DATASETS:
                raise GridError(
                    f"{at}: queries {queries!r} is neither a part of the split ({', '.join(SPLIT_PARTS)}) "
                    f"nor a data set ({', '.join(DATASETS.list())})"
                )
        # a swept post-processor gives one extraction per value (the product over the chain), as removals do
        post_lists = [
            _components(e, f"{at}: post[{i}]", "post")
            for i, e in enumerate(_list(entry.get("post") or [], f"{at}: post", allow_empty=True))
        ]
        resolved = {
            "name": name,
            "params": _params(cls.Params, params, f"{at}: params"),
            "arch": arch,
            "arch_kwargs": _kwargs(entry.get("arch_kwargs"), f"{at}: arch_kwargs"),
            "queries": queries,
            "train": _train(entry.get("train"), f"{at}: train"),
        }
        out += [{**copy.deepcopy(resolved), "post": list(post)} for post in itertools.product(*post_lists)]
    return out


def _components(raw: Any, where: str, kind: str) -> list[dict[str, Any]]:
    """Removal attacks and post-processors: ``"name:k=v"`` or ``{name, params, sweep}``."""
    from ..attacks.removal import REMOVAL_ATTACKS
    from ..core.params import parse_spec
    from ..oracles.postprocess import POSTPROCESSORS

    registry = REMOVAL_ATTACKS if kind == "removal" else POSTPROCESSORS
    if isinstance(raw, str):
        try:
            name, params = parse_spec(raw)
        except CopycatchError as exc:
            raise GridError(f"{where}: {exc}") from None
        raw = {"name": name, "params": params}
    out = []
    for entry, at in _sweep(_mapping(raw, where, COMPONENT_KEYS), where, COMPONENT_KEYS):
        name, cls = _registered(registry, entry, at)
        out.append({"name": name, "params": _params(cls.Params, entry.get("params") or {}, f"{at}: params")})
    return out


def _innocent(
    spec: Mapping[str, Any] | None, extraction: Mapping[str, Any] | None, victim: Mapping[str, Any], where: str
) -> dict[str, Any] | None:
    """The control: a model trained on the attacker pool with true labels (default: shaped like the surrogate)."""
    if spec is None:
        return None
    base = extraction if extraction is not None else victim
    arch = spec.get("arch") or base["arch"]
    _arch(arch, f"{where}: arch")
    if "arch_kwargs" in spec:
        kwargs = _kwargs(spec.get("arch_kwargs"), f"{where}: arch_kwargs")
    else:  # the surrogate's options (a ResNet's width) belong to its architecture, not to another one
        kwargs = base["arch_kwargs"] if arch == base["arch"] else {}
    train = _train(spec["train"], f"{where}: train") if spec.get("train") is not None else base["train"]
    return {"arch": arch, "arch_kwargs": kwargs, "train": train}


# ---------------------------------------------------------------------------------------------------------------------
# sweeps and small validators
# ---------------------------------------------------------------------------------------------------------------------


def _sweep(entry: Mapping[str, Any], where: str, fields: tuple[str, ...]) -> Iterable[tuple[dict[str, Any], str]]:
    """Expand ``sweep: {key: [values]}``: a key names a field (dots reach inside one, ``train.epochs``) or a param."""
    sweep = entry.get("sweep")
    base = {k: copy.deepcopy(v) for k, v in entry.items() if k != "sweep"}
    if sweep is None:
        yield base, where
        return
    if not isinstance(sweep, Mapping) or not sweep:
        raise GridError(f"{where}: sweep must be a non-empty mapping of key → list of values")
    keys = list(sweep)
    for key in keys:
        _key_is_text(key, f"{where}: sweep")
        if not isinstance(sweep[key], list) or not sweep[key]:
            raise GridError(f"{where}: sweep.{key} must be a non-empty list of values")
    for values in itertools.product(*(sweep[k] for k in keys)):
        item = copy.deepcopy(base)
        for key, value in zip(keys, values):
            head = str(key).split(".", 1)[0]
            if head in fields and head not in ("params", "sweep"):
                _set_path(item, str(key), value, where)
            else:
                item.setdefault("params", {})
                if not isinstance(item["params"], dict):
                    raise GridError(f"{where}: params must be a mapping")
                item["params"] = {**item["params"], str(key): value}
        label = ", ".join(f"{k}={v}" for k, v in zip(keys, values))
        yield item, f"{where} (sweep {label})"


def _set_path(item: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    parts = dotted.split(".")
    target = item
    for part in parts[:-1]:
        nxt = target.get(part)
        if nxt is None:
            nxt = target[part] = {}
        if not isinstance(nxt, dict):
            raise GridError(f"{where}: sweep key {dotted!r} reaches into {part!r}, which is not a mapping")
        target[part] = nxt = dict(nxt)
        target = nxt
    target[parts[-1]] = value


def _mapping(
    raw: Any, where: str, allowed: tuple[str, ...], *, hint: Mapping[str, str] | None = None
) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise GridError(f"{where}: expected a mapping with keys {', '.join(allowed)}; got {type(raw).__name__} {raw!r}")
    for key in raw:
        _key_is_text(key, where)
        if key not in allowed:
            why = f" ({hint[key]})" if hint and key in hint else ""
            raise GridError(f"{where}: unknown key {key!r}{why}; valid keys: {', '.join(allowed)}")
    return dict(raw)


def _list(raw: Any, where: str, *, allow_empty: bool = False) -> list[Any]:
    if not isinstance(raw, list):
        raw = [raw]
    if not raw and not allow_empty:
        raise GridError(f"{where}: must not be empty")
    return raw


def _string(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise GridError(f"{where}: expected a non-empty string, got {raw!r}")
    return raw.strip()


def _int(raw: Any, where: str, *, minimum: int | None = None) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise GridError(f"{where}: expected an integer, got {raw!r}")
    if minimum is not None and raw < minimum:
        raise GridError(f"{where}: must be >= {minimum}, got {raw}")
    return raw


def _seeds(raw: Any, where: str) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        if raw < 1:
            raise GridError(f"{where}: a seed count must be >= 1, got {raw}")
        return list(range(raw))
    seeds = [_int(s, where, minimum=0) for s in _list(raw, where)]
    if len(set(seeds)) != len(seeds):
        raise GridError(f"{where}: seeds repeat: {seeds}")
    return seeds


def _alpha(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 < raw < 1:
        raise GridError(f"{where}: alpha must be a number in (0, 1), got {raw!r}")
    return float(raw)


def _kwargs(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise GridError(f"{where}: expected a mapping, got {raw!r}")
    return {str(k): v for k, v in raw.items()}


def _key_is_text(key: Any, where: str) -> None:
    if not isinstance(key, str):
        raise GridError(
            f"{where}: key {key!r} is not a name; YAML reads bare null, true, yes, on … as values, "
            f"so quote such a key ('null': …)"
        )


def _params(cls: Any, raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise GridError(f"{where}: expected a mapping of parameters, got {raw!r}")
    for key in raw:
        _key_is_text(key, where)
    try:
        return cls.from_dict(dict(raw)).to_dict()
    except CopycatchError as exc:
        raise GridError(f"{where}: {exc}") from None
    except TypeError as exc:  # a Params class without defaults for some field
        raise GridError(f"{where}: {exc}") from None


def _arch(name: str, where: str) -> None:
    from ..models.base import MODELS

    if not isinstance(name, str):
        raise GridError(f"{where}: expected an architecture name, got {name!r} (sweep: {{arch: [...]}} for several)")
    if name not in MODELS:
        raise GridError(f"{where}: unknown architecture {name!r}; valid architectures: {', '.join(MODELS.list())}")


def _registered(registry: Any, entry: Mapping[str, Any], where: str) -> tuple[str, Any]:
    """(name, registered class) for an entry's ``name``; an unknown name lists the valid ones."""
    name = _string(entry.get("name"), f"{where}: name")
    try:
        return name, registry.get(name).factory
    except CopycatchError as exc:
        raise GridError(f"{where}: {exc}") from None


def rescale(grid: Grid, *, max_train: int | None = None, epochs_factor: float | None = None) -> Grid:
    """The same grid at a smaller (or larger) scale, for a machine the grid's own scale does not fit.

    ``max_train`` caps every data entry's training images (the split fractions are kept, so the owner's, the
    holdout's and the thief's shares shrink together); ``epochs_factor`` multiplies the epochs of every model a cell
    trains — victim (and its clean reference), surrogate, innocent control and the removal attacks' training
    defaults — rounded, at least 1. Parameters the experiment varies (a fine-tuning attack's ``epochs``, a scheme's
    own schedule) are kept: they are what the table is about. The cells are re-hashed, so a rescaled cell is never
    confused with the full-scale one; the name gains the scale (``margin-paper-n6000-e0.5``) and the recorded grid
    text a line saying how it was derived.
    """
    if max_train is None and epochs_factor is None:
        return grid
    if max_train is not None and (isinstance(max_train, bool) or not isinstance(max_train, int) or max_train < 100):
        raise InvalidArgument(f"max_train must be an integer >= 100, got {max_train!r}")
    if epochs_factor is not None and not 0 < epochs_factor <= 100:
        raise InvalidArgument(f"epochs_factor must be in (0, 100], got {epochs_factor!r}")

    def scaled_train(train: dict[str, Any]) -> None:
        if epochs_factor is not None:
            train["epochs"] = max(1, round(train["epochs"] * epochs_factor))

    def scaled(cell: Cell) -> Cell:
        config = copy.deepcopy(cell.config)
        if max_train is not None:
            cap = config["data"]["max_train"]
            config["data"]["max_train"] = max_train if cap is None else min(cap, max_train)
        for part in (config["victim"], config["extraction"], config["innocent"]):
            if part is not None:
                scaled_train(part["train"])
        scaled_train(config["removal_train"])
        return Cell(config_hash(config), config, cell.experiments)

    # (name suffix, command-line flag) of each scale given
    given = [(f"-n{max_train}", f"--max-train {max_train}")] if max_train is not None else []
    given += [(f"-e{epochs_factor:g}", f"--epochs-factor {epochs_factor:g}")] if epochs_factor is not None else []
    suffix, flags = "".join(s for s, _ in given), " ".join(f for _, f in given)
    return Grid(
        name=grid.name + suffix,
        description=grid.description,
        path=grid.path,
        text=f"{grid.text.rstrip()}\n# rescaled: copycatch bench {flags}\n",
        experiments={name: [scaled(c) for c in cells] for name, cells in grid.experiments.items()},
    )


# ---------------------------------------------------------------------------------------------------------------------
# flattening (reports)
# ---------------------------------------------------------------------------------------------------------------------


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "r": [{"n": 2}]}`` → ``{"a.b": 1, "r[0].n": 2}``; an empty list/dict stays a leaf."""
    out: dict[str, Any] = {}
    if isinstance(config, Mapping) and config:
        for k, v in config.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(config, list) and config and all(isinstance(v, Mapping) for v in config):
        for i, v in enumerate(config):
            out.update(flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = config if not isinstance(config, (list, dict)) else canonical(config)
    return out


def describe_cell(config: Mapping[str, Any]) -> str:
    """One line for logs: ``margin × soft-label(mlp, 9000 q) → prune · seed 0``."""
    extraction = config["extraction"]
    if extraction is None:
        chain = "leaked victim"
    else:
        budget = extraction["params"].get("budget")
        chain = f"{extraction['name']}({extraction['arch']}{f', {budget} q' if budget else ''})"
    removals = "".join(f" → {r['name']}" for r in config["removals"])
    return f"{config['scheme']['name']} on {config['victim']['arch']} × {chain}{removals} · seed {config['seed']}"
