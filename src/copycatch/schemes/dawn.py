"""DAWN: dynamic adversarial watermarking at the prediction API.

Paper: S. Szyller, B. G. Atli, S. Marchal and N. Asokan, "DAWN: Dynamic Adversarial Watermarking of Neural
Networks", ACM Multimedia 2021 (arXiv 1906.00830), Sec. 4. The paper's code is not used.

Embedding. Nothing is trained: the model's weights are untouched. ``embed`` draws a 32-byte HMAC secret (from a
generator seeded by the training seed, as DynaMarks does). ``protect(oracle, key)`` wraps the served oracle in
:class:`DawnPerturbation`: for each input row, h = HMAC-SHA256(secret, the row's float32 C-contiguous bytes, the
bytes the server's ledger digests); the row is watermarked iff u = (first 8 bytes of h) / 2^64 < ``fraction``, and
then answered with the wrong label w = (o + 1 + (next 8 bytes of h mod (N-1))) mod N, o the owner's top class: the
probabilities of o and w are swapped (a one-hot answer becomes the wrong one-hot). The same input always gets the
same answer, so a thief cannot average the mark away, and w is uniform over the N-1 other classes. The
post-processor records every watermarked input with o and w (in memory, and in an append-only JSON-lines file next
to the server's ledger: ``copycatch.serve.dawn_records``); a thief that trains on the answers learns the wrong
labels.

Verification. The key from ``embed`` holds no thief's inputs: they accrue at the API. :meth:`Dawn.with_records`
returns a copy of the key carrying one client's records (``verify_x`` float32 inputs exactly as queried,
``verify_owner``, ``verify_wrong``); it recomputes the HMAC on every record and refuses the lot if one was not
selected by the secret or carries another wrong label: the record file is never trusted. ``copycatch key
dawn-records`` joins a client's ledger entries with the record file and writes that key. With ``probes`` > 0
``embed`` also stores that many probe inputs (test-split inputs with noise below 1/1024, redrawn until the secret
selects them): the owner's own records, with which the API itself (or a proxy or cache of it) is recognised.

Null hypothesis: the suspect's answers do not depend on the secret. Each record's w is then uniform over the N-1
classes other than o, independently per distinct input, so among the m distinct records the suspect does not
label o, the number it labels w is exactly Binomial(m, 1/(N-1)); p = P(Binomial(m, 1/(N-1)) >= matches). The
smallest attainable is (1/(N-1))^records: 20 records of a 10-class model reach 8e-20. Labels suffice.

Parameters (defaults):
    fraction (0.005): the share of inputs answered wrongly (the paper's r_w, 0.5 % in its experiments);
        0 < fraction <= 0.5.
    min_records (20): a key with fewer records than this is refused at verification (the evidence from a few
        records is weak and one record is cheap to stumble on); collect more of the client's queries.
    probes (0): probe inputs ``embed`` stores (see above); 0 keeps the key free of verification inputs.

Deviations: the paper selects with a keyed hash of the input and labels wrongly with a second keyed function; we use
one HMAC-SHA256 for both, and swap the two probabilities instead of returning a random distribution. The paper
decides with a threshold on watermark accuracy; we use the exact binomial null above (watermark accuracy is
reported). Records count once per distinct input (a repeated query is the same draw).
"""

from __future__ import annotations

import dataclasses
import hmac
import threading
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..core.params import Params as BaseParams
from ..core.stats import binomial_greater
from ..data.base import Splits
from ..models.base import Classifier
from ..models.io import weights_digest
from ..models.train import TrainConfig, predict_logits
from ..oracles.base import Oracle
from .base import BernoulliOutcomes, Embedding, Scheme, register_scheme

SECRET_BYTES = 32
PROBE_NOISE = 1.0 / 1024  # probes: test inputs moved by at most this much per pixel


def row_bytes(x: Any) -> list[bytes]:
    """Each row's float32 C-contiguous bytes: the bytes the server's ledger digests (``serve.ledger.row_digests``)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return [row.tobytes() for row in arr.reshape(len(arr), -1)] if len(arr) else []


def need_three_classes(num_classes: int, where: str) -> None:
    """With 2 classes the wrong label is the only other one: a suspect matching it carries no evidence."""
    if num_classes < 3:
        raise InvalidArgument(f"DAWN needs at least 3 classes (a wrong label must be a choice), {where} {num_classes}")


def select(secret: bytes, x: Any, fraction: float, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """For each row of ``x``: whether the secret watermarks it, and its label offset in 1..N-1 (w = (o + offset) mod
    N). h = HMAC-SHA256(secret, row bytes); selected iff int(h[:8]) < fraction·2^64; offset = 1 + int(h[8:16]) mod
    (N-1)."""
    need_three_classes(num_classes, "the answers have")
    threshold = int(fraction * 2**64)
    rows = row_bytes(x)
    selected = np.zeros(len(rows), dtype=bool)
    offset = np.zeros(len(rows), dtype=np.int64)
    for i, data in enumerate(rows):
        h = hmac.digest(secret, data, "sha256")
        selected[i] = int.from_bytes(h[:8], "big") < threshold
        offset[i] = 1 + int.from_bytes(h[8:16], "big") % (num_classes - 1)
    return selected, offset


def distinct_first(x: Any) -> np.ndarray:
    """True for the first occurrence of each distinct row (by its float32 bytes)."""
    seen: set[bytes] = set()
    first = np.zeros(len(x), dtype=bool)
    for i, data in enumerate(row_bytes(x)):
        if data not in seen:
            seen.add(data)
            first[i] = True
    return first


@dataclasses.dataclass(frozen=True)
class DawnRecord:
    """One watermarked answer: the input (float32, as queried), the owner's label o and the wrong label w served."""

    x: np.ndarray
    owner: int
    wrong: int


RecordSink = Callable[[Sequence[DawnRecord]], None]


class DawnPerturbation:
    """The API-time post-processor: ``__call__(probs, inputs) -> probs``, row by row and deterministic per input.

    Keeps every record in ``records`` (unless ``remember`` is False) and hands each batch's new records to ``sink``
    (when set: the server's record file) before the answers leave; ``answered`` and ``falsified`` count rows."""

    name = "dawn"
    output_kind = "probs"

    def __init__(self, secret: bytes, fraction: float, *, sink: RecordSink | None = None, remember: bool = True):
        if len(secret) != SECRET_BYTES:
            raise InvalidArgument(f"a DAWN secret has {SECRET_BYTES} bytes, got {len(secret)}")
        self.secret = bytes(secret)
        self.fraction = float(fraction)
        self.sink = sink
        self.remember = remember
        self.records: list[DawnRecord] = []
        self.answered = 0
        self.falsified = 0
        self._lock = threading.Lock()

    def __call__(self, probs: torch.Tensor, inputs: torch.Tensor | None = None) -> torch.Tensor:
        if inputs is None:
            raise InvalidArgument("DAWN selects answers by their inputs; the post-processor was called without them")
        if len(inputs) != len(probs):
            raise InvalidArgument(f"{len(probs)} answers for {len(inputs)} inputs")
        n = probs.shape[1]
        selected, offset = select(self.secret, inputs, self.fraction, n)
        out = probs.clone()
        rows = torch.from_numpy(np.flatnonzero(selected))
        new: list[DawnRecord] = []
        if len(rows):
            owner = probs[rows].argmax(1)
            wrong = (owner + torch.from_numpy(offset[selected])) % n
            top, other = probs[rows, owner], probs[rows, wrong]
            out[rows, owner], out[rows, wrong] = other, top
            tied = out[rows].argmax(1) != wrong  # another class tied with the top one: answer the wrong one-hot
            if tied.any():
                out[rows[tied]] = torch.nn.functional.one_hot(wrong[tied], n).to(out.dtype)
            x = inputs.detach().cpu().float().numpy()
            new = [DawnRecord(x[r].copy(), int(o), int(w)) for r, o, w in zip(rows.tolist(), owner, wrong)]
        with self._lock:
            if new and self.sink is not None:
                self.sink(new)  # recorded before the answer leaves; a failing sink withholds it
            if self.remember:
                self.records.extend(new)
            self.answered += len(probs)
            self.falsified += len(new)
        return out

    @property
    def falsified_share(self) -> float:
        return self.falsified / self.answered if self.answered else 0.0

    def spec(self) -> str:
        return self.name  # the secret stays secret


def find_perturbations(oracle: Any) -> list[DawnPerturbation]:
    """Every :class:`DawnPerturbation` in an oracle's post-processing chain (the server attaches its sink)."""
    found: list[DawnPerturbation] = []
    seen: set[int] = set()
    while oracle is not None and id(oracle) not in seen:
        seen.add(id(oracle))
        found += [p for p in getattr(oracle, "processors", ()) if isinstance(p, DawnPerturbation)]
        oracle = getattr(oracle, "inner", None)
    return found


@register_scheme
class Dawn(Scheme):
    """DAWN (Szyller et al. 2021): the API answers a keyed-hash-selected share of inputs with a wrong label."""

    name = "dawn"
    acts_at = "api"
    needs = "labels"
    sequential = True
    pretrain = True
    default_arch = "cnn-small"
    # The keyed hash reads any input's bytes, but verification asks the records again as float32: int64 token ids
    # would reach a text model as floats. Audio records are float32 already (probes are kept within [0, 1], though).
    modalities: ClassVar[tuple[str, ...]] = ("image", "audio")
    tiny_params: ClassVar[dict[str, Any]] = {"probes": 30}
    # The served API answers a share ``fraction`` of inputs wrongly: its accuracy cost (which the accuracy-cost guard
    # measures on the protected API) is about ``fraction``, and so is the rate at which records accrue.
    strength = "fraction"
    per_item = ("verify_x", "verify_owner", "verify_wrong")
    larger_key = "more records (a longer stretch of the client's queries, or a larger fraction)"
    null_hypothesis = (
        "The suspect's answers do not depend on the secret: each record's wrong label is then uniform over the N-1 "
        "classes other than the owner's, independently per distinct input, so among the records the suspect does "
        "not label as the owner, its matches with the wrong labels are Binomial(m, 1/(N-1))."
    )

    @dataclasses.dataclass(frozen=True)
    class Params(BaseParams):
        kind = "DAWN scheme"
        fraction: float = 0.005
        min_records: int = 20
        probes: int = 0

        def validate(self) -> None:
            if not 0.0 < self.fraction <= 0.5:
                raise InvalidArgument(f"need 0 < fraction <= 0.5, got fraction={self.fraction}")
            if self.min_records < 1:
                raise InvalidArgument(f"min_records must be >= 1, got min_records={self.min_records}")
            if self.probes < 0:
                raise InvalidArgument(f"probes must be >= 0, got probes={self.probes}")

    # -- embed -----------------------------------------------------------------------------------------------------
    def embed(
        self, model: Classifier, splits: Splits, *, train: TrainConfig | None = None, progress: bool | None = None
    ) -> Embedding:
        """Draw the secret (and the probes, when asked); ``model`` (already trained) is returned untouched."""
        p = self.params
        train = train or TrainConfig()
        before = weights_digest(model)
        need_three_classes(splits.num_classes, "the data has")
        generator = self.key_generator(train.seed, 86028157)
        secret = torch.randint(256, (SECRET_BYTES,), generator=generator, dtype=torch.uint8)
        tensors = {"secret": secret}
        if p.probes:
            x = self._probes(bytes(secret.tolist()), splits, p.probes, generator)
            owner = predict_logits(model, x).argmax(1)
            _, offset = select(bytes(secret.tolist()), x, p.fraction, splits.num_classes)
            wrong = (owner + torch.from_numpy(offset)) % splits.num_classes
            tensors.update({"verify_x": x, "verify_owner": owner.long(), "verify_wrong": wrong.long()})
        if weights_digest(model) != before:
            raise RuntimeError("DAWN changed the model's weights; this is a bug")
        key = Key(scheme=self.name, params=p.to_dict(), tensors=tensors, meta=self.key_meta(splits, model))
        model.provenance.update({"scheme": self.name, "key_digest": key.digest})
        info = {"weights_untouched": True, "fraction": p.fraction, "probes": p.probes}
        return Embedding(model, key, info)

    def _probes(self, secret: bytes, splits: Splits, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` test-split inputs (owner_holdout's when the test split is empty), each with fresh noise in
        ±1/1024 until the secret selects it (about 1/fraction tries each)."""
        pool = splits.test.x if len(splits.test) else splits.owner_holdout.x
        if not len(pool):
            raise InvalidArgument("DAWN draws its probes from the test split (or owner_holdout), both empty")
        fraction, classes = self.params.fraction, splits.num_classes
        batch = max(16, int(4 / fraction))
        probes: list[torch.Tensor] = []
        for i in range(n):
            base = pool[i % len(pool)].float()
            for _ in range(1000):  # each round misses with probability (1 - fraction)^batch < e^-4
                noise = (torch.rand((batch, *base.shape), generator=generator) * 2 - 1) * PROBE_NOISE
                candidates = (base + noise).clamp(0, 1).float()
                hits = np.flatnonzero(select(secret, candidates, fraction, classes)[0])
                if len(hits):
                    probes.append(candidates[int(hits[0])])
                    break
            else:  # pragma: no cover - probability e^-4000
                raise RuntimeError("DAWN found no probe the secret selects; this is a bug")
        return torch.stack(probes)

    def secret(self, key: Key) -> bytes:
        s = key["secret"]
        if s.dtype != torch.uint8 or s.numel() != SECRET_BYTES:
            raise InvalidArgument(
                f"DAWN key secret must be {SECRET_BYTES} uint8 values, got {s.dtype} {tuple(s.shape)}"
            )
        return bytes(s.tolist())

    def protect(self, oracle: Oracle, key: Key) -> Oracle:
        self.check_key(key, oracle)
        p = self.Params.from_dict(key.params)
        need_three_classes(oracle.num_classes, "the served model has")
        return oracle.postprocess(DawnPerturbation(self.secret(key), p.fraction))

    # -- records ---------------------------------------------------------------------------------------------------
    def with_records(
        self, key: Key, inputs: Any, owner_labels: Any, wrong_labels: Any, *, source: str | None = None
    ) -> Key:
        """A copy of ``key`` whose verification inputs are these records (replacing any the key held), identical
        inputs kept once. Every record is checked against the secret: an input the secret does not select, or a wrong
        label that is not the one the secret gives for its owner label, refuses them all (never trust a record file).
        """
        self.check_key(key)
        p = self.Params.from_dict(key.params)
        x = torch.as_tensor(np.asarray(inputs, dtype=np.float32)) if not isinstance(inputs, torch.Tensor) else inputs
        x = x.detach().cpu().float().contiguous()
        owner = torch.as_tensor(np.asarray(owner_labels)).long().reshape(-1)
        wrong = torch.as_tensor(np.asarray(wrong_labels)).long().reshape(-1)
        if not len(x):
            raise InvalidArgument("no DAWN records: the client triggered no watermarked answers")
        if not len(x) == len(owner) == len(wrong):
            raise InvalidArgument(f"{len(x)} record inputs but {len(owner)} owner and {len(wrong)} wrong labels")
        shape = key.meta.get("input_shape")
        if shape and tuple(x.shape[1:]) != tuple(shape):
            raise InvalidArgument(f"record inputs shaped {tuple(x.shape[1:])}, the key is for {tuple(shape)}")
        if not torch.isfinite(x).all():
            raise InvalidArgument("record inputs contain NaN or Inf")
        n = int(key.meta.get("num_classes") or int(max(owner.max(), wrong.max())) + 1)
        for name, labels in (("owner", owner), ("wrong", wrong)):
            if labels.min() < 0 or labels.max() >= n:
                raise InvalidArgument(
                    f"{name} labels must be in [0, {n}), got {int(labels.min())}..{int(labels.max())}"
                )
        selected, offset = select(self.secret(key), x, p.fraction, n)
        bad = np.flatnonzero(~selected | ((owner.numpy() + offset) % n != wrong.numpy()))
        if len(bad):
            raise InvalidArgument(
                f"{len(bad)} of {len(x)} DAWN records do not match the key's secret (first: record {int(bad[0])}): "
                "the input was not selected or its wrong label differs; the records were altered, or come from "
                "another key"
            )
        keep = torch.from_numpy(np.flatnonzero(distinct_first(x)))
        tensors = dict(key.tensors)
        tensors.update({"verify_x": x[keep], "verify_owner": owner[keep], "verify_wrong": wrong[keep]})
        meta = {**key.meta, "dawn_records": {"records": len(keep), "source": source}}
        return Key(key.scheme, dict(key.params), tensors, meta)

    def key_items(self, key: Key) -> int:
        return len(key.tensors["verify_x"]) if "verify_x" in key.tensors else 0

    # -- verify ----------------------------------------------------------------------------------------------------
    def verification_inputs(self, key: Key) -> torch.Tensor:
        p = self.Params.from_dict(key.params)
        if "verify_x" not in key.tensors:
            raise InvalidArgument(
                "this DAWN key holds no records: the inputs a client queried accrue at the API; make a verification "
                "key from the server's ledger and record file with `copycatch key dawn-records` (or "
                "Dawn.with_records)"
            )
        records = self.key_items(key)
        if records < p.min_records:
            raise InvalidArgument(
                f"this DAWN key holds {records} records, fewer than min_records={p.min_records}: collect more of "
                "the client's queries (a longer ledger stretch) before verifying, or lower min_records"
            )
        return key["verify_x"].float()

    def attainable_p_value(self, key: Key, num_classes: int) -> float:
        """Every distinct record answered with its wrong label: (1/(N-1))^records."""
        if "verify_x" not in key.tensors:
            return 1.0
        records = int(distinct_first(key["verify_x"]).sum())
        return binomial_greater(records, records, 1.0 / (num_classes - 1))

    def bernoulli_outcomes(self, answers: torch.Tensor, key: Key) -> BernoulliOutcomes:
        """Per record, in key order: 1 the suspect answered the wrong label w, 0 another class but the owner's, -1 not
        counted (the owner's label o, or an input already asked). Null rate 1/(N-1)."""
        n = answers.shape[1]
        need_three_classes(n, "the suspect answers")
        k = len(answers)
        if k > self.key_items(key):
            raise InvalidArgument(f"{k} answers for a key of {self.key_items(key)} records")
        s = answers.argmax(1).long()
        owner, wrong = key["verify_owner"][:k].long(), key["verify_wrong"][:k].long()
        first = torch.from_numpy(distinct_first(key["verify_x"][:k]))
        outcomes = torch.where(s == wrong, 1, 0).to(torch.int8)
        outcomes[(s == owner) | ~first] = -1
        return BernoulliOutcomes(outcomes, 1.0 / (n - 1), statistic_name="answers equal to the wrong label")

    def evidence_from_answers(self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int) -> Evidence:
        """matches = distinct records answered w, m = those not answered o; p = P(Binomial(m, 1/(N-1)) >= matches),
        exact under the null."""
        p = self.Params.from_dict(key.params)
        if len(answers) != self.key_items(key):
            raise InvalidArgument(f"{len(answers)} answers for a key of {self.key_items(key)} records")
        classes = key.meta.get("num_classes")
        if classes is not None and answers.shape[1] != int(classes):
            raise InvalidArgument(f"answers have {answers.shape[1]} classes, the key is for {classes}")
        outcome = self.bernoulli_outcomes(answers, key)
        records = int(distinct_first(key["verify_x"]).sum())
        matches, m = outcome.successes, outcome.counted
        p_value = binomial_greater(matches, m, outcome.null_rate)
        notes = []
        if records < p.min_records:
            notes.append(f"only {records} records, fewer than min_records={p.min_records}")
        return self.evidence(
            key,
            statistic_name="distinct records answered with the wrong label",
            statistic=float(matches),
            p_value=p_value,
            alpha=alpha,
            queries=queries,
            exact=True,
            metrics={
                "records": records,
                "matches": matches,
                "not_owner_label": m,
                "owner_label": int(records - m),
                "watermark_accuracy": matches / records if records else float("nan"),
                "null_rate": outcome.null_rate,
            },
            notes=notes,
        )
