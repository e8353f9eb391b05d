"""The Python API: one function per CLI verb, running the very code the verb runs.

Every verb of ``copycatch`` is *parse → one call here → print*, so a notebook and the command line give the same
models, keys, evidence and files. Functions take objects or file paths, and write files only when given a path.

    >>> import copycatch as cc
    >>> parts = cc.SplitFractions(owner_train=0.45, owner_holdout=0.1, attacker_pool=0.45)
    >>> splits = cc.load_splits("synthetic", fractions=parts)      # tiny 8×8 images, 4 classes
    >>> embedding = cc.embed("margin", splits, arch="mlp", params={"n_triggers": 40, "lam": 1},
    ...                      config=cc.TrainConfig(epochs=10), allow_cost=True)
    ... # toy data: the paper's λ = 1 (the data-size default is too weak for 80 training steps), which costs more
    ... # test accuracy than the 1.5-point limit
    >>> embedding.info["accuracy_cost"]["exceeded"]
    True
    >>> stolen = cc.steal(embedding.victim, splits.attacker_pool, arch="mlp", config=cc.TrainConfig(epochs=10, seed=1))
    >>> cc.verify(stolen.surrogate, embedding.key).verdict
    'stolen'
    >>> innocent = cc.train("mlp", splits, on="attacker_pool", config=cc.TrainConfig(epochs=4, seed=7))
    >>> cc.verify(innocent, embedding.key).verdict
    'not stolen'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .attacks.extraction import ExtractionResult, create_extraction_attack
from .attacks.launder import Laundering, launder
from .attacks.removal.evasion import is_deployment, load_deployment
from .attacks.steal import query_set, unlabelled
from .attacks.steal import steal as _steal
from .bench.analysis import STUDIES, StudyConfig, StudyResult, run_study
from .bench.demo import DemoConfig, run_demo
from .bench.grid import Grid, load_grid, rescale
from .bench.report import make_report
from .bench.runner import RunSummary, run_grid
from .bench.store import ResultsStore, store_path
from .core.checkpoint import RunCheckpoint, checkpointing
from .core.commitment import Commitment, CommitmentRefused, commitment_path
from .core.errors import InvalidArgument
from .core.key import Key
from .core.keyset import KeySet, load_key_file, open_keys
from .core.signing import KeyPair, load_private_key, write_key_pair
from .data.base import Splits, TensorData
from .models.base import Classifier
from .models.io import load_model, save_model, weights_digest
from .models.train import TrainConfig, accuracy, agreement, train_model
from .oracles.base import Oracle
from .oracles.recorded import RecordedOracle
from .oracles.suspects import open_suspect
from .schemes import Embedding, Protection, create_scheme, embed_scheme, protect_model, protect_oracle
from .schemes.commitment import commit_key
from .schemes.embedding import DEFAULT_MAX_COST, check_accuracy_cost
from .schemes.protection import stack_params
from .serve import require_extra
from .serve.config import ServeConfig
from .serve.keys import Keyring, new_key
from .serve.ledger import read_ledgers, summarize
from .serve.runner import Server
from .serve.runner import open_server as bind_server
from .verification.calibration import Calibration, CalibrationPlan, ReferenceModel, build_reference_models
from .verification.calibration import calibrate as _calibrate
from .verification.commitments import check_commitments, state_commitments
from .verification.report import write_report
from .verification.sequential import SequentialPlan
from .verification.session import VerificationRun, load_keys, verify_suspect
from .verification.signed_evidence import EvidenceCheck, sign_run, signer_record
from .verification.signed_evidence import check_evidence as _check_evidence

PathLike = str | os.PathLike


def _model(obj: Classifier | PathLike, device: str | None = None) -> Classifier:
    if isinstance(obj, Classifier):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return load_model(obj, device=device or "cpu")
    raise InvalidArgument(f"expected a copycatch model or a model file path, got {type(obj).__name__}")


def _keys(obj: Key | KeySet | PathLike) -> list[Key]:
    """The keys in a key, a key set, or a file of either."""
    return open_keys(obj)[0]


def _record_accuracy(model: Classifier, test: TensorData) -> float:
    acc = accuracy(model, test) if len(test) else float("nan")
    model.provenance["test_accuracy"] = acc
    return acc


def as_oracle(
    suspect: Any,
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    budget: int | None = None,
    device: str | None = None,
    **options: Any,
) -> Oracle:
    """Wrap a model, model file, URL, ONNX file, ``module:function`` or callable as an :class:`Oracle`."""
    return open_suspect(
        suspect, num_classes=num_classes, input_shape=input_shape, budget=budget, device=device, **options
    )


def train(
    arch: str,
    splits: Splits,
    *,
    on: str = "owner_train",
    config: TrainConfig | None = None,
    output: PathLike | None = None,
    progress: bool | None = None,
    **arch_kwargs: Any,
) -> Classifier:
    """Train ``arch`` with true labels on one part of the split (``owner_train``, or ``attacker_pool`` for an
    innocent model trained on the thief's data); its test accuracy goes in ``provenance["test_accuracy"]``."""
    model = train_model(arch, splits, on=on, config=config, progress=progress, **arch_kwargs)
    _record_accuracy(model, splits.test)
    _carry_vocabulary(model, splits)
    if output is not None:
        save_model(model, output)
    return model


def _carry_vocabulary(model: Classifier, splits: Splits) -> None:
    """A text model trained on ``splits`` reads the ids of their vocabulary: it goes with the model (and its file),
    so a suspect's texts and a served model's requests are encoded the same way."""
    if getattr(model, "vocabulary", None) is None and getattr(splits, "vocabulary", None) is not None:
        model.vocabulary = splits.vocabulary


def embed(
    scheme: str,
    splits: Splits,
    *,
    arch: str | None = None,
    model: Classifier | PathLike | None = None,
    params: dict[str, Any] | None = None,
    config: TrainConfig | None = None,
    output: PathLike | None = None,
    key_path: PathLike | None = None,
    progress: bool | None = None,
    reference: Classifier | PathLike | None = None,
    max_cost: float | None = DEFAULT_MAX_COST,
    allow_cost: bool = False,
    key_seed: str | None = None,
    resume: bool = False,
) -> Embedding:
    """Watermark a model with ``scheme``: a fresh ``arch`` (default: the scheme's), or a given ``model``.

    ``info["test_accuracy"]`` is the victim's test accuracy; ``output`` and ``key_path`` write the victim and the
    (secret) key. The accuracy-cost guard (:mod:`copycatch.schemes.embedding`) measures the victim against a clean
    ``reference`` (by default one trained, or reused, with the same architecture, recipe and seed) on the test
    split and records the cost in the key (``info["accuracy_cost"]``). Past ``max_cost`` points (``None``: no
    limit) the files are still written, then :class:`~copycatch.core.errors.AccuracyCostExceeded` is raised with
    the embedding in ``.embedding``, unless ``allow_cost``.

    ``key_seed`` (hexadecimal; :func:`copycatch.core.commitment.new_key_seed` draws one) is the secret the key's
    random choices come from, kept in the key; None draws them from the training seed, which anyone can repeat.
    ``info["commitment"]`` is the key's public commitment record (:mod:`copycatch.core.commitment`), written
    beside the key file as ``<key_path>.commit.json``.

    With ``output``, a checkpoint ``<output>.ckpt`` is saved after every epoch and removed once the files are
    written (:mod:`copycatch.core.checkpoint`); ``resume`` continues an interrupted run from it, to the same
    victim, with the same arguments (``key_seed=None`` then takes the interrupted run's, kept in the checkpoint).
    ``info["resumed"]`` says what the checkpoint spared.
    """
    base = _model(model) if model is not None else None
    clean = _model(reference) if reference is not None else None
    run = {
        "verb": "embed",
        "scheme": scheme,
        "params": _scheme_params(scheme, params),
        "splits": splits,
        "arch": arch,
        "model": base,
        "config": config or TrainConfig(),
        "reference": clean,
        "max_cost": max_cost,
    }
    checkpoint = RunCheckpoint.beside(output, run, resume=resume, secrets={"key_seed": key_seed})
    with checkpointing(checkpoint):
        result = embed_scheme(
            scheme,
            splits,
            arch=arch,
            model=base,
            params=params,
            config=config,
            progress=progress,
            reference=clean,
            max_cost=max_cost,
            key_seed=checkpoint.secrets["key_seed"] if checkpoint is not None else key_seed,
        )
    _finish(result, result.key, splits, output, key_path, checkpoint, allow_cost=allow_cost)
    return result


def protect(
    splits: Splits,
    *,
    watermark: str = "margin",
    watermark_params: dict[str, Any] | None = None,
    api: str | None = "dynamarks",
    api_params: dict[str, Any] | None = None,
    fingerprint: str | None = None,
    fingerprint_params: dict[str, Any] | None = None,
    arch: str | None = None,
    model: Classifier | PathLike | None = None,
    config: TrainConfig | None = None,
    output: PathLike | None = None,
    keys: PathLike | None = None,
    progress: bool | None = None,
    reference: Classifier | PathLike | None = None,
    max_cost: float | None = DEFAULT_MAX_COST,
    allow_cost: bool = False,
    key_seed: str | None = None,
    resume: bool = False,
) -> Protection:
    """The recommended stack: a training-time ``watermark`` in the weights plus an ``api``-time mark on the served
    answers (``None``: none; DynaMarks with the stack's parameters, :data:`~copycatch.schemes.protection.STACK_PARAMS`,
    under ``api_params``), each with its own independently seeded secret, their keys bundled in one key set;
    ``fingerprint`` (``"cae"``, ``"dataset-inference"``; default none) adds a fingerprint of the watermarked
    victim, which changes neither its weights nor its answers.

    Serve the victim with the key set (``open_server(victim, protect=keyset)`` applies the API-time part) and
    verify suspects against the key set: each part is tested and Fisher's method combines them, or Holm's
    adjustment with a fingerprint, whose test is not independent of the others (:mod:`copycatch.schemes.protection`).
    ``info["test_accuracy"]`` is the victim's; ``output`` and ``keys`` write the victim and the (secret) key set.
    The accuracy-cost guard is :func:`embed`'s: files are written, then :class:`AccuracyCostExceeded` is raised past
    ``max_cost`` unless ``allow_cost``. ``key_seed`` and ``info["commitment"]`` (written beside ``keys``) are
    :func:`embed`'s, for the key set, and so are the checkpoint beside ``output`` and ``resume``.
    """
    base = _model(model) if model is not None else None
    clean = _model(reference) if reference is not None else None
    run = {
        "verb": "protect",
        "watermark": watermark,
        "params": _scheme_params(watermark, watermark_params),
        "api": api,
        "api_params": _scheme_params(api, stack_params(api, api_params)),
        "fingerprint": fingerprint,
        "fingerprint_params": _scheme_params(fingerprint, stack_params(fingerprint, fingerprint_params)),
        "splits": splits,
        "arch": arch,
        "model": base,
        "config": config or TrainConfig(),
        "reference": clean,
        "max_cost": max_cost,
    }
    checkpoint = RunCheckpoint.beside(output, run, resume=resume, secrets={"key_seed": key_seed})
    with checkpointing(checkpoint):
        result = protect_model(
            splits,
            watermark=watermark,
            watermark_params=watermark_params,
            api=api,
            api_params=api_params,
            fingerprint=fingerprint,
            fingerprint_params=fingerprint_params,
            arch=arch,
            model=base,
            config=config,
            progress=progress,
            reference=clean,
            max_cost=max_cost,
            key_seed=checkpoint.secrets["key_seed"] if checkpoint is not None else key_seed,
        )
    _finish(result, result.keyset, splits, output, keys, checkpoint, allow_cost=allow_cost)
    return result


def _scheme_params(name: str | None, params: dict[str, Any] | None) -> Any:
    """A part's parameters as the scheme resolves them (None for a part left out): what a checkpoint records."""
    return None if name in (None, "none") else create_scheme(name, **(params or {})).params


def _finish(
    result: Embedding | Protection,
    keys: Key | KeySet,
    splits: Splits,
    output: PathLike | None,
    key_path: PathLike | None,
    checkpoint: RunCheckpoint | None,
    *,
    allow_cost: bool,
) -> None:
    """The end of an embedding run: the victim's accuracy recorded, its file and the key (with its commitment)
    written, the checkpoint removed, then the accuracy-cost check, after writing, so a cost past the limit never
    loses the work."""
    result.info["test_accuracy"] = _record_accuracy(result.victim, splits.test)
    _carry_vocabulary(result.victim, splits)
    if output is not None:
        save_model(result.victim, output)
    result.info["commitment"] = _commit(keys, result.victim, key_path)
    _done(checkpoint, result.info)
    check_accuracy_cost(result, allow_cost=allow_cost)


def _done(checkpoint: RunCheckpoint | None, info: dict[str, Any]) -> None:
    """The run's files are written: what a resumed run took from its checkpoint goes in ``info["resumed"]``, and
    the checkpoint is removed."""
    if checkpoint is not None:
        if checkpoint.resumed:
            info["resumed"] = checkpoint.summary()
        checkpoint.remove()


def _commit(keys: Key | KeySet, victim: Classifier, path: PathLike | None) -> dict[str, Any]:
    """Write the key (or key set) to ``path`` with its commitment beside it; the commitment record either way."""
    commitment = commit_key(keys, weights_digest(victim))
    if path is not None:
        keys.save(path)
        commitment.save(commitment_path(path))
    return commitment.record


def commit(
    key: Key | KeySet | PathLike, *, victim: Classifier | PathLike | None = None, output: PathLike | None = None
) -> tuple[Commitment, Path | None, bool]:
    """The commitment of a key or key set, for ``copycatch key commit``: the one beside its file when there is one
    (checked against the key: :class:`~copycatch.core.commitment.CommitmentRefused` when it does not match), else a
    new one made now for ``victim`` (default: the victim digest the key records), written to ``output`` (default:
    beside a key file). Returns (commitment, where it is written, whether it is new)."""
    loaded = load_key_file(key) if isinstance(key, (str, os.PathLike)) else key
    beside = commitment_path(key) if isinstance(key, (str, os.PathLike)) else None
    existing = Path(output) if output is not None else beside
    digest = weights_digest(_model(victim)) if victim is not None else None
    if existing is not None and Path(existing).is_file():
        statuses = check_commitments([loaded], [existing])
        if digest is not None and statuses[0].commitment.record["victim_sha256"] != digest:
            raise CommitmentRefused(f"{existing} commits the key to another victim than {victim}")
        return statuses[0].commitment, Path(existing), False
    commitment = commit_key(loaded, digest)
    path = Path(output) if output is not None else beside
    if path is not None:
        commitment.save(path)
    return commitment, path, True


def steal(
    victim: Any,
    pool: TensorData | torch.Tensor | str,
    *,
    attack: str = "soft-label",
    arch: str | None = None,
    params: dict[str, Any] | None = None,
    budget: int | None = None,
    config: TrainConfig | None = None,
    key: Key | KeySet | PathLike | None = None,
    postprocess: Sequence[Any] = (),
    splits: Splits | None = None,
    then: Sequence[str] = (),
    output: PathLike | None = None,
    progress: bool | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    resume: bool = False,
    **suspect_options: Any,
) -> ExtractionResult:
    """Extract a surrogate of ``arch`` (default: a small model of the victim's modality: mlp, text-cnn or
    logmel-cnn) from ``victim`` (model, file, URL, callable or oracle) with ``attack``.

    ``pool`` is the thief's data, a bare tensor of inputs, or a name: a part of ``splits`` or another data set
    (out-of-distribution queries, labels withheld). ``key`` (a key or key set) applies its API-time protections
    (``scheme.protect``) before the thief sees the oracle; ``postprocess`` adds output post-processors (top-k,
    hard-label, rounding …). With ``splits``, ``info`` gains the surrogate's test accuracy (and its agreement with
    a local victim); ``then`` launders the surrogate with removal attacks on the thief's data
    (``info["laundering"]``). ``output`` writes the surrogate (and any deployment or pirate key beside it).

    With ``output``, a checkpoint ``<output>.ckpt`` keeps every answer bought, as it arrives, and the training
    state after every epoch, and is removed once the files are written (:mod:`copycatch.core.checkpoint`);
    ``resume`` continues an interrupted run from it with the same arguments: the answers already paid for are
    replayed, never bought again. ``info["resumed"]`` says what the checkpoint spared.
    """
    pool = _query_pool(pool, splits)
    if then and splits is None:
        raise InvalidArgument("laundering (then=...) needs the splits: it runs on the thief's data")
    shape = input_shape or tuple(pool.x.shape[1:])
    oracle = as_oracle(victim, num_classes=num_classes, input_shape=shape, **suspect_options)
    keys = _keys(key) if key is not None else None
    budgeted = {**(params or {}), **({"budget": budget} if budget is not None else {})}
    run = {
        "verb": "steal",
        "victim": oracle,
        "pool": pool,
        "attack": attack,
        "params": create_extraction_attack(attack, **budgeted).params,
        "arch": arch,
        "config": config or TrainConfig(),
        "key": keys,
        "postprocess": list(postprocess),
        "splits": splits,
        "then": list(then),
        "class_names": class_names,
        "options": _answer_options(suspect_options),
    }
    checkpoint = RunCheckpoint.beside(output, run, resume=resume)
    if checkpoint is not None:  # the victim's own answers are what is paid for: record them before any protection
        oracle = RecordedOracle(oracle, checkpoint)
    if keys is not None:
        oracle = protect_oracle(oracle, keys)
    with checkpointing(checkpoint):
        result = _steal(
            oracle,
            pool,
            attack=attack,
            arch=arch,
            params=params,
            budget=budget,
            config=config,
            postprocess=postprocess,
            class_names=class_names,
            progress=progress,
        )
        if splits is not None:
            _measure_surrogate(result, victim, splits.test)
        if then:
            laundering = launder(result.surrogate, then, splits, config=config, progress=progress)
            result.surrogate, result.info["laundering"] = laundering.model, laundering
    if then and output is not None:
        laundering.save(output)
    elif output is not None:
        save_model(result.surrogate, output)
    _done(checkpoint, result.info)
    return result


def _answer_options(options: dict[str, Any]) -> dict[str, Any]:
    """The suspect options that can change its answers: without credentials (the checkpoint keeps no secret of the
    thief's) and without how long to wait or how often to retry, which a resumed run may well change."""
    waiting = {"api_key", "headers", "timeout", "retries", "backoff", "max_retry_after", "deadline"}
    return {name: value for name, value in options.items() if name not in waiting}


def _measure_surrogate(result: ExtractionResult, victim: Any, test: TensorData) -> None:
    """Test accuracy of the surrogate, and its agreement with the victim when the thief holds a local copy."""
    result.info["test_accuracy"] = _record_accuracy(result.surrogate, test)
    local = victim if isinstance(victim, Classifier) else None
    if isinstance(victim, (str, os.PathLike)) and str(victim).endswith(".safetensors"):
        local = load_model(victim)
    if local is not None and len(test):
        result.info["agreement"] = agreement(result.surrogate, local, test.x)


def _query_pool(pool: TensorData | torch.Tensor | str, splits: Splits | None) -> TensorData:
    """The thief's queries: data as given, bare inputs (labels withheld), or a query set named in ``splits``."""
    if isinstance(pool, str):
        if splits is None:
            raise InvalidArgument(f"the query set {pool!r} is named; give the splits it comes from")
        return query_set(pool, splits)
    return unlabelled(pool) if isinstance(pool, torch.Tensor) else pool


def remove(
    model: Classifier | PathLike,
    attacks: Sequence[str],
    splits: Splits,
    *,
    evasions: Sequence[Any] = (),
    config: TrainConfig | None = None,
    output: PathLike | None = None,
    pirate_key: PathLike | None = None,
    progress: bool | None = None,
) -> Laundering:
    """Launder a model the thief holds with removal attacks, in order, on ``splits.attacker_pool``.

    ``model`` may be a deployment file (``.evasion.safetensors``), or a model with the ``evasions`` it already
    answers through: those stay in front of the model and new ones are added. ``output`` writes the laundered
    model, its deployment file and any pirate keys; the report in ``Laundering.report`` then names them.
    """
    if isinstance(model, (str, os.PathLike)) and is_deployment(model):
        model, evasions = load_deployment(model)
    laundering = launder(_model(model), attacks, splits, config=config, evasions=evasions, progress=progress)
    if output is not None:
        laundering.save(output, pirate_key=pirate_key)
    return laundering


def verify(
    suspect: Any,
    key: Key | KeySet | PathLike | Sequence[Key | KeySet | PathLike],
    *,
    alpha: float = 1e-3,
    sequential: bool = True,
    batch: int = 10,
    early_share: float = 0.2,
    combine: str | None = None,
    transcript: PathLike | None = None,
    resume: bool = False,
    offline: bool = False,
    budget: int | None = None,
    postprocess: Sequence[Any] = (),
    num_classes: int | None = None,
    calibrations: bool = True,
    commitments: Sequence[Commitment | PathLike] | None = None,
    suspect_since: Any = None,
    require_commitment: bool = False,
    commitment_checks: bool = True,
    report: PathLike | None = None,
    command: Sequence[str] | None = None,
    sign_with: PathLike | None = None,
    progress: bool | None = None,
    **suspect_options: Any,
) -> VerificationRun:
    """Verify ``suspect`` against one key or several (key files or key sets): exactly what ``copycatch verify`` runs.

    Sequential by default (``sequential=False`` asks the whole key: the fixed test), every answer on a
    hash-chained transcript (in memory, or ``transcript``; ``resume`` continues one, ``offline`` recomputes from it
    alone), calibration files beside key files, several keys combined (``combine``: Holm or Fisher; by default
    Fisher for one key set that declares its parts independent, Holm otherwise). ``report``
    names a folder for ``evidence.json``, ``report.html`` and ``transcript.jsonl``. ``sign_with``, the owner's private
    key file (:func:`keygen`), signs the evidence and the transcript this run wrote (``FILE.sig``; see
    :mod:`copycatch.verification.signed_evidence`). ``suspect_options`` reach the suspect's protocol (HTTP fields,
    ONNX outputs, callable layouts); for an HTTP suspect, ``deadline`` (seconds it may keep us waiting without an
    answer, then :class:`~copycatch.verification.session.VerificationInterrupted` saying how to resume) and
    ``on_retry`` (a callable given one line per retry) among them.

    Before any query, each key is checked against its commitment (``commitments``, one per key, else the
    ``.commit.json`` beside a key file; :mod:`copycatch.verification.commitments`): a key that does not match, or
    whose commitment is not older than ``suspect_since`` (when the suspect was first seen, ISO 8601), is refused
    with :class:`~copycatch.core.commitment.CommitmentRefused`; ``require_commitment`` refuses keys without one.
    Each evidence states its key's commitment (``details["commitment"]``). ``commitment_checks=False`` skips all
    this (the benchmark's "without checks").
    """
    keys = list(key) if isinstance(key, (list, tuple)) else [key]
    statuses = (
        check_commitments(keys, commitments, suspect_since=suspect_since, require=require_commitment)
        if commitment_checks
        else []
    )
    folder = _report_folder(report, offline=offline)
    if transcript is None and folder is not None:
        transcript = folder / "transcript.jsonl"
    signing_key = load_private_key(sign_with) if sign_with is not None else None  # a bad key fails before any query
    if signing_key is not None and folder is None and (transcript is None or offline):
        raise InvalidArgument(
            "nothing to sign: give a report folder (--report DIR), or a transcript this run writes (--transcript FILE)"
        )
    run = verify_suspect(
        suspect,
        keys,
        alpha=alpha,
        sequential=sequential,
        plan=SequentialPlan.from_dict({"batch_size": batch, "early_share": early_share}),
        combine=combine,
        transcript=transcript,
        resume=resume,
        offline=offline,
        budget=budget,
        postprocess=postprocess,
        suspect_options=suspect_options,
        num_classes=num_classes,
        chunk=suspect_options.get("batch_size") or 256,
        calibrations=calibrations,
        progress=progress,
        session={"command": list(command)} if command else None,
    )
    state_commitments(run.evidences, statuses, suspect_since)
    if folder is not None:
        signer = signer_record(signing_key) if signing_key is not None else None
        run.report_paths = write_report(folder, run, command=command, signer=signer)
    run.signatures = sign_run(run, signing_key)
    return run


def _report_folder(report: PathLike | None, *, offline: bool) -> Path | None:
    folder = Path(report) if report is not None else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise InvalidArgument(f"report {folder} is a file; give a folder")
    if offline and folder is not None and (folder / "evidence.json").exists():
        raise InvalidArgument(
            f"offline verification would overwrite the evidence in {folder}; check it with the transcript "
            f"{folder / 'transcript.jsonl'} alone, or report to another folder"
        )
    return folder


def keygen(output: PathLike, *, force: bool = False) -> KeyPair:
    """A new owner signing key pair (Ed25519): ``output.key``, private, mode 0600, and ``output.pub``, public, to
    publish; existing files are replaced only with ``force``. What ``copycatch key keygen -o OUTPUT`` runs."""
    return write_key_pair(output, force=force)


def check_evidence(
    file: PathLike,
    public_key: PathLike,
    *,
    transcript: PathLike | None = None,
    key: Key | KeySet | PathLike | Sequence[Key | KeySet | PathLike] = (),
) -> EvidenceCheck:
    """Check a signed evidence file (or transcript) with the owner's public key alone: the signature, each p-value
    recomputed from the recorded counts, the transcript's hash chain against the evidence's, and (given ``key``)
    the evidence recomputed from the recorded answers. What ``copycatch evidence check`` runs; ``.ok`` is the
    outcome, ``.checks`` every check made."""
    keys = list(key) if isinstance(key, (list, tuple)) else [key]
    return _check_evidence(file, public_key, transcript=transcript, keys=keys)


def calibrate(
    keys: Sequence[Key | KeySet | PathLike],
    *,
    splits: Splits | None = None,
    plan: CalibrationPlan | None = None,
    innocents: Sequence[Any] = (),
    alphas: Sequence[float] = (1e-3, 0.05),
    output: PathLike | None = None,
    save_models: PathLike | None = None,
    progress: bool | None = None,
) -> list[tuple[Calibration, Path | None]]:
    """Each key's statistic on innocent reference models: references trained on ``splits`` by ``plan`` and the
    given ``innocents``; each calibration is written beside its key file (or to ``output``, for one key)."""
    loaded = load_keys(keys)
    key_list = loaded.keys
    if output is not None and len(key_list) > 1:
        raise InvalidArgument("one output file names one calibration; with several keys each goes beside its key")
    references: list[ReferenceModel] = []
    if plan is not None and plan.n_models:
        if splits is None:
            raise InvalidArgument("training reference models needs the splits")
        references += build_reference_models(splits, plan, progress=progress)
    meta = key_list[0].meta
    for i, spec in enumerate(innocents):
        oracle = open_suspect(spec, num_classes=meta.get("num_classes"), input_shape=meta.get("input_shape"))
        references.append(ReferenceModel(f"given{i:02d}", "given", oracle, {"source": str(spec)}))
    if not references:
        raise InvalidArgument("no reference models: train some (plan) and/or give innocent models")
    if save_models is not None:
        for ref in references:
            if ref.model is not None:
                save_model(ref.model, Path(save_models) / f"{ref.name}.safetensors")
    out = []
    for key, beside in zip(key_list, loaded.calibrations):
        calibration = _calibrate(key, references, alphas=alphas, progress=progress)
        path = Path(output) if output else beside
        if path is not None:
            calibration.save(path)
        out.append((calibration, path))
    return out


def demo(
    config: DemoConfig | None = None, *, encoder: bool = False, progress: bool | None = None, echo: bool = True
) -> dict[str, Any]:
    """The product's main job end to end: protect a model, steal it, verify the stolen copy and innocent models.

    ``encoder``: the self-supervised story instead (:mod:`copycatch.bench.encoder_demo`): a SimCLR encoder
    watermarked with MEA-Defender, served as an embedding API, stolen over HTTP with StolenEncoder; ``config``
    gives its seed and data folder."""
    if encoder:
        from .bench.encoder_demo import run_encoder_demo

        config = config or DemoConfig()
        return run_encoder_demo(seed=config.seed, data_dir=config.data_dir, http=True, progress=progress, echo=echo)
    return run_demo(config, progress=progress, echo=echo)


def run_bench(
    grid: Grid | PathLike,
    results: PathLike | None = None,
    *,
    executor: str = "local",
    jobs: int | None = None,
    address: str | None = None,
    device: str = "cpu",
    data_dir: str | None = None,
    cache_dir: PathLike | None = None,
    retry_failed: bool = True,
    limit: int | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    max_train: int | None = None,
    epochs_factor: float | None = None,
) -> RunSummary:
    """Run a benchmark grid (a YAML file or a parsed :class:`Grid`) into a resumable results store.

    ``max_train`` and ``epochs_factor`` run the grid at another scale (:func:`copycatch.bench.grid.rescale`)."""
    grid = rescale(
        grid if isinstance(grid, Grid) else load_grid(grid), max_train=max_train, epochs_factor=epochs_factor
    )
    results = Path(results) if results is not None else Path("bench-out") / grid.name
    return run_grid(
        grid,
        results,
        executor=executor,
        jobs=jobs,
        address=address,
        device=device,
        data_dir=data_dir,
        cache_dir=cache_dir,
        retry_failed=retry_failed,
        limit=limit,
        progress=progress,
        log=log,
    )


def bench_report(results: PathLike, output: PathLike, *, grid: str | None = None, plots: bool = True) -> dict:
    """Tables (mean ± std over seeds, p-values) and plots of a results store, written to ``output``."""
    return make_report(results, output, grid=grid, plots=plots)


def analyze(
    study: str, output: PathLike = "analysis-out", *, options: dict[str, Any] | None = None, **config: Any
) -> StudyResult:
    """Run analysis study ``study`` (``copycatch analyze STUDY``) and write ``output/<study>.csv`` and ``.png``.

    ``config`` holds :class:`~copycatch.bench.analysis.common.StudyConfig` fields (``dataset``, ``max_train``,
    ``epochs``, ``scheme``, ``scheme_params``, ``thief_queries``, ``seeds``, ``cache_dir``, ``device`` …); the scheme
    defaults to the study's own (``default_scheme``: mea-defender for ``prms``, else margin). ``options`` are the
    study's own keyword options. The models are trained once per configuration and then read from the cache."""
    factory = STUDIES.get(study).factory
    config.setdefault("scheme", getattr(factory, "default_scheme", "margin"))
    if config.get("scheme_params"):  # checked (unknown names, values) before any training, values typed
        params = dict(config["scheme_params"])
        typed = _scheme_params(config["scheme"], params)
        config["scheme_params"] = {k.replace("-", "_"): getattr(typed, k.replace("-", "_")) for k in params}
    return run_study(study, StudyConfig.from_dict(config), str(output), **(options or {}))


def plan_bench(
    grid: Grid | PathLike,
    results: PathLike | None = None,
    *,
    max_train: int | None = None,
    epochs_factor: float | None = None,
) -> tuple[Grid, Path, set[str]]:
    """A grid's cells without running them: (grid, results folder, ids of the cells already finished there)."""
    grid = rescale(
        grid if isinstance(grid, Grid) else load_grid(grid), max_train=max_train, epochs_factor=epochs_factor
    )
    results = Path(results) if results is not None else Path("bench-out") / grid.name
    done: set[str] = set()
    if store_path(results).exists():
        with ResultsStore(results, create=False) as store:
            done = store.finished_ids()
    return grid, results, done


def open_server(
    model: Any,
    config: ServeConfig | None = None,
    *,
    protect: Key | KeySet | PathLike | None = None,
    api_keys: PathLike | None = None,
    class_names: Sequence[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    device: str | None = None,
) -> Server:
    """A protected prediction API for ``model`` (model file, ``.onnx``, ``module:function`` or object), bound to
    ``host:port``; ``protect`` (a key or key set) applies its API-time schemes on the server, ``api_keys`` names
    the API key file.
    Call ``.run()`` on the result to serve in the foreground."""
    require_extra()
    key = _keys(protect) if protect is not None else None
    keyring = Keyring.load(api_keys) if api_keys else None
    oracle = open_suspect(model, num_classes=num_classes, input_shape=input_shape, device=device)
    return bind_server(
        oracle, config or ServeConfig(), host=host, port=port, key=key, keyring=keyring, class_names=class_names
    )


def new_api_key(path: PathLike, key_id: str) -> str:
    """Add a fresh API key ``key_id`` to the key file at ``path``; returns its secret (stored only as a hash)."""
    return new_key(path, key_id)


def ledger_summary(
    path: PathLike | Sequence[PathLike], *, since: float | None = None, keys: Sequence[str] | None = None
) -> dict:
    """Per-API-key totals of a serve ledger, or of several replicas' ledgers merged in time order (each with its
    rotated files): requests, inputs, refusals, repeats; ``ledgers`` gives each ledger's own counts."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    reads, entries = read_ledgers(paths)
    return {
        "files": [str(f) for read in reads for f in read.files],
        "lines": len(entries),
        "unreadable_lines": sum(read.corrupt_lines for read in reads),
        "since": since,
        "ledgers": [
            {"ledger": str(p), "files": len(r.files), "lines": len(r.entries), "unreadable_lines": r.corrupt_lines}
            for p, r in zip(paths, reads)
        ],
        "keys": summarize(entries, since=since, keys=keys),
    }
