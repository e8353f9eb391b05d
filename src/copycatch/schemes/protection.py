"""The recommended protection stack as one workflow: a training-time watermark and an API-time mark, one key set.

:func:`protect_model` embeds the watermark (:func:`~copycatch.schemes.embedding.embed_scheme`: the mark is in the
victim's weights and survives a leak of the model file), then makes the API-time scheme's key for that watermarked
victim (DynaMarks: nothing is trained, the served probabilities carry the mark, which extraction copies into a
surrogate). The keys are bundled into one :class:`~copycatch.core.keyset.KeySet` that declares them independent,
so verification combines their p-values with Fisher's method (:mod:`copycatch.verification.combine`).

Independence. Each part's secret comes from its own seed: the watermark from the training seed as given (the
victim is the one ``embed`` makes with that seed), part ``i > 0`` from :func:`part_seed`, 63 bits of
SHA-256(``copycatch.protect/<seed>/<i>/<scheme>``). Each scheme draws its secret from its own generator seeded
from its part's seed, and no part's secret is computed from another's, so under the null hypothesis (the suspect
depends on no secret) each p-value ranks its own secret among the possible ones independently of the others.
The API-time key does record the watermarked victim's answers (what it perturbs), which are public to anyone who
queries the model, not a secret.

:func:`protect_oracle` is the API the owner serves: every key's ``scheme.protect`` in order; training-time parts
are the identity. The server, ``steal --protect`` and the benchmark harness all go through it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

from ..core.commitment import keep_seed, sub_seed
from ..core.errors import InvalidArgument
from ..core.key import Key
from ..core.keyset import KeySet, open_keys
from ..data.base import Splits
from ..models.base import Classifier
from ..models.io import weights_digest
from ..models.train import TrainConfig
from ..oracles.base import Oracle
from .base import SCHEMES, create_scheme, scheme_for_key
from .embedding import DEFAULT_MAX_COST, embed_scheme

SEED_RULE = (
    "part 0 (the watermark): the training seed; part i > 0: the first 63 bits of "
    "SHA-256('copycatch.protect/<seed>/<i>/<scheme>')"
)
KEY_SEED_RULE = (
    "secret: part 0 (the watermark) draws its key from the key seed, as embed does; part i > 0 from its own, "
    "SHA-256('copycatch.key-seed.part/<key seed>/protect/<i>/<scheme>'); each part keeps its seed"
)


@dataclasses.dataclass
class Protection:
    """What :func:`protect_model` returns: the watermarked victim (serve it with the key set) and the key set."""

    victim: Classifier
    keyset: KeySet
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def part_seed(seed: int, part: int, scheme: str) -> int:
    """The seed of part ``part > 0`` of a protection made with training seed ``seed`` (see the module docstring)."""
    digest = hashlib.sha256(f"copycatch.protect/{int(seed)}/{int(part)}/{scheme}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def protect_model(
    splits: Splits,
    *,
    watermark: str = "margin",
    watermark_params: dict[str, Any] | None = None,
    api: str | None = "dynamarks",
    api_params: dict[str, Any] | None = None,
    arch: str | None = None,
    model: Classifier | None = None,
    config: TrainConfig | None = None,
    progress: bool | None = None,
    reference: Classifier | None = None,
    max_cost: float | None = DEFAULT_MAX_COST,
    key_seed: str | None = None,
) -> Protection:
    """Watermark a model with ``watermark`` (a training-time scheme) and make the key of ``api`` (an API-time scheme,
    or ``None``/``"none"``) for the watermarked victim; the keys form one key set declared independent. The
    watermark's accuracy cost is measured as :func:`~copycatch.schemes.embedding.embed_scheme` does (``reference``,
    ``max_cost``) and recorded in ``info["accuracy_cost"]``; API-time parts change no weight. With a secret
    ``key_seed`` the parts' random choices come from it (:data:`KEY_SEED_RULE`), else from the training seeds."""
    api = None if api in (None, "none") else api
    _check_acts_at(watermark, "training", "the watermark")
    if api is not None:
        _check_acts_at(api, "api", "the API-time part")
    elif api_params:
        raise InvalidArgument("API parameters were given without an API-time scheme")
    config = config or TrainConfig()
    embedding = embed_scheme(
        watermark,
        splits,
        arch=arch,
        model=model,
        params=watermark_params,
        config=config,
        progress=progress,
        reference=reference,
        max_cost=max_cost,
        key_seed=key_seed,
    )
    victim, keys, seeds = embedding.victim, [embedding.key], [config.seed]
    info: dict[str, Any] = {"watermark": embedding.info, "accuracy_cost": embedding.info.get("accuracy_cost")}
    if api is not None:
        seeds.append(part_seed(config.seed, 1, api))
        part_key_seed = sub_seed(key_seed, "protect", 1, api) if key_seed is not None else None
        api_config = config.replace(seed=seeds[-1])
        api_key, info["api"] = _api_part(api, victim, splits, api_params, api_config, progress, part_key_seed)
        keys.append(api_key)
    keyset = KeySet(
        keys,
        {
            "independent": True,
            "made_by": "protect",
            "parts": [f"{k.scheme} ({SCHEMES.get(k.scheme).factory.acts_at} time)" for k in keys],
            "seeds": seeds,
            "seed_rule": SEED_RULE,
            **({"key_seed": KEY_SEED_RULE} if key_seed is not None else {}),
        },
    )
    victim.provenance["protection"] = {"schemes": [k.scheme for k in keys], "keyset_digest": keyset.digest}
    info["seeds"] = seeds
    return Protection(victim, keyset, info)


def _check_acts_at(name: str, acts_at: str, role: str) -> None:
    actual = SCHEMES.get(name).factory.acts_at
    if actual != acts_at:
        other = "--api" if actual == "api" else "--watermark"
        raise InvalidArgument(
            f"{role} must act at {acts_at} time, but {name!r} acts at {actual} time (give it as {other})"
        )


def _api_part(
    name: str,
    victim: Classifier,
    splits: Splits,
    params: dict[str, Any] | None,
    config: TrainConfig,
    progress: bool | None,
    key_seed: str | None = None,
) -> tuple[Key, dict[str, Any]]:
    """The API-time scheme's key for ``victim``, whose weights and provenance it leaves as they were."""
    weights, provenance = weights_digest(victim), dict(victim.provenance)
    scheme = create_scheme(name, **(params or {}))
    scheme.key_seed = key_seed
    embedding = scheme.embed(victim, splits, train=config, progress=progress)
    if key_seed is not None:
        keep_seed(embedding.key, key_seed)
    if embedding.victim is not victim or weights_digest(victim) != weights:
        raise InvalidArgument(
            f"{name!r} changed the model; an API-time part must leave the watermarked victim as it is"
        )
    victim.provenance.clear()
    victim.provenance.update(provenance)  # the victim carries the watermark: its provenance says so, not the API part's
    return embedding.key, embedding.info


def protect_oracle(oracle: Oracle, keys: Key | KeySet | Sequence[Key]) -> Oracle:
    """The API the owner serves: ``scheme.protect`` of every key in order (identity for training-time schemes)."""
    for key in open_keys(keys)[0]:
        oracle = scheme_for_key(key).protect(oracle, key)
    return oracle
