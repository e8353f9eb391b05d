"""MEA-style forgery: combined samples of two classes, relabelled to the class the target gives them.

Attack class: the ambiguity attack of Fan, Ng and Chan (NeurIPS 2019; see :mod:`.base`), here against the key
format of MEA-Defender (Lv et al., IEEE S&P 2024; :mod:`copycatch.schemes.mea_defender`), whose key stores its
verification inputs: "true watermark" samples (images of two source classes combined by a secret rule, which the
victim was trained to answer with a target class) and groups of false watermarks (other rules, other class pairs).
The test asks whether the suspect answers the target class on the true watermark more often than on every group of
false watermarks.

Method (black box, labels only). Combine the forger's images of each ordered class pair by ``rule`` (crop-paste or
merge, the rules that need no trained autoencoder or secret stripe pattern), ask the target, and choose the pair
(``source_a``, ``source_b``) and class ``target_class`` outside it that the target answers most often (unless given):
the key's "target" is the model's own output. Then draw fresh combined samples for every group of the scheme's
design (the same groups a real key has) and keep, for the true watermark, ``n_verify`` samples the target answers
with ``target_class`` and, for each false-watermark group, ``n_false_per_group`` samples it answers otherwise. Every
group's Fisher p-value is then the smallest possible, and so is the test's, 1 / C(n_verify + n_false, n_verify).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from ...core.errors import InvalidArgument
from ...core.key import Key
from ...data.base import TensorData
from ...models.base import Classifier
from ...oracles.base import Oracle
from ...schemes._mixers import ALL_MIXERS
from ...schemes.mea_defender import FAMILIES, MEADefender
from .base import check_data, predicted_labels, quantised, register_forgery, target_meta

RULES = ("crop-paste", "merge")


@register_forgery("mea-combined")
def forge_mea_key(
    target: Classifier | Oracle,
    data: TensorData,
    *,
    rule: str = "crop-paste",
    source_a: int | None = None,
    source_b: int | None = None,
    target_class: int | None = None,
    n_verify: int = 200,
    n_false_per_group: int = 40,
    false_pairs: int = 6,
    probe: int = 100,
    rounds: int = 20,
    seed: int = 0,
) -> Key:
    """MEA-Defender key forgery: combined samples of two classes, relabelled to the class the target answers."""
    if rule not in RULES:
        raise InvalidArgument(f"rule must be one of {', '.join(RULES)} (no autoencoder or stripe secret), got {rule!r}")
    for name, value in (("probe", probe), ("rounds", rounds)):
        if not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"{name} must be an integer >= 1, got {name}={value!r}")
    c = target.num_classes
    check_data(data, c)
    by_class = {k: data.x[data.y == k] for k in range(c)}
    empty = [k for k, x in by_class.items() if not len(x)]
    if empty:
        raise InvalidArgument(f"data hold no image of class {empty[0]}: every class is mixed into some group")
    generator = torch.Generator().manual_seed(seed)
    h, w = data.x.shape[-2:]
    plain = MEADefender(rule=rule, source_a=0, source_b=1, target=2).watermark_maker(h, w, None, None)
    a, b, t = _choose_classes(target, by_class, plain, (source_a, source_b, target_class), probe, generator)
    scheme = MEADefender(
        source_a=a,
        source_b=b,
        target=t,
        rule=rule,
        n_verify=n_verify,
        n_false_per_group=n_false_per_group,
        false_pairs=false_pairs,
        shared_skip_similar=0,
    )
    groups = [("watermark", rule, (a, b), True, n_verify)]
    groups += [("other rule", m, (a, b), False, n_false_per_group) for m in scheme.params.evasion_set]
    groups += [("shared class", rule, pair, False, n_false_per_group) for pair in scheme.shared_class_pairs(c)]
    groups += [("other pair", rule, pair, False, n_false_per_group) for pair in scheme.false_pair_list(c, generator)]
    xs, ids = [], []
    for g, (family, mixer, pair, answers_target, count) in enumerate(groups):
        mix = plain if mixer == rule else _evasion(scheme, mixer, h, w, generator)
        kept = _select(target, by_class, mix, pair, t, answers_target, count, rounds, generator)
        if kept is None:
            raise InvalidArgument(
                f"{rounds} rounds found fewer than {count} {family} samples ({mixer}, classes {pair}) the target "
                f"answers {'with' if answers_target else 'other than'} class {t}: give more data or raise rounds"
            )
        xs.append(kept)
        ids.append(torch.full((count,), g, dtype=torch.long))
    tensors = {
        "verify_x": torch.cat(xs),
        "verify_group": torch.cat(ids),
        "group_pair": torch.tensor([list(pair) for _, _, pair, _, _ in groups], dtype=torch.long),
        "group_mixer": torch.tensor([ALL_MIXERS.index(m) for _, m, _, _, _ in groups], dtype=torch.long),
        "group_family": torch.tensor([FAMILIES.index(f) for f, _, _, _, _ in groups], dtype=torch.long),
        "lookalike_classes": torch.zeros(0, dtype=torch.long),
    }
    return Key(scheme=MEADefender.name, params=scheme.params.to_dict(), tensors=tensors, meta=target_meta(target))


Mix = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _pairs(by_class: dict[int, torch.Tensor], pair: tuple[int, int], n: int, generator: torch.Generator):
    xa, xb = by_class[pair[0]], by_class[pair[1]]
    ia = torch.randint(len(xa), (n,), generator=generator)
    ib = torch.randint(len(xb), (n,), generator=generator)
    return xa[ia], xb[ib]


def _choose_classes(
    target: Classifier | Oracle,
    by_class: dict[int, torch.Tensor],
    mix: Mix,
    given: tuple[int | None, int | None, int | None],
    probe: int,
    generator: torch.Generator,
) -> tuple[int, int, int]:
    """The (source_a, source_b, target class) whose combined samples the target answers most often with that class,
    among those that agree with the classes ``given`` (None: free)."""
    c = len(by_class)
    for name, value in zip(("source_a", "source_b", "target_class"), given):
        if value is not None and not 0 <= value < c:
            raise InvalidArgument(f"{name} must be a class index in 0..{c - 1}, got {name}={value!r}")
    best: tuple[float, int, int, int] | None = None
    for a, b in itertools.permutations(range(c), 2):
        if (given[0] is not None and a != given[0]) or (given[1] is not None and b != given[1]):
            continue
        answers = predicted_labels(target, quantised(mix(*_pairs(by_class, (a, b), probe, generator))).float() / 255)
        counts = torch.bincount(answers, minlength=c).float()
        counts[[a, b]] = -1.0  # the target class lies outside the pair
        if given[2] is not None:
            counts[[k for k in range(c) if k != given[2]]] = -1.0
        t = int(counts.argmax())
        if counts[t] >= 0 and (best is None or counts[t] > best[0]):
            best = (float(counts[t]), a, b, t)
    if best is None:
        raise InvalidArgument(f"no pair of classes fits source_a={given[0]}, source_b={given[1]}, target={given[2]}")
    return best[1], best[2], best[3]


def _evasion(scheme: MEADefender, mixer: str, h: int, w: int, generator: torch.Generator) -> Mix:
    """One evasion mixer of the scheme's (a false watermark's "other rule")."""
    single = MEADefender(scheme.params.replace(evasion_mixers=[mixer])).evasion_mixer(h, w, None)
    return lambda xa, xb: single(xa, xb, generator)


def _select(
    target: Classifier | Oracle,
    by_class: dict[int, torch.Tensor],
    mix: Mix,
    pair: tuple[int, int],
    t: int,
    answers_target: bool,
    count: int,
    rounds: int,
    generator: torch.Generator,
) -> torch.Tensor | None:
    """``count`` combined samples of ``pair`` (uint8) that the target answers with ``t`` (``answers_target``) or
    otherwise, drawn ``2·count`` at a time for at most ``rounds`` rounds; None when too few turn up."""
    kept: list[torch.Tensor] = []
    have = 0
    for _ in range(rounds):
        x_u8 = quantised(mix(*_pairs(by_class, pair, 2 * count, generator)))
        hit = (predicted_labels(target, x_u8.float() / 255) == t) == answers_target
        kept.append(x_u8[hit])
        have += int(hit.sum())
        if have >= count:
            return torch.cat(kept)[:count]
    return None
