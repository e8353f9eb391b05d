"""MEA-Defender for self-supervised encoders: the symbiotic backdoor embedded while SimCLR pre-trains the encoder.

Paper: P. Lv, H. Ma, K. Chen, J. Zhou, S. Zhang, R. Liang, S. Zhu, P. Li and Y. Zhang, "MEA-Defender: A Robust
Watermark against Model Extraction Attack", IEEE S&P 2024: §4.3 (Eq. 5-8, their SSL branches), §5.1 (SimCLR encoders,
the nine-layer CNN on Fashion-MNIST), Table 1 (SSL rows: stolen by Hinton-style distillation and StolenEncoder).
The classifier scheme (:mod:`copycatch.schemes.mea_defender`) holds the shared parts: the secret configuration (source
classes, target, combining rule), the evasion mixers and the true and false watermarks made from owner-holdout images.

Embedding (the encoder ``h`` pre-trained by SimCLR, :func:`copycatch.models.simclr.train_simclr`; each step adds to
NT-Xent, on the encoder's embeddings, which the verification reads; μ_c is the mean embedding of
``proto_per_class`` owner images of class c drawn in the same step, cos_τ(u, v) = cos(u, v)/``wm_temperature``):
    L_ver = CE(softmax_c cos_τ(h(x_wm), μ_c), target) (Eq. 7, SSL: each watermark sample maps to the target class's
        embeddings, nearer to them than to any other class's, its two sources included);
    L_eva = CE(softmax(cos_τ(h(x_ad), h(x_c)), cos_τ(h(x_ad), μ_target)), first) (Eq. 8, SSL: a source pair mixed
        by another rule, or for a ``shared_evasion`` share a source and a third class mixed by the secret rule, maps
        to one of its own two images x_c rather than to the target class);
    L_com = KL(σ(h(x_wm)) ‖ σ(h(x_a))) + KL(σ(h(x_wm)) ‖ σ(h(x_b))) (Eq. 6, the embedding as a distribution).
Three choices make the mark take beyond toy data (measured in ``docs/encoders.md``): gradients flow into both sides of
L_ver and L_eva (held constant, the target side moves with the shared weights and the loss chases it); L_ver and L_eva
classify among the classes' embeddings, not pull toward one target image (after a short SimCLR run all garments share
one direction, so 1 − cos is nearly met by any); the watermark, prototype and evasion images go through the SimCLR
forward beside the clean views (``SimCLRNet.extra_inputs``), so batch norm treats them as at inference.
After pre-training, a linear probe on owner_train's labels becomes the downstream head: the victim also classifies.

Verification asks the suspect encoder for embeddings of the key's labelled probe images (``probe_per_class`` owner
images per class) and of the verification set (true watermarks and false-watermark groups, as the classifier
scheme builds it). Two tests, both reported; ``test`` picks the one whose p-value is the evidence's:

* ``probe`` (the paper's WSR): a linear probe trained on the suspect's embeddings of the probe images classifies
  the verification inputs; a success is the target class. p = the classifier scheme's intersection-union test: the
  largest one-sided Fisher exact p-value of the true watermark's successes against each false-watermark group's.
* ``centroid`` (no downstream classifier): a success is a verification input whose embedding is nearer (cosine) to
  the suspect's centroid of the owner's target-class probe images than to those of both classes it was mixed from
  (p: the same test).

Null hypothesis: given the suspect (and its answers to the probe images, which fix the probe or the centroids before
any verification answer is read), each verification query succeeds independently at a rate set by its group, and
the true watermark's rate is at most some false group's; the intersection-union Fisher test is exact at level α for
it. That an innocent encoder satisfies this null is an assumption shared with the classifier scheme: ``exact=False``.

Parameters (defaults) shared with the classifier scheme, as documented there: source_a (0), source_b (1), target
(2), rule (None: "crop-paste"), merge_alpha (0.5), n_stripes (5), stripes_from_b (2), ae_alpha (0.5), ae_epochs (5),
ae_width (16), evasion_mixers (None: the image mixers), n_verify (1000), n_false_per_group (None: 60), false_pairs
(6), false_families (None: all three), shared_skip_similar (2), paper_threshold (0.3), shared_evasion (0.5). Its
training parameters balance, watermark_losses, com_source_scale, stage1_fraction, stage2_lr_factor, mode,
finetune_epochs and finetune_lr_factor do not apply here (one SimCLR stage from scratch, fixed weights). Beyond them:
    ver_weight (1.0), eva_weight (0.5), com_weight (0.5): weights of L_ver, L_eva and L_com beside NT-Xent.
    wm_fraction (0.125), evasion_fraction (0.125): watermark and evasion samples per clean image of a batch.
    proto_per_class (8): images of each class per step whose mean embedding is that class's μ_c.
    wm_temperature (0.1): the τ of L_ver and L_eva.
    temperature (0.5), proj_dim (64): SimCLR's τ and projection width (:mod:`copycatch.models.simclr`).
    probe_per_class (100): labelled owner_train images per class stored in the key for the probe and centroids.
    probe_steps (300): full-batch Adam steps of the verification probe.
    test ("probe"): which test's p-value decides: "probe" or "centroid".

Deviations: fixed loss weights instead of MGDA (as the classifier scheme's default, and for the same reason: MGDA
starves the main task); one training stage; the prototype classification above stands for the paper's unspecified
"loss" of Eq. 7-8; the verification is the intersection-union test above, not the 30 % WSR threshold (reported as
``paper_rule_stolen``).
The key holds the probe images, the verification inputs (uint8) and the secret classes and rule: keep it secret.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F

from ..core.errors import InvalidArgument
from ..core.evidence import Evidence
from ..core.key import Key
from ..data.base import Splits, TensorData, to_float
from ..models.base import Classifier
from ..models.encoder import embedding_dim
from ..models.simclr import attach_linear_probe, train_probe, train_simclr
from ..models.train import TrainConfig, TrainHook, TrainState
from ..oracles.base import Oracle
from ..oracles.embedding import require_embedding_oracle
from .base import Embedding, register_scheme
from .mea_defender import MEADefender

TESTS = ("probe", "centroid")


class EncoderWatermarkHook(TrainHook):
    """Adds the SSL branches of L_ver, L_eva and L_com (Eq. 6-8) to each SimCLR step, with fixed weights. Its images
    go through the encoder in the SimCLR forward, beside the clean views (``SimCLRNet.extra_inputs``)."""

    state_attrs = ("generator",)

    def __init__(
        self,
        pools: dict[str, torch.Tensor],
        class_pools: dict[int, torch.Tensor],
        make_watermark,
        evasion,
        params: Any,
        seed: int,
    ):
        self.pools = pools  # "a", "b": the source classes; "o": the other non-target classes (if any)
        self.class_pools = class_pools  # every class's images, for the prototypes μ_c
        self.classes = sorted(class_pools)
        self.make_watermark = make_watermark
        self.evasion = evasion
        self.params = params
        self.seed = seed
        self.generator: torch.Generator | None = None
        self._sizes: list[int] = []

    def on_start(self, state: TrainState) -> None:
        self.pools = {name: pool.to(state.device) for name, pool in self.pools.items()}
        self.class_pools = {c: pool.to(state.device) for c, pool in self.class_pools.items()}
        self.generator = torch.Generator().manual_seed(self.seed)
        state.model.extra_inputs = self._inputs

    def _draw(self, name: str | int, n: int) -> torch.Tensor:
        pool = self.pools[name] if isinstance(name, str) else self.class_pools[name]
        return to_float(pool[torch.randint(len(pool), (n,), generator=self.generator).to(pool.device)])

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The step's watermark samples, their source images, ``proto_per_class`` images of every class, evasion
        samples and the source image each evasion sample is pulled to, in that order (sizes kept for
        ``extra_loss``)."""
        p = self.params
        n_wm = max(1, round(len(x) * p.wm_fraction))
        xa, xb = self._draw("a", n_wm), self._draw("b", n_wm)
        protos = [self._draw(c, p.proto_per_class) for c in self.classes]
        mixed, own = self._evasion_samples(round(len(x) * p.evasion_fraction), x.device)
        self._sizes = [n_wm] * 3 + [p.proto_per_class * len(self.classes)] + [len(mixed)] * 2
        return torch.cat([self.make_watermark(xa, xb), xa, xb, *protos, mixed, own])

    def extra_loss(self, state, x, y, logits, loss):
        p = self.params
        h_wm, h_a, h_b, h_proto, h_mix, h_own = torch.split(state.model.extra_features, self._sizes)
        protos = F.normalize(h_proto.view(len(self.classes), p.proto_per_class, -1).mean(1), dim=1)
        target = self.classes.index(p.target)
        sims = F.normalize(h_wm, dim=1) @ protos.T
        l_ver = F.cross_entropy(sims / p.wm_temperature, torch.full((len(h_wm),), target, device=sims.device))
        log_wm = F.log_softmax(h_wm, dim=1)
        l_com = sum((log_wm.exp() * (log_wm - F.log_softmax(h_s, dim=1))).sum(1).mean() for h_s in (h_a, h_b))
        total = loss + p.ver_weight * l_ver + p.com_weight * l_com
        if len(h_mix):
            u = F.normalize(h_mix, dim=1)
            to_own = (u * F.normalize(h_own, dim=1)).sum(1)
            logits_eva = torch.stack([to_own, u @ protos[target]], 1) / p.wm_temperature
            total = total + p.eva_weight * F.cross_entropy(logits_eva, torch.zeros_like(to_own, dtype=torch.long))
        return total

    def _evasion_samples(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` evasion samples and, for each, one of the two images it was mixed from (its L_eva target): the
        source pair mixed by another rule and, for a ``shared_evasion`` share, a source and a third class mixed by
        the secret rule (so a third class mixed in does not trigger the watermark either)."""
        n_shared = round(n * self.params.shared_evasion) if "o" in self.pools else 0
        ea, eb = self._draw("a", n - n_shared), self._draw("b", n - n_shared)
        sa, sb, so = self._draw("a", n_shared), self._draw("b", n_shared), self._draw("o", n_shared)
        other_second = (torch.rand(n_shared, generator=self.generator) < 0.5).view(-1, 1, 1, 1).to(device)
        first, second = torch.where(other_second, sa, so), torch.where(other_second, so, sb)
        mixed = torch.cat([self.evasion(ea, eb, self.generator) if len(ea) else ea, self.make_watermark(first, second)])
        firsts, seconds = torch.cat([ea, first]), torch.cat([eb, second])
        pick_first = (torch.rand(n, generator=self.generator) < 0.5).view(-1, 1, 1, 1).to(device)
        return mixed, torch.where(pick_first, firsts, seconds)


@register_scheme
class MEADefenderEncoder(MEADefender):
    """MEA-Defender for SimCLR encoders (Lv et al. 2024): the mixed-class watermark, verified through embeddings."""

    name = "mea-defender-encoder"
    target: ClassVar[str] = "encoder"
    default_arch = "encoder-cnn9"
    tiny_params: ClassVar[dict[str, Any]] = {"n_verify": 100, "n_false_per_group": 30, "probe_per_class": 20}
    strength = "ver_weight"
    per_item = ()  # the probe images and every group are one test: the key is asked whole
    larger_key = "more queries per watermark and false-watermark group (n_verify, n_false_per_group)"
    null_hypothesis = (
        "Given the suspect encoder, the share of true watermark samples a downstream probe (or the nearest class "
        "centroid) sends to the secret target is at most the share for at least one group of false watermarks, each "
        "query a Bernoulli trial; p = the largest one-sided Fisher exact p-value over the groups (intersection-union "
        "test)."
    )

    @dataclasses.dataclass(frozen=True)
    class Params(MEADefender.Params):
        kind = "mea-defender-encoder scheme"
        ver_weight: float = 1.0
        eva_weight: float = 0.5
        com_weight: float = 0.5  # at the classifier scheme's 0.025: probe accuracy 0.688, not 0.730 (docs/encoders.md)
        wm_fraction: float = 0.125  # the images go through the SimCLR forward: keep the batch mostly clean
        temperature: float = 0.5
        proj_dim: int = 64
        probe_per_class: int = 100
        probe_steps: int = 300
        wm_temperature: float = 0.1
        proto_per_class: int = 8
        test: Literal["probe", "centroid"] = "probe"

        def validate(self) -> None:
            super().validate()
            for name in ("ver_weight", "eva_weight", "com_weight"):
                if not getattr(self, name) >= 0:
                    raise InvalidArgument(f"{name} must be >= 0, got {name}={getattr(self, name)}")
            if not self.temperature > 0 or not self.wm_temperature > 0 or self.proj_dim < 1:
                raise InvalidArgument(
                    f"need temperature > 0, wm_temperature > 0 and proj_dim >= 1, got {self.temperature}, "
                    f"{self.wm_temperature}, {self.proj_dim}"
                )
            if self.proto_per_class < 1:
                raise InvalidArgument(f"proto_per_class must be >= 1, got proto_per_class={self.proto_per_class}")
            if self.probe_per_class < 1 or self.probe_steps < 1:
                raise InvalidArgument(
                    f"probe_per_class and probe_steps must be >= 1, got {self.probe_per_class}, {self.probe_steps}"
                )
            if self.test not in TESTS:
                raise InvalidArgument(f"test must be one of {', '.join(TESTS)}, got test={self.test!r}")

    # -- embed -----------------------------------------------------------------------------------------------------
    def embed(
        self, model: Classifier, splits: Splits, *, train: TrainConfig | None = None, progress: bool | None = None
    ) -> Embedding:
        """Pre-train ``model`` (an encoder) with SimCLR and the watermark losses on owner_train, then fold a linear
        probe into its downstream head."""
        train = train or TrainConfig()
        self.check_classes(splits.num_classes)
        pool_a, pool_b, pool_other = self._training_pools(splits.owner_train)
        tensors, make_watermark, evasion, info = self.build_key_material(splits, train.seed, progress=progress)
        p = self.params  # with the rule and evasion mixers resolved by build_key_material
        data = splits.owner_train
        pool_t = data.where(data.y == p.target).stored
        if len(pool_t) == 0:
            raise InvalidArgument(f"owner_train has no image of the target class target={p.target}")
        tensors.update(self._probe_set(data, splits.num_classes, train.seed))
        pools = {"a": pool_a, "b": pool_b}
        classes = {c: data.where(data.y == c).stored for c in data.y.unique().tolist()}
        if len(pool_other):
            pools["o"] = pool_other.stored
        hook = EncoderWatermarkHook(pools, classes, make_watermark, evasion, p, seed=train.seed + 104729)
        result = train_simclr(
            model,
            data,
            train,
            temperature=p.temperature,
            proj_dim=p.proj_dim,
            hooks=[hook],
            progress=progress,
            desc="embed mea-defender-encoder",
        )
        attach_linear_probe(model, data, seed=train.seed)
        info["training"] = result.to_dict()
        key = Key(
            scheme=self.name,
            params=p.to_dict(),
            tensors=tensors,
            meta=self.key_meta(splits, model, train=train.to_dict(), embedding_dim=embedding_dim(model)),
        )
        model.provenance.update({"scheme": self.name, "key_digest": key.digest})
        return Embedding(model, key, info)

    def _probe_set(self, data: TensorData, num_classes: int, seed: int) -> dict[str, torch.Tensor]:
        """``probe_per_class`` owner images of every class (fewer when a class has fewer), uint8, with labels."""
        generator = self.key_generator(seed, 7919)
        xs, ys = [], []
        for c in range(num_classes):
            members = (data.y == c).nonzero().flatten()
            pick = members[torch.randperm(len(members), generator=generator)[: self.params.probe_per_class]]
            xs.append(to_float(data.stored[pick]))
            ys.append(torch.full((len(pick),), c, dtype=torch.long))
        x = torch.cat(xs)
        return {"probe_x": (x * 255).round().clamp(0, 255).to(torch.uint8), "probe_y": torch.cat(ys)}

    # -- verify ----------------------------------------------------------------------------------------------------
    def verification_inputs(self, key: Key) -> torch.Tensor:
        """The probe images, then the true and false watermarks."""
        return torch.cat([to_float(key["probe_x"]), to_float(key["verify_x"])])

    def check_key(self, key: Key, oracle: Oracle | None = None) -> None:
        """The key's scheme and input shape; the suspect must answer embeddings (its width is its own)."""
        if key.scheme != self.name:
            raise InvalidArgument(f"key is for scheme {key.scheme!r}, not {self.name!r}")
        if oracle is None:
            return
        require_embedding_oracle(oracle, f"scheme {self.name!r}")
        shape = key.meta.get("input_shape")
        if shape and oracle.input_shape is not None and tuple(shape) != tuple(oracle.input_shape):
            raise InvalidArgument(
                f"key is for inputs shaped {tuple(shape)} but the suspect takes {tuple(oracle.input_shape)}"
            )

    def check_oracle(self, oracle: Oracle) -> None:
        require_embedding_oracle(oracle, f"scheme {self.name!r}")

    def evidence_from_answers(self, answers: torch.Tensor, key: Key, *, alpha: float, queries: int) -> Evidence:
        """Both tests of the module docstring on the suspect's embeddings; ``test`` picks the evidence's p-value."""
        p = self.params
        probe_y = key["probe_y"].long()
        n_probe, num_classes = len(probe_y), int(key.meta.get("num_classes") or int(probe_y.max()) + 1)
        if len(answers) != n_probe + len(key["verify_group"]):
            raise InvalidArgument(
                f"{len(answers)} answers for {n_probe + len(key['verify_group'])} verification inputs"
            )
        z_probe, z_verify = answers[:n_probe].float(), answers[n_probe:].float()
        probe = train_probe(z_probe, probe_y, num_classes, steps=p.probe_steps, seed=_probe_seed(key))
        with torch.no_grad():
            probe_votes = F.one_hot(probe(z_verify).argmax(1), num_classes).float()
        near, gap = self._centroid_decisions(z_probe, probe_y, z_verify, key, num_classes)
        centroid_votes = F.one_hot(torch.where(near, p.target, _other(p)), num_classes).float()
        by_test = {
            "probe": super().evidence_from_answers(probe_votes, key, alpha=alpha, queries=queries),
            "centroid": super().evidence_from_answers(centroid_votes, key, alpha=alpha, queries=queries),
        }
        evidence = by_test[p.test]
        other = by_test["centroid" if p.test == "probe" else "probe"]
        evidence.metrics.update(
            {
                "test": p.test,
                "probe_wsr": by_test["probe"].statistic,
                "probe_p": by_test["probe"].p_value,
                "probe_accuracy_on_probe_set": float((probe(z_probe).argmax(1) == probe_y).float().mean()),
                "centroid_wsr": by_test["centroid"].statistic,
                "centroid_p": by_test["centroid"].p_value,
                "centroid_gap_watermark": float(gap[key["verify_group"] == 0].mean()),
            }
        )
        evidence.details[f"{'centroid' if p.test == 'probe' else 'probe'}_false_watermarks"] = other.details[
            "false_watermarks"
        ]
        return evidence

    def _centroid_decisions(
        self, z_probe: torch.Tensor, probe_y: torch.Tensor, z_verify: torch.Tensor, key: Key, num_classes: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per verification input: is its embedding nearer (cosine) to the target centroid than to the centroids of
        both classes of its group's pair; and the margin cos(target) − max cos(pair)."""
        p = self.params
        centroids = torch.zeros(num_classes, z_probe.shape[1])
        present = torch.zeros(num_classes, dtype=torch.bool)
        for c in probe_y.unique().tolist():
            centroids[c] = z_probe[probe_y == c].mean(0)
            present[c] = True
        if not present[p.target]:
            raise InvalidArgument(f"the key holds no probe image of the target class target={p.target}")
        sims = F.normalize(z_verify, dim=1) @ F.normalize(centroids, dim=1).T
        pairs = key["group_pair"].long()[key["verify_group"].long()]
        rows = torch.arange(len(z_verify))
        pair_sim = torch.maximum(sims[rows, pairs[:, 0]], sims[rows, pairs[:, 1]])
        gap = sims[:, p.target] - pair_sim
        return gap > 0, gap


def _other(p: Any) -> int:
    """A class index that is not the target: where a non-success vote goes (the test reads only target votes)."""
    return p.source_a


def _probe_seed(key: Key) -> int:
    """The verification probe's seed, fixed by the key (never by the suspect's answers)."""
    return int(key.digest[:8], 16)
