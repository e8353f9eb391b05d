"""A verification session: one suspect, one or more keys, a transcript, and everything a report needs.

:func:`verify_suspect` is what ``copycatch verify`` runs (and the Python API for it):

1. opens the suspect (:func:`~copycatch.oracles.suspects.open_suspect`) and fingerprints it;
2. puts a :class:`~copycatch.verification.transcript.Transcript` in front of it (a file to resume, or memory), so every
   answer is recorded as it arrives and a re-run replays instead of re-asking;
3. verifies each key, sequentially by default (:mod:`copycatch.verification.sequential`; ``sequential=False`` runs the
   fixed test on the whole key);
4. adds the key's calibration when one lies beside the key (:mod:`copycatch.verification.calibration`);
5. combines the keys' p-values (:mod:`copycatch.verification.combine`) when there are several: a key set's parts
   count as keys, and Fisher's method is the default for one key set that declares its parts independent.

If the suspect fails (NaN, wrong shapes, refusals, timeouts, silence past its deadline, an exhausted budget) the
answers so far stay on record; an in-memory transcript is then written to ``copycatch-transcript-<key digest>.jsonl``
and the error (:class:`VerificationInterrupted`) says how to resume. A suspect silent past its deadline while it is
being opened (an HTTP API's ``/v1/info``) interrupts too, before any transcript is touched.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..core.errors import (
    BudgetExceeded,
    CopycatchError,
    CorruptFile,
    InvalidArgument,
    SuspectError,
    SuspectUnresponsive,
)
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.keyset import KeySet, load_key_file, open_keys
from ..core.stats import fisher_combine, holm_adjust
from ..oracles.base import Oracle
from ..oracles.suspects import describe_suspect, open_suspect
from ..schemes import Scheme, scheme_for_key
from ..schemes.base import note_reachability
from .calibration import Calibration, calibration_path
from .combine import CombinedEvidence, choose_method, combine_evidence
from .sequential import SequentialPlan, reachable_p_value, verify_sequential
from .transcript import Transcript, TranscriptOracle


class VerificationInterrupted(CopycatchError):
    """The suspect failed mid-verification; the partial transcript is at ``transcript_path``."""

    def __init__(self, message: str, transcript_path: Path | None):
        super().__init__(message)
        self.transcript_path = transcript_path

    @property
    def budget_ran_out(self) -> bool:
        """The query budget ran out before a decision: the suspect did not fail, the evidence is incomplete."""
        return isinstance(self.__cause__, BudgetExceeded)


@dataclasses.dataclass
class VerificationRun:
    """Everything one verification produced (what ``--report`` writes)."""

    evidences: list[Evidence]
    keys: list[Key]
    suspect: dict[str, Any]
    transcript: Transcript
    combined: CombinedEvidence | None = None
    calibrations: dict[str, Calibration] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    report_paths: dict[str, Path] = dataclasses.field(default_factory=dict)  # what write_report wrote, if anything
    signatures: dict[str, Path] = dataclasses.field(default_factory=dict)  # the owner's signatures of those files

    @property
    def alpha(self) -> float:
        return self.evidences[0].alpha

    @property
    def decision(self) -> bool:
        return self.combined.decision if self.combined is not None else self.evidences[0].decision

    @property
    def verdict(self) -> str:
        return self.combined.verdict if self.combined is not None else self.evidences[0].verdict

    @property
    def evidence(self) -> Evidence:
        """The one key's evidence (with several keys, see ``evidences`` and ``combined``)."""
        if len(self.evidences) != 1:
            raise InvalidArgument(f"{len(self.evidences)} keys were verified: read evidences, or combined")
        return self.evidences[0]

    @property
    def p_value(self) -> float:
        """The p-value that decides: the combination's over several keys, else the one key's."""
        return self.combined.p_value if self.combined is not None else self.evidences[0].p_value

    @property
    def queries(self) -> int:
        return sum(e.queries for e in self.evidences)

    @property
    def smallest_attainable_p(self) -> float | None:
        """The smallest deciding p-value (the combination's over several keys) that any answers could have given
        with these keys and query budget; None when a scheme does not state its own."""
        smallest = [e.metrics.get("smallest_attainable_p") for e in self.evidences]
        if any(p is None for p in smallest):
            return None
        if self.combined is None:
            return float(smallest[0])
        # both combinations grow with every p-value, so the smallest ones give the smallest combination
        return fisher_combine(smallest) if self.combined.method == "fisher" else min(holm_adjust(smallest))

    @property
    def conclusive(self) -> bool:
        """False when "stolen" was out of reach (the smallest attainable p-value is above α): "not stolen" then holds
        by construction and says nothing about the suspect. ``copycatch verify`` exits "inconclusive" for it."""
        smallest = self.smallest_attainable_p
        return self.decision or smallest is None or smallest <= self.alpha

    def summary(self) -> str:
        parts = [e.summary() for e in self.evidences]
        if self.combined is not None:
            parts.append(self.combined.summary())
        t = self.transcript.summary(chain=False)
        where = t["path"] or "(not saved)"
        if t["read_only"]:
            where += " (read only: checked offline, not modified)"
        parts.append(
            f"transcript:      {where}, {t['answers_on_record']} answers on record "
            f"({t['replayed_this_session']} replayed), head {t['head'][:16]}…"
        )
        return "\n\n".join(parts)


class _ReplayOnly(Oracle):
    """The suspect in ``offline`` mode: every answer must come from the transcript."""

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        raise SuspectError(
            f"offline: the transcript holds no answer for {len(x)} of the key's inputs; verify "
            "against the suspect itself (without --offline) to ask them"
        )


@dataclasses.dataclass
class LoadedKeys:
    """The keys to verify, flattened from keys, key sets and files of either, in the order given."""

    keys: list[Key]
    calibrations: list[Path | None]  # where each key's calibration file lies (beside its file); None in memory
    independent: bool  # the keys are one key set that declares its parts independent (Fisher is then the default)


def load_keys(keys: Sequence[Key | KeySet | str | os.PathLike]) -> LoadedKeys:
    """Load every key file or key-set file (digests checked), flattening key sets into their parts."""
    loaded: list[Key] = []
    calibrations: list[Path | None] = []
    declared = []
    for source in keys:
        path = Path(source) if isinstance(source, (str, os.PathLike)) else None
        opened = load_key_file(path) if path is not None else source
        parts, independent = open_keys(opened)
        loaded += parts
        declared.append(independent)
        if path is None:
            calibrations += [None] * len(parts)
        elif isinstance(opened, KeySet):
            calibrations += [calibration_path(path, part=i) for i in range(len(parts))]
        else:
            calibrations.append(calibration_path(path))
    if not loaded:
        raise InvalidArgument("give at least one key")
    digests = [k.digest for k in loaded]
    if len(set(digests)) != len(digests):
        raise InvalidArgument("the same key is given twice")
    classes = {k.meta.get("num_classes") for k in loaded} - {None}
    shapes = {tuple(k.meta["input_shape"]) for k in loaded if k.meta.get("input_shape")}
    if len(classes) > 1 or len(shapes) > 1:
        raise InvalidArgument(
            f"the keys are for different models ({sorted(classes)} classes, input shapes "
            f"{sorted(shapes)}); verify them separately"
        )
    return LoadedKeys(loaded, calibrations, independent=declared == [True])


def verify_suspect(
    suspect: Any,
    keys: Sequence[Key | KeySet | str | os.PathLike],
    *,
    alpha: float = 1e-3,
    sequential: bool = True,
    plan: SequentialPlan | None = None,
    combine: str | None = None,
    transcript: Transcript | str | os.PathLike | None = None,
    resume: bool = False,
    offline: bool = False,
    budget: int | None = None,
    postprocess: Sequence[Any] = (),
    suspect_options: dict[str, Any] | None = None,
    num_classes: int | None = None,
    chunk: int = 256,
    calibrations: bool = True,
    progress: bool | None = None,
    session: dict[str, Any] | None = None,
) -> VerificationRun:
    """Verify ``suspect`` against every key (a key set's parts each count as a key); see the module docstring.
    ``combine`` is Holm or Fisher, by default the one :func:`~copycatch.verification.combine.choose_method` picks."""
    Scheme.check_alpha(alpha)
    loaded = load_keys(keys)
    key_list = loaded.keys
    choose_method(combine, loaded.independent)  # a misspelt method fails before any query
    schemes = [scheme_for_key(k) for k in key_list]
    meta = key_list[0].meta
    classes = num_classes or meta.get("num_classes")
    shape = meta.get("input_shape")
    # the key's class names read a suspect that answers names (a Hugging Face endpoint's top-k labels)
    suspect_options = {"class_names": meta.get("class_names"), **(suspect_options or {})}
    if offline:
        oracle, fingerprint, record = _offline_record(suspect, transcript, classes, shape)
    else:
        try:
            oracle, fingerprint, record = _open_record(suspect, transcript, classes, shape, resume, suspect_options)
        except SuspectUnresponsive as exc:
            raise VerificationInterrupted(f"{exc}; {_UNCHANGED}", None) from exc
        # only online: offline, the head must stay the recorded one, for comparison with the evidence's
        record.record_session(
            keys=[k.digest for k in key_list],
            schemes=[k.scheme for k in key_list],
            alpha=alpha,
            sequential=sequential,
            **(session or {}),
        )
    wrapped: Oracle = TranscriptOracle(oracle, record, chunk=chunk, budget=budget)
    if postprocess:
        wrapped = wrapped.postprocess(*postprocess)
    plan = plan or SequentialPlan()
    try:
        evidences = _verify_keys(schemes, key_list, wrapped, alpha, sequential, plan, progress, budget)
    except (CopycatchError, KeyboardInterrupt) as exc:
        path = None if offline else _keep_answers(record, key_list[0])
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise VerificationInterrupted(f"{exc}{_how_to_resume(record, path, transcript, exc)}", path) from exc
    fingerprint.update({"output_kind": wrapped.output_kind})
    returned = getattr(oracle, "returned", None)  # an HTTP suspect's answers in words, e.g. "top-5 label/score"
    if returned:
        for evidence in evidences:
            evidence.details["suspect_returned"] = returned
    settings = {"alpha": alpha, "sequential": sequential, "plan": plan.to_dict(), "combine": combine or "auto"}
    settings.update(budget=budget, offline=offline, postprocess=[str(p) for p in postprocess])
    run = VerificationRun(evidences, key_list, fingerprint, record, settings=settings)
    _conclude(run, loaded, combine=combine, calibrations=calibrations)
    return run


def _conclude(run: VerificationRun, loaded: LoadedKeys, *, combine: str | None, calibrations: bool) -> None:
    """Each key's calibration (when one lies beside its file) and, over several keys, the combined evidence."""
    if calibrations:
        for key, path, evidence in zip(loaded.keys, loaded.calibrations, run.evidences):
            _attach_calibration(evidence, key, path, run)
    if len(run.evidences) > 1:
        run.combined = combine_evidence(run.evidences, alpha=run.alpha, method=combine, independent=loaded.independent)


def _offline_record(
    suspect: Any, transcript: Transcript | str | os.PathLike | None, classes: Any, shape: Any
) -> tuple[Oracle, dict[str, Any], Transcript]:
    """For ``offline``: the transcript to replay (read only), a suspect that only replays, and its fingerprint."""
    if transcript is None:
        raise InvalidArgument("--offline needs the transcript to replay (--transcript FILE or --report DIR)")
    record = transcript if isinstance(transcript, Transcript) else Transcript.load(transcript)
    record.read_only = True  # an offline check must not write to the record it checks
    if classes is None:
        raise InvalidArgument("the key does not record the number of classes; pass num_classes")
    return _ReplayOnly(int(classes), shape, name=str(suspect)), dict(record.suspect), record


def _open_record(
    suspect: Any,
    transcript: Transcript | str | os.PathLike | None,
    classes: Any,
    shape: Any,
    resume: bool,
    suspect_options: dict[str, Any] | None,
) -> tuple[Oracle, dict[str, Any], Transcript]:
    """The opened suspect, its fingerprint, and the transcript to record to (given, resumed, or a new one)."""
    oracle = open_suspect(suspect, num_classes=classes, input_shape=shape, **(suspect_options or {}))
    fingerprint = describe_suspect(suspect, oracle)
    if isinstance(transcript, Transcript):
        record = transcript
    elif transcript is not None:
        record = Transcript.open(transcript, fingerprint, resume=resume)
    elif resume:
        raise InvalidArgument("--resume needs the transcript to continue (--transcript FILE or --report DIR)")
    else:
        record = Transcript(fingerprint)
    return oracle, fingerprint, record


def _keep_answers(record: Transcript, key: Key) -> Path | None:
    """Where the answers so far are on record: the transcript's file, one written now for an in-memory one."""
    path = record.path
    if path is None and record.answered:
        path = record.save_as(Path(f"copycatch-transcript-{key.digest[:12]}.jsonl"))
    return path


_UNCHANGED = (
    "the suspect answered no query this time, so the record is unchanged: run the same command again when it answers "
    "(a larger --deadline waits longer)"
)


def _how_to_resume(record: Transcript, path: Path | None, transcript: Any, exc: BaseException) -> str:
    """The end of the interruption's message: where the answers are and how to continue; for a suspect that stayed
    silent before any answer, that running again is all there is to do; else "" when nothing is on record."""
    if path is None:
        return f"; {_UNCHANGED}" if isinstance(exc, SuspectUnresponsive) else ""
    again = "--resume" if transcript is not None else f"--resume --transcript {path}"
    return f"; {record.answered} answers are on record in {path}: run the same command with {again} to continue"


def _verify_keys(
    schemes: list[Scheme],
    keys: list[Key],
    oracle: Oracle,
    alpha: float,
    sequential: bool,
    plan: SequentialPlan,
    progress: bool | None,
    budget: int | None = None,
) -> list[Evidence]:
    """Each key's evidence, in order; the stopping rule aims at α/k (Holm, and Fisher roughly, need that). With a
    query ``budget``, the smallest attainable p-value each evidence states is the one that many answers can give."""
    stop_alpha = alpha / len(keys)
    evidences = []
    for scheme, key in zip(schemes, keys):
        scheme.check_oracle(oracle)
        if sequential:
            evidence = verify_sequential(
                scheme, oracle, key, alpha=alpha, plan=plan, progress=progress, stop_alpha=stop_alpha
            )
        else:
            evidence = scheme.verify(oracle, key, alpha=alpha, progress=progress)
        scheme.check_oracle(oracle)  # a callable suspect shows that it answers labels only once it has answered
        evidence.details["suspect_output_kind"] = oracle.output_kind
        if budget is not None:
            share = plan.early_share if sequential else None
            smallest = reachable_p_value(scheme, key, oracle.num_classes, early_share=share, queries=budget)
            note_reachability(evidence, smallest, scheme.larger_key)
        evidences.append(evidence)
    return evidences


def _attach_calibration(evidence: Evidence, key: Key, path: Path | None, run: VerificationRun) -> None:
    if path is None or not path.is_file():
        return
    try:
        cal = Calibration.load(path, key=key)
    except CorruptFile as exc:
        evidence.notes.append(f"calibration ignored: {exc}")
        return
    run.calibrations[key.digest] = cal
    empirical = cal.empirical_p_value(evidence.p_value)
    evidence.metrics["calibrated_p_value"] = empirical
    evidence.details["calibration"] = {
        "file": str(path),
        "references": cal.n,
        "empirical_p_value": empirical,
        "false_positive_rates": [cal.false_positive_rate(a) for a in sorted({*cal.alphas, evidence.alpha})],
        "warnings": cal.warnings(),
    }
    evidence.notes.append(
        f"calibrated against {cal.n} innocent reference models: empirical p-value {empirical:.3g} "
        f"(cannot go below {1 / (cal.n + 1):.3g}); the verdict rests on the exact p-value"
    )


def fixed_test(
    suspect: Any, key: Key, *, alpha: float = 1e-3, progress: bool | None = None, power: bool = False
) -> Evidence:
    """The scheme's fixed test on the whole key, with no transcript or calibration: what benchmarks measure.
    ``power`` adds the p-value on the first k key queries, from the same answers (``details["power"]``)."""
    oracle = open_suspect(suspect, num_classes=key.meta.get("num_classes"), input_shape=key.meta.get("input_shape"))
    return scheme_for_key(key).verify(oracle, key, alpha=alpha, progress=progress, power=power)
