"""Signed evidence: the owner signs what ``copycatch verify`` wrote, and anyone holding the owner's public key checks
it (``copycatch evidence check``), without the key that proves theft and without asking the suspect anything.

**Signing** (``verify --sign-with owner.key``, :func:`sign_run`): ``evidence.json`` names the owner's public key
inside what is signed (``signer``: algorithm, fingerprint) and gets a detached signature ``evidence.json.sig``;
the transcript gets one too (:mod:`copycatch.core.signing` describes the files). The evidence lists every transcript
line's hash, so its signature alone binds every answer the suspect gave; the transcript's own signature lets it be
checked on its own. A run that rewrites a signed file without a signing key removes the signature that no longer
matches it.

**Checking** (:func:`check_evidence`) an evidence file:

1. the signature, with the given public key;
2. each key's p-value, recomputed from what the evidence records: the exact binomial tail ``P(Bin(n, q) >= k)``
   for a scheme with a binomial null tested on the whole key, the sequential test's p-value from its recorded
   trajectory (:func:`~copycatch.verification.sequential.combined_p_value`) when it stopped early; over several
   keys, Holm's or Fisher's combination of the per-key p-values; and the verdict from the deciding p-value and α;
3. the transcript (``--transcript``, by default ``transcript.jsonl`` beside the evidence): its hash chain, that its
   lines are the ones whose hashes the signed evidence lists (a transcript edited and re-chained fails here), and
   its own signature when it has one;
4. with the key (``--key``; an owner may disclose it to an expert or a court once the case is made): the whole
   evidence recomputed from the transcript's recorded answers (``verify --offline``), so that which answers count
   as matches is checked too.

Without the key, which answers are matches cannot be known (the key's secret labels decide it): step 2 checks the
p-value from the recorded counts, step 3 that the recorded answers behind them are intact, and a scheme whose
statistic is not a binomial count is recomputed in step 4 only. A transcript file checked on its own gets steps 1
and 3.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..core.errors import CopycatchError, CorruptFile, InvalidArgument
from ..core.evidence import NOT_STOLEN, STOLEN
from ..core.key import Key
from ..core.keyset import KeySet
from ..core.signing import ALGORITHM, check_signature, fingerprint, load_public_key, sign_file, signature_path
from ..core.stats import binomial_greater, fisher_combine, holm_adjust
from .report import FORMAT as EVIDENCE_FORMAT
from .sequential import SequentialPlan, combined_p_value, log_mixture_e_value
from .session import load_keys, verify_suspect
from .transcript import FORMAT as TRANSCRIPT_FORMAT
from .transcript import verify_chain

_REL_TOL = 1e-9  # the recomputation runs the same code; the slack only absorbs another scipy's last bits


@dataclasses.dataclass
class Check:
    """One check: passed (``ok``), failed, or not made (``ok`` None; ``detail`` says what would make it)."""

    name: str
    ok: bool | None
    detail: str


@dataclasses.dataclass
class EvidenceCheck:
    """What :func:`check_evidence` found about one file."""

    file: Path
    kind: str  # "evidence", "transcript", or "unknown" (the content is neither)
    public_key_sha256: str
    checks: list[Check] = dataclasses.field(default_factory=list)
    verdict: str | None = None  # the evidence's verdict and deciding p-value, as recorded
    p_value: float | None = None

    @property
    def ok(self) -> bool:
        """Every check made passed (one not made, for want of the key or a transcript, does not fail)."""
        return all(c.ok is not False for c in self.checks)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.ok is False]

    def add(self, name: str, ok: bool | None, detail: str) -> bool | None:
        self.checks.append(Check(name, ok, detail))
        return ok

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["file"] = str(self.file)
        d["ok"] = self.ok
        return d


# ---------------------------------------------------------------------------------------------------------------------
# signing
# ---------------------------------------------------------------------------------------------------------------------


def signer_record(private_key: Ed25519PrivateKey, file_name: str = "evidence.json") -> dict[str, Any]:
    """The evidence's ``signer`` field: which key signs the file and how to check it."""
    sig = signature_path(file_name).name
    return {
        "algorithm": ALGORITHM,
        "public_key_sha256": fingerprint(private_key.public_key()),
        "signature_file": f"{sig}: the 64 raw bytes of the {ALGORITHM} signature of this file's exact bytes",
        "how_to_check": f"copycatch evidence check {file_name} --public-key OWNER.pub "
        f"(or: openssl pkeyutl -verify -pubin -inkey OWNER.pub -rawin -in {file_name} -sigfile {sig})",
    }


def sign_run(run: Any, private_key: Ed25519PrivateKey | None) -> dict[str, Path]:
    """Sign the evidence file and the transcript file a verification wrote; returns the signatures by file kind.

    Without a key, the signatures those files carried from an earlier run are removed: the files changed, so the
    signatures could only fail, and a stale one must not pass for the owner's word on the new content.
    """
    files = {}
    if "json" in run.report_paths:
        files["evidence"] = Path(run.report_paths["json"])
    record = run.transcript
    if record.path is not None and not record.read_only:  # a read-only (offline) transcript is not this run's
        files["transcript"] = Path(record.path)
    if private_key is None:
        for path in files.values():
            signature_path(path).unlink(missing_ok=True)
        return {}
    return {kind: sign_file(path, private_key) for kind, path in files.items()}


# ---------------------------------------------------------------------------------------------------------------------
# checking
# ---------------------------------------------------------------------------------------------------------------------


def check_evidence(
    file: str | os.PathLike,
    public_key: Ed25519PublicKey | str | os.PathLike,
    *,
    transcript: str | os.PathLike | None = None,
    keys: Sequence[Key | KeySet | str | os.PathLike] = (),
) -> EvidenceCheck:
    """Check a signed evidence file or transcript with the owner's public key (see the module docstring).

    Usage errors (a missing file, an unreadable public key or key, ``keys`` without a transcript) raise
    :class:`~copycatch.core.errors.CopycatchError`; everything found wrong with the file itself is a failed check.
    """
    path = Path(file)
    if not path.is_file():
        raise InvalidArgument(f"{path}: no such file")
    if transcript is not None and not Path(transcript).is_file():
        raise InvalidArgument(f"transcript {transcript}: no such file")
    public = public_key if isinstance(public_key, Ed25519PublicKey) else load_public_key(public_key)
    disclosed = load_keys(keys).keys if keys else []
    result = EvidenceCheck(path, "unknown", fingerprint(public))
    result.add("signature", *check_signature(path, public))
    text = path.read_bytes().decode("utf-8", errors="replace")
    doc = _evidence_document(text)
    if doc is not None:
        result.kind = "evidence"
        _check_evidence_document(result, doc, path, public, transcript, disclosed)
    elif _is_transcript(text):
        result.kind = "transcript"
        if keys:
            raise InvalidArgument("--key recomputes an evidence file's p-values: check the evidence file instead")
        _check_transcript(result, path, public, recorded=None, own_signature=False)
    else:
        result.add(
            "content",
            False,
            f"not a copycatch evidence record ({EVIDENCE_FORMAT}) or transcript ({TRANSCRIPT_FORMAT}) "
            "(damaged, or another file)",
        )
    return result


# What a damaged or hostile file can make a parser or a record's reader raise: each is a failed check, not a crash.
_MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError)


def _evidence_document(text: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == EVIDENCE_FORMAT else None


def _is_transcript(text: str) -> bool:
    try:
        first = json.loads(text.split("\n", 1)[0])
    except (ValueError, RecursionError):
        return False
    return isinstance(first, dict) and first.get("kind") == "header" and first.get("format") == TRANSCRIPT_FORMAT


def _check_evidence_document(
    result: EvidenceCheck,
    doc: dict[str, Any],
    path: Path,
    public: Ed25519PublicKey,
    transcript_path: str | os.PathLike | None,
    keys: list[Key],
) -> None:
    """Steps 2 to 4 of the module docstring, each a check of its own, on an evidence document."""
    if transcript_path is None and (path.parent / "transcript.jsonl").is_file():
        transcript_path = path.parent / "transcript.jsonl"
    if keys and transcript_path is None:
        raise InvalidArgument(
            f"--key recomputes the evidence from the recorded answers: give the transcript (--transcript FILE; "
            f"none lies beside {path})"
        )
    result.verdict, result.p_value = doc.get("verdict"), doc.get("p_value")
    _guarded(result, "signer", lambda: _signer(doc, result.public_key_sha256))
    items = doc.get("evidence")
    if not isinstance(items, list) or not items:
        result.add("p-values", False, "the evidence record lists no per-key evidence")
        return
    recomputed = []
    for i, item in enumerate(items):
        recomputed.append(_guarded(result, f"p-value of key {i + 1}", lambda item=item: _item_p_value(item)))
    _guarded(result, "verdict", lambda: _verdict(doc, recomputed))
    if transcript_path is None:
        result.add("transcript", None, "not checked: give it with --transcript FILE to check the recorded answers")
        return
    recorded = doc.get("transcript")
    chain_ok = _check_transcript(
        result, Path(transcript_path), public, recorded=recorded if isinstance(recorded, dict) else {}
    )
    if not keys:
        result.add("answers recomputed", None, "not checked: which answers are matches needs the key (--key KEY)")
    elif chain_ok:
        try:
            _recompute_with_keys(result, doc, Path(transcript_path), keys)
        except _MALFORMED as exc:
            result.add("answers recomputed", False, f"the evidence record is malformed ({exc!r})")
    else:
        result.add("answers recomputed", None, "not checked: the transcript failed its checks")


def _guarded(result: EvidenceCheck, name: str, check: Any) -> Any:
    """Run one check that returns ``(ok, detail, value)``; a malformed record (a field missing or of the wrong type,
    which only a damaged or hand-made file has) fails the check instead of raising."""
    try:
        ok, detail, value = check()
    except (*_MALFORMED, CopycatchError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        result.add(name, False, f"the evidence record is malformed ({what})")
        return None
    result.add(name, ok, detail)
    return value


def _same(a: Any, b: Any) -> bool:
    return math.isclose(float(a), float(b), rel_tol=_REL_TOL, abs_tol=0.0)


def _signer(doc: dict[str, Any], given: str) -> tuple[bool | None, str, None]:
    signer = doc.get("signer")
    if signer is None:
        return None, "the evidence names no signer (it was not written with --sign-with)", None
    named = signer["public_key_sha256"]
    if named != given:
        return False, f"the evidence names the signing key sha256 {named}, not the given key's {given}", None
    return True, f"the evidence names the given public key (sha256 {given[:16]}…) as its signer", None


def _item_p_value(item: dict[str, Any]) -> tuple[bool | None, str, float | None]:
    """One key's p-value recomputed from its recorded counts (``None`` when its null is not a binomial count)."""
    recorded = float(item["p_value"])
    label = f"{item['scheme']}, key {str(item['key_digest'])[:12]}…"
    null = (item.get("details") or {}).get("null_model")
    if not null or null.get("type") != "binomial":
        return None, f"{label}: not a binomial count; recomputed only with the key (--key)", None
    k, n, q = int(null["observed"]), int(null["trials"]), float(null["rate"])
    seq = item["details"].get("sequential") or {}
    if seq.get("used"):
        p, how = _sequential_p_value(item, seq, k, n, q)
    else:
        p, how = binomial_greater(k, n, q), f"P(Binomial({n}, {q:.4g}) >= {k})"
    decided = (p <= float(item["alpha"])) == bool(item["decision"])
    ok = _same(p, recorded) and decided
    detail = f"{label}: {how} = {p:.6g}, recorded {recorded:.6g}"
    if not decided:
        detail += f"; yet the recorded decision at alpha {item['alpha']} is {item['decision']}"
    return ok, detail, p


def _sequential_p_value(item: dict[str, Any], seq: dict[str, Any], k: int, n: int, q: float) -> tuple[float, str]:
    """The sequential test's p-value from its recorded trajectory: the largest e-value of the recorded counts, and
    the binomial bound of the last counts with every unasked input of the key a counted failure."""
    trajectory = seq["trajectory"]
    last = trajectory[-1]
    if (int(last["successes"]), int(last["counted"])) != (k, n):
        raise CorruptFile(f"the trajectory ends at {last['successes']} of {last['counted']}, the null model at {k}/{n}")
    max_log_e = max([0.0] + [log_mixture_e_value(int(s["successes"]), int(s["counted"]), q) for s in trajectory])
    remaining = int(item["metrics"]["key_size"]) - int(last["queried"])
    w = float(seq["early_share"])
    p = combined_p_value(max_log_e, k, n, remaining, q, w)[2]
    batches = f"{len(trajectory)} batch{'es' if len(trajectory) != 1 else ''}"
    return p, f"sequential test ({batches}, {k} of {n} counted, {remaining} unasked, w = {w:g})"


def _verdict(doc: dict[str, Any], recomputed: list[float | None]) -> tuple[bool, str, None]:
    """The deciding p-value (the combination over several keys) and the verdict it gives at the recorded α."""
    items = doc["evidence"]
    ps = [p if p is not None else float(item["p_value"]) for p, item in zip(recomputed, items)]
    combined = doc.get("combined")
    if combined is None:
        deciding, how = ps[0], "the one key's p-value"
    else:
        method = combined["method"]
        deciding = fisher_combine(ps) if method == "fisher" else min(holm_adjust(ps))
        how = f"{method} combination of {len(ps)} keys' p-values"
        if not _same(deciding, combined["p_value"]):
            return False, f"{how} = {deciding:.6g}, recorded {combined['p_value']:.6g}", None
    alpha = float(doc["alpha"])
    verdict = STOLEN if deciding <= alpha else NOT_STOLEN
    ok = verdict == doc["verdict"] and bool(doc["decision"]) == (verdict == STOLEN)
    ok = ok and _same(deciding, doc["p_value"])
    return ok, f"{verdict.upper()}: {how} {deciding:.4g} vs alpha {alpha:g}; recorded {doc['verdict'].upper()}", None


def _check_transcript(
    result: EvidenceCheck,
    path: Path,
    public: Ed25519PublicKey,
    *,
    recorded: dict[str, Any] | None,
    own_signature: bool = True,
) -> bool:
    """The transcript's hash chain, that it is the one ``recorded`` (the evidence's transcript summary) lists, and
    (``own_signature``) its signature. Returns whether the transcript passed."""
    lines, problem = _read_lines(path)
    if problem is None:
        try:
            head = verify_chain(lines, name=str(path))
        except CorruptFile as exc:
            problem = str(exc)
    ok = problem is None
    if not ok:
        result.add("transcript chain", False, problem)
    else:
        answers = sum(line["n"] for line in lines if line.get("kind") == "answers" and isinstance(line.get("n"), int))
        result.add("transcript chain", True, f"{path}: {len(lines)} lines, {answers} answers, head {head[:16]}…")
        if recorded is not None:
            hashes = [line["hash"] for line in lines]
            ok = bool(result.add("transcript is the evidence's", *_matches_record(hashes, recorded)))
    if own_signature:
        if signature_path(path).is_file():
            ok = bool(result.add("transcript signature", *check_signature(path, public))) and ok
        else:
            result.add("transcript signature", None, "none; its lines are bound by the signed evidence's hash list")
    return ok


def _read_lines(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    lines = []
    for i, raw in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines()):
        try:
            line = json.loads(raw)
        except (ValueError, RecursionError):
            return lines, f"{path}: line {i + 1} is not valid JSON"
        if not isinstance(line, dict):
            return lines, f"{path}: line {i + 1} is not a transcript record"
        lines.append(line)
    if not lines or lines[0].get("kind") != "header" or lines[0].get("format") != TRANSCRIPT_FORMAT:
        return lines, f"{path}: not a copycatch transcript (expected a {TRANSCRIPT_FORMAT} header)"
    return lines, None


def _matches_record(hashes: list[str], recorded: dict[str, Any]) -> tuple[bool, str]:
    """Whether the transcript's line hashes start with the ones the evidence lists (a later session may add more)."""
    chain = recorded.get("chain")
    if not isinstance(chain, list) or not chain:
        return False, "the evidence lists no transcript line hashes to compare with"
    for i, (ours, theirs) in enumerate(zip(hashes, chain)):
        if ours != theirs:
            return False, f"line {i + 1} is not the one the evidence lists (hash {ours[:16]}…, listed {theirs[:16]}…)"
    if len(hashes) < len(chain):
        return False, f"the transcript has {len(hashes)} lines, the evidence lists {len(chain)}"
    later = len(hashes) - len(chain)
    extra = f"; {later} lines were added after the evidence was written" if later else ""
    return True, f"its first {len(chain)} lines are the ones the evidence lists{extra}"


def _recompute_with_keys(result: EvidenceCheck, doc: dict[str, Any], path: Path, keys: list[Key]) -> None:
    """Step 4: the evidence recomputed offline from the transcript's answers with the disclosed key(s)."""
    by_digest = {k.digest: k for k in keys}
    listed = [str(item["key"]["digest"]) for item in doc["evidence"]]
    if sorted(by_digest) != sorted(listed):
        given = list(by_digest)
        result.add(
            "answers recomputed",
            False,
            f"the keys given (digests {', '.join(d[:12] for d in given)}) are not the ones the evidence was "
            f"computed with ({', '.join(d[:12] for d in listed)})",
        )
        return
    settings = doc["settings"]
    try:
        run = verify_suspect(
            str((doc.get("suspect") or {}).get("identity", "suspect")),
            [by_digest[d] for d in listed],  # in the evidence's order, whatever order they were given in
            alpha=float(settings["alpha"]),
            sequential=bool(settings["sequential"]),
            plan=SequentialPlan.from_dict(settings["plan"]),
            combine=None if settings.get("combine") in (None, "auto") else settings["combine"],
            transcript=path,
            offline=True,
            budget=settings.get("budget"),
            postprocess=settings.get("postprocess") or (),
            calibrations=False,
            progress=False,
        )
    except CopycatchError as exc:
        result.add("answers recomputed", False, f"the recorded answers do not give the evidence: {exc}")
        return
    for i, (evidence, item) in enumerate(zip(run.evidences, doc["evidence"])):
        same = _same(evidence.p_value, item["p_value"]) and _same(evidence.statistic, item["statistic"])
        result.add(
            f"answers recomputed, key {i + 1}",
            same and evidence.queries == int(item["queries"]),
            f"{evidence.statistic_name} = {evidence.statistic:g} from {evidence.queries} recorded answers, "
            f"p = {evidence.p_value:.6g} (recorded {item['statistic']:g}, {item['queries']} answers, "
            f"p = {float(item['p_value']):.6g})",
        )
    if run.combined is not None:
        result.add(
            "answers recomputed, combined",
            _same(run.p_value, doc["p_value"]),
            f"{run.combined.method} p = {run.p_value:.6g} (recorded {float(doc['p_value']):.6g})",
        )
