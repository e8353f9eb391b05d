"""The recommended protection stack as one workflow: a training-time watermark, an API-time mark and optionally a
fingerprint, one key set.

:func:`protect_model` embeds the watermark (:func:`~copycatch.schemes.embedding.embed_scheme`: the mark is in the
victim's weights and survives a leak of the model file), then makes the API-time scheme's key for that watermarked
victim (DynaMarks: nothing is trained, the served probabilities carry the mark, which extraction copies into a
surrogate) and, when asked, a fingerprint's key of the watermarked victim (``kind = "fingerprint"``: the weights and
the answers stay as they are). The keys are bundled into one :class:`~copycatch.core.keyset.KeySet`.

Independence. Each part's secret comes from its own seed: the watermark from the training seed as given (the
victim is the one ``embed`` makes with that seed), part ``i > 0`` from :func:`part_seed`, 63 bits of
SHA-256(``copycatch.protect/<seed>/<i>/<scheme>``). Each scheme draws its secret from its own generator seeded
from its part's seed, and no part's secret is computed from another's, so under the null hypothesis (the suspect
depends on no secret) each p-value ranks its own secret among the possible ones independently of the others.
The API-time key does record the watermarked victim's answers (what it perturbs), which are public to anyone who
queries the model, not a secret. A watermark and an API-time part therefore form a key set declared independent,
which verification combines with Fisher's method (:mod:`copycatch.verification.combine`).

A fingerprint breaks that argument: its test does not rank a secret, it asks whether the suspect behaves like the
watermarked victim itself (its null is "the suspect was not derived from this model"), and it is run on the same
suspect as the watermark's. An innocent model that happens to resemble the victim (the same data distribution, the
same architecture) moves both p-values together, so they are not independent under every null. A key set with a
fingerprint is declared dependent (:data:`DEPENDENCE` in its metadata) and verification combines it with Holm's
adjustment, valid under any dependence.

:func:`protect_oracle` is the API the owner serves: every key's ``scheme.protect`` in order; training-time parts
and fingerprints are the identity. The server, ``steal --protect`` and the benchmark harness all go through it.
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
DEPENDENCE = (
    "the fingerprint tests whether the suspect behaves like the watermarked victim, on the same suspect as the "
    "other parts: their p-values may move together under the null, so verify combines them with Holm's adjustment"
)
# Parameters protect gives a part unless the caller sets them (the scheme's own defaults are the paper's). DynaMarks'
# paper weighs the favoured index 2/11: in the stack its perturbation of every confident answer then scatters mass
# over random wrong classes, which a thief copies and which drowns the watermark's signal among the wrong classes;
# weight 10 concentrates it on one class per row and brings the DynaMarks part to its floor (2e-10) on the measured
# thieves (benchmarks/README.md, "Proof after extraction").
STACK_PARAMS: dict[str, dict[str, Any]] = {"dynamarks": {"favoured_weight": 10.0}}
# What protect takes in each of its arguments (and CLI flags of the same names): a scheme's kind and when it acts
# decide its place (Scheme.kind, Scheme.acts_at).
ROLES = {
    "watermark": "a watermark that acts at training time",
    "api": "a watermark that acts at api time",
    "fingerprint": "a fingerprint",
}


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
    fingerprint: str | None = None,
    fingerprint_params: dict[str, Any] | None = None,
    arch: str | None = None,
    model: Classifier | None = None,
    config: TrainConfig | None = None,
    progress: bool | None = None,
    reference: Classifier | None = None,
    max_cost: float | None = DEFAULT_MAX_COST,
    key_seed: str | None = None,
) -> Protection:
    """Watermark a model with ``watermark`` (a training-time scheme), make the key of ``api`` (an API-time scheme,
    or ``None``/``"none"``) and of ``fingerprint`` (a fingerprint scheme, or ``None``/``"none"``) for the
    watermarked victim; the keys form one key set, declared independent unless it holds a fingerprint (see the
    module docstring). The watermark's accuracy cost is measured as
    :func:`~copycatch.schemes.embedding.embed_scheme` does (``reference``, ``max_cost``) and recorded in
    ``info["accuracy_cost"]``; the other parts change no weight. With a secret ``key_seed`` the parts' random
    choices come from it (:data:`KEY_SEED_RULE`), else from the training seeds."""
    api = None if api in (None, "none") else api
    fingerprint = None if fingerprint in (None, "none") else fingerprint
    check_role(watermark, "watermark")
    parts = (
        ("api", api, stack_params(api, api_params), "an API-time scheme"),
        ("fingerprint", fingerprint, stack_params(fingerprint, fingerprint_params), "a fingerprint scheme"),
    )
    for role, name, params, what in parts:
        if name is not None:
            check_role(name, role)
        elif params:
            raise InvalidArgument(f"{role} parameters were given without {what}")
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
    for role, name, params, _ in parts:
        if name is None:
            continue
        part = len(keys)
        seeds.append(part_seed(config.seed, part, name))
        part_key_seed = sub_seed(key_seed, "protect", part, name) if key_seed is not None else None
        part_config = config.replace(seed=seeds[-1])
        key, info[role] = _unchanging_part(name, role, victim, splits, params, part_config, progress, part_key_seed)
        keys.append(key)
    independent = fingerprint is None
    keyset = KeySet(
        keys,
        {
            "independent": independent,
            **({} if independent else {"dependence": DEPENDENCE}),
            "made_by": "protect",
            "parts": [_describe(k.scheme) for k in keys],
            "seeds": seeds,
            "seed_rule": SEED_RULE,
            **({"key_seed": KEY_SEED_RULE} if key_seed is not None else {}),
        },
    )
    victim.provenance["protection"] = {"schemes": [k.scheme for k in keys], "keyset_digest": keyset.digest}
    info["seeds"] = seeds
    return Protection(victim, keyset, info)


def stack_params(name: str | None, params: dict[str, Any] | None) -> dict[str, Any] | None:
    """The parameters protect gives part ``name``: :data:`STACK_PARAMS` under the caller's ``params``."""
    merged = {**STACK_PARAMS.get(name or "", {}), **(params or {})}
    return merged or params


def stack_role(name: str) -> str:
    """Which argument of :func:`protect_model` takes scheme ``name`` (a key of :data:`ROLES`)."""
    factory = SCHEMES.get(name).factory
    if factory.kind == "fingerprint":
        return "fingerprint"
    return "api" if factory.acts_at == "api" else "watermark"


def check_role(name: str, role: str) -> None:
    """Refuse scheme ``name`` as protect's ``role`` unless it is one, naming the kind it needs and the one it has."""
    actual = stack_role(name)
    if actual != role:
        fitting = ", ".join(n for n, _ in SCHEMES.describe() if stack_role(n) == role)
        wanted = "fingerprint" if role == "fingerprint" else "watermark"
        raise InvalidArgument(
            f"the {role} part must be {ROLES[role]} (kind {wanted!r}: {fitting}), but {name!r} is {ROLES[actual]} "
            f"(kind {SCHEMES.get(name).factory.kind!r}): give it as --{actual}"
        )


def _describe(scheme: str) -> str:
    factory = SCHEMES.get(scheme).factory
    return f"{scheme} (fingerprint)" if factory.kind == "fingerprint" else f"{scheme} ({factory.acts_at} time)"


def _unchanging_part(
    name: str,
    role: str,
    victim: Classifier,
    splits: Splits,
    params: dict[str, Any] | None,
    config: TrainConfig,
    progress: bool | None,
    key_seed: str | None = None,
) -> tuple[Key, dict[str, Any]]:
    """The key of an API-time scheme or a fingerprint for ``victim``, whose weights and provenance it leaves as
    they were."""
    weights, provenance = weights_digest(victim), dict(victim.provenance)
    scheme = create_scheme(name, **(params or {}))
    scheme.key_seed = key_seed
    embedding = scheme.embed(victim, splits, train=config, progress=progress)
    if key_seed is not None:
        keep_seed(embedding.key, key_seed)
    if embedding.victim is not victim or weights_digest(victim) != weights:
        raise InvalidArgument(f"{name!r} changed the model; the {role} part must leave the watermarked victim as it is")
    victim.provenance.clear()
    victim.provenance.update(provenance)  # the victim carries the watermark: its provenance says so, not this part's
    return embedding.key, embedding.info


def protect_oracle(oracle: Oracle, keys: Key | KeySet | Sequence[Key]) -> Oracle:
    """The API the owner serves: ``scheme.protect`` of every key in order (identity for training-time schemes and
    fingerprints)."""
    for key in open_keys(keys)[0]:
        oracle = scheme_for_key(key).protect(oracle, key)
    return oracle
