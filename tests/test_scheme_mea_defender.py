"""MEA-Defender: mixers, MGDA, the two-sample verification and its false-positive rate on innocent models."""

import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats as st

import copycatch as cc
from copycatch.core.key import Key
from copycatch.models.train import TrainConfig, TrainState, make_optimizer
from copycatch.schemes import _mixers as mixers
from copycatch.schemes.mea_defender import MEADefender, MEADefenderHook, _fisher_greater, min_norm_weights


@pytest.fixture(scope="module")
def embedded(tiny):
    return tiny.embed("mea-defender", epochs=12)


# -- embedding and verification on tiny data --------------------------------------------------------------------------


def test_victim_is_stolen_and_innocent_is_cleared(embedded, splits, innocent):
    victim_ev = cc.verify(embedded.victim, embedded.key, alpha=0.05, sequential=False).evidence
    assert victim_ev.verdict == "stolen", victim_ev.summary()
    assert victim_ev.metrics["watermark_success_rate"] >= 0.9
    assert victim_ev.metrics["wfpr"] <= 0.5  # evasion training keeps other mixtures of the sources off the target
    assert victim_ev.queries == len(embedded.key["verify_x"]) and not victim_ev.exact
    assert cc.accuracy(embedded.victim, splits.test) >= 0.9
    innocent_ev = cc.verify(innocent, embedded.key, alpha=0.05, sequential=False).evidence
    assert innocent_ev.verdict == "not stolen", innocent_ev.summary()
    assert innocent_ev.p_value >= 0.05


def test_label_only_suspects_verify_the_same(embedded):
    soft = cc.verify(embedded.victim, embedded.key, sequential=False).evidence
    hard = cc.verify(cc.ModelOracle(embedded.victim).postprocess("hard-label"), embedded.key, sequential=False).evidence
    assert hard.p_value == soft.p_value and hard.statistic == soft.statistic


def test_key_round_trips_and_verification_inputs_are_a_function_of_the_key(embedded, tmp_path, tiny):
    key = Key.load(embedded.key.save(tmp_path / "mea.cckey"))
    scheme = cc.scheme_for_key(key)
    assert key["verify_x"].dtype == torch.uint8
    assert torch.equal(scheme.verification_inputs(key), MEADefender().verification_inputs(embedded.key))
    groups = key["verify_group"]
    assert int((groups == 0).sum()) == tiny.params("mea-defender")["n_verify"]
    families = key["group_family"].tolist()
    assert families[0] == 0 and set(families[1:]) == {1, 2}  # 4 classes: no class pair outside {a, b, target}
    # the "other rule" groups are exactly the evasion mixers, never the watermark's own left/right geometry
    names = [mixers.ALL_MIXERS[i] for i, f in zip(key["group_mixer"].tolist(), families) if f == 1]
    assert "crop-paste" not in names and sorted(names) == sorted(MEADefender.Params().evasion_set)
    # "shared class": the secret rule on (source_a, c) and (c, source_b) for the one class c outside {0, 1, 2}
    assert [pair for pair, f in zip(key["group_pair"].tolist(), families) if f == 2] == [[0, 3], [3, 1]]


def test_build_is_deterministic_in_the_seed(splits, tiny):
    scheme = MEADefender(**tiny.params("mea-defender"))
    first = scheme.build_key_material(splits, 3)[0]
    second = scheme.build_key_material(splits, 3)[0]
    other = scheme.build_key_material(splits, 4)[0]
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["verify_x"], other["verify_x"])


@pytest.mark.parametrize("rule", ["merge", "stripes", "autoencoder"])
def test_other_rules_embed_and_verify(splits, rule, tiny):
    params = tiny.params("mea-defender", rule=rule, ae_epochs=40)
    embedding = cc.embed(
        "mea-defender", splits, arch="mlp", params=params, config=cc.TrainConfig(epochs=8, seed=0), max_cost=None
    )
    ev = cc.verify(embedding.victim, embedding.key, alpha=0.05, sequential=False).evidence
    assert ev.verdict == "stolen", ev.summary()
    families = embedding.key["group_family"].tolist()
    names = [mixers.ALL_MIXERS[i] for i in embedding.key["group_mixer"].tolist()]
    assert names[0] == rule and rule not in [m for m, f in zip(names, families) if f == 1]
    if rule == "stripes":
        pattern = tuple(bool(v) for v in embedding.key["stripe_pattern"].tolist())
        assert sum(pattern) == 2 and not mixers.is_single_split(pattern)


def test_pretrained_mode_trains_a_clean_model_first(splits, tiny):
    model = cc.create_for("mlp", splits, seed=0, hidden=64)
    embedding = MEADefender(**tiny.params("mea-defender", mode="pretrained", finetune_epochs=4)).embed(
        model, splits, train=cc.TrainConfig(epochs=4, seed=0)
    )
    assert "pretraining" in embedding.info
    assert [(st["stage"], st["epochs_run"]) for st in embedding.info["stages"]] == [(1, 2), (2, 2)]
    assert [st["config"]["lr"] for st in embedding.info["stages"]] == pytest.approx([1e-4, 1e-4])
    assert cc.accuracy(embedding.victim, splits.test) >= 0.9


# -- the null: false-positive rate over many innocent draws ----------------------------------------------------------


def _random_key(splits, draw: int) -> Key:
    gen = torch.Generator().manual_seed(draw)
    a, b, t = torch.randperm(splits.num_classes, generator=gen)[:3].tolist()
    rule = ("crop-paste", "merge", "stripes")[draw % 3]
    scheme = MEADefender(source_a=a, source_b=b, target=t, rule=rule, n_verify=200, n_false_per_group=40)
    tensors = scheme.build_key_material(splits, draw)[0]
    return Key(scheme.name, scheme.params.to_dict(), tensors, {"num_classes": splits.num_classes})


def test_false_positive_rate_over_random_keys_and_innocent_models(splits):
    """Innocent models (never saw any key) against 150 independently drawn keys: FPR at α=0.05 ≤ 0.07."""
    innocents = [
        cc.train("mlp", splits, on="attacker_pool", config=cc.TrainConfig(epochs=3, seed=s), hidden=32)
        for s in range(3)
    ]
    innocents.append(cc.create_for("mlp", splits, seed=9, hidden=32))  # untrained: arbitrary, not-so-random answers
    p_values, wsr = [], []
    for draw in range(150):
        key = _random_key(splits, 1000 + draw)
        scheme = cc.scheme_for_key(key)
        ev = scheme.verify(cc.ModelOracle(innocents[draw % len(innocents)]), key, alpha=0.05)
        p_values.append(ev.p_value)
        wsr.append(ev.metrics["watermark_success_rate"])
    p = np.array(p_values)
    assert np.mean(p <= 0.05) <= 0.07
    # the test is not vacuous: innocent models do answer the target on some watermark configurations
    assert np.mean(np.array(wsr) > 0.05) >= 0.05


def test_false_positive_rate_of_the_default_key_over_many_innocent_models(embedded, splits):
    p_values = []
    for seed in range(40):
        innocent = cc.train(
            "mlp", splits, on="attacker_pool", config=cc.TrainConfig(epochs=2, seed=100 + seed), hidden=16
        )
        p_values.append(cc.verify(innocent, embedded.key, alpha=0.05, sequential=False).evidence.p_value)
    assert np.mean(np.array(p_values) <= 0.05) <= 0.07


def test_paired_binomial_against_a_pooled_rate_would_accuse_where_the_fisher_union_does_not():
    """Why the decision is not the paper-style binomial: a configuration an innocent model naturally maps to the
    target at 20 % beats a pooled false-watermark rate of ~5 % 'significantly', but not the worst-case group."""
    scheme = MEADefender(n_verify=1000, n_false_per_group=100)
    groups = torch.cat([torch.zeros(1000, dtype=torch.long)] + [torch.full((100,), g) for g in range(1, 7)])
    rates = [0.20, 0.0, 0.0, 0.02, 0.03, 0.05, 0.22]
    gen = torch.Generator().manual_seed(0)
    success = torch.cat([torch.rand(int((groups == g).sum()), generator=gen) < r for g, r in enumerate(rates)])
    answers = torch.zeros(len(groups), 4)
    answers[success, 2] = 1.0
    answers[~success, 0] = 1.0
    key = Key(
        scheme.name,
        scheme.params.to_dict(),
        {
            "verify_x": torch.zeros(len(groups), 1, 2, 2, dtype=torch.uint8),
            "verify_group": groups,
            "group_pair": torch.zeros(7, 2, dtype=torch.long),
            "group_mixer": torch.zeros(7, dtype=torch.long),
            "group_family": torch.tensor([0, 1, 1, 1, 1, 1, 1]),
        },
        {"num_classes": 4},
    )
    ev = scheme.evidence_from_answers(answers, key, alpha=0.05, queries=len(groups))
    assert ev.metrics["binomial_p_pooled"] < 1e-6
    assert ev.p_value > 0.05 and ev.verdict == "not stolen"


# -- statistics helpers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k1,n1,k2,n2", [(700, 1000, 10, 100), (12, 200, 3, 40), (0, 50, 5, 50), (50, 50, 0, 40), (30, 100, 30, 100)]
)
def test_fisher_greater_matches_scipy(k1, n1, k2, n2):
    expected = st.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater").pvalue
    assert _fisher_greater(k1, n1, k2, n2) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def _brute_min_norm(gram: np.ndarray, steps: int = 60) -> float:
    t = len(gram)
    best = np.inf
    for combo in itertools.product(range(steps + 1), repeat=t - 1):
        if sum(combo) > steps:
            continue
        w = np.array([*list(combo), steps - sum(combo)]) / steps
        best = min(best, w @ gram @ w)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_min_norm_weights_is_the_exact_minimum_over_the_simplex(seed):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(4, 5)) + (rng.normal(size=5) if seed % 2 else 0)
    gram = vectors @ vectors.T
    w = min_norm_weights(gram)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0)
    assert w @ gram @ w <= _brute_min_norm(gram, steps=30) + 1e-9
    # optimality (KKT): no vertex direction decreases the norm
    grad = gram @ w
    assert grad.min() >= w @ gram @ w - 1e-8


def test_min_norm_weights_special_cases():
    orthogonal = np.diag([1.0, 4.0])
    assert min_norm_weights(orthogonal) == pytest.approx([0.8, 0.2])  # ∝ 1/‖g‖²
    opposite = np.array([[1.0, -1.0], [-1.0, 1.0]])
    assert min_norm_weights(opposite) == pytest.approx([0.5, 0.5])
    dominated = np.array([[1.0, 1.0], [1.0, 4.0]])  # g2 = 2·g1: the smaller one alone
    assert min_norm_weights(dominated) == pytest.approx([1.0, 0.0])


def _one_step(tiny, **params):
    splits = tiny.splits
    scheme = MEADefender(**tiny.params("mea-defender", **params))
    _, make_watermark, evasion, _ = scheme.build_key_material(splits, 0)
    pool_a = splits.owner_train.x[splits.owner_train.y == 0]
    pool_b = splits.owner_train.x[splits.owner_train.y == 1]
    model = cc.create_for("mlp", splits, seed=0, hidden=16)
    config = TrainConfig(seed=0)
    state = TrainState(
        model, make_optimizer(model.parameters(), config), config, torch.device("cpu"), torch.Generator().manual_seed(0)
    )
    hook = MEADefenderHook(pool_a, pool_b, make_watermark, evasion, scheme.params, seed=0)
    hook.on_start(state)
    x, y = splits.owner_train.x[:64], splits.owner_train.y[:64]
    logits = model(x)
    loss = hook.extra_loss(state, x, y, logits, F.cross_entropy(logits, y))
    loss.backward()
    return float(loss.detach()), torch.cat([q.grad.reshape(-1) for q in model.parameters()])


@pytest.mark.parametrize("balance", ["mgda-four", "mgda-three"])
@pytest.mark.parametrize("source_scale", [0.0, 0.5])
def test_hook_writes_exactly_the_weighted_task_gradient(tiny, monkeypatch, balance, source_scale):
    """The cheap loss the hook returns must carry the gradient of Σ w_t·L_t. With the MGDA weights forced to the
    batch shares (64 clean, 16 watermark, 8 evasion samples) and L_com weighted like L_ver, both MGDA modes give
    the code's mixed-batch loss plus w·L_com, whose gradient autograd computes directly in "fixed" mode."""
    n = 64 + 16 + 8
    reference_value, reference_grad = _one_step(tiny, balance="fixed", com_weight=16 / n, com_source_scale=source_scale)
    forced = {"mgda-four": [64 / n, 16 / n, 16 / n, 8 / n], "mgda-three": [64 / n, 16 / n, 8 / n]}[balance]
    monkeypatch.setattr(MEADefenderHook, "_solve", lambda self, grads, losses: np.array(forced))
    value, grad = _one_step(tiny, balance=balance, com_source_scale=source_scale)
    assert value == pytest.approx(reference_value, rel=1e-5)
    assert torch.allclose(grad, reference_grad, atol=1e-5)
    assert grad.abs().sum() > 0


def test_watermark_loss_ablation_drops_exactly_its_term(tiny):
    """Table 5's switches: "ver" is the stage-2 loss without L_com; "com" removes L_ver's gradient, so the
    watermark samples move only through L_com."""
    both_value, both_grad = _one_step(tiny)
    ver_value, ver_grad = _one_step(tiny, watermark_losses="ver")
    no_com_value, no_com_grad = _one_step(tiny, com_weight=0.0)
    assert ver_value == pytest.approx(no_com_value) and torch.allclose(ver_grad, no_com_grad)
    com_value, com_grad = _one_step(tiny, watermark_losses="com")
    assert not torch.allclose(com_grad, both_grad) and not torch.allclose(ver_grad, both_grad)
    assert com_value < both_value  # the L_ver term (a positive cross-entropy) is gone


def test_watermark_loss_ablation_reproduces_table_5_on_the_victim(splits, tiny):
    """The paper's Table 5: L_com alone does not teach the target label, L_ver alone does."""
    config = cc.TrainConfig(epochs=8, seed=0)
    wsr = {}
    for losses in ("com", "ver"):
        embedding = cc.embed(
            "mea-defender",
            splits,
            arch="mlp",
            params=tiny.params("mea-defender", watermark_losses=losses),
            config=config,
            max_cost=None,
        )
        wsr[losses] = cc.verify(embedding.victim, embedding.key, sequential=False).evidence.metrics[
            "watermark_success_rate"
        ]
    assert wsr["com"] <= 0.3 < 0.9 <= wsr["ver"], wsr


def test_watermark_loss_ablation_needs_a_balance_that_can_drop_a_term():
    with pytest.raises(cc.CopycatchError, match="watermark_losses='ver' needs balance"):
        MEADefender(watermark_losses="ver", balance="mgda-three")
    MEADefender(watermark_losses="com", balance="mgda-four")


def test_shared_class_evasion_targets_half_each_ingredient(splits, tiny):
    """Evasion samples of a source mixed with another class by the secret rule target ½ of each ingredient."""
    scheme = MEADefender(**tiny.params("mea-defender", shared_evasion=0.5))
    _, make_watermark, evasion, _ = scheme.build_key_material(splits, 0)
    train = splits.owner_train
    other = train.where(train.y == 3)
    hook = MEADefenderHook(
        train.x[train.y == 0], train.x[train.y == 1], make_watermark, evasion, scheme.params, seed=0, pool_other=other
    )
    hook.generator = torch.Generator().manual_seed(0)

    def uniform(x):
        return torch.zeros(len(x), 4)

    soft = hook._evasion_targets(40, 4, torch.device("cpu"), uniform) / -np.log(4)
    assert torch.allclose(soft.sum(1), torch.ones(40))
    assert torch.allclose(soft[:20], torch.tensor([0.5, 0.5, 0.0, 0.0]).expand(20, 4))  # the pair, other mixers
    shared = soft[20:]
    assert torch.allclose(shared[:, 3], torch.full((20,), 0.5)) and (shared[:, 2] == 0).all()
    assert torch.allclose(shared[:, 0] + shared[:, 1], torch.full((20,), 0.5))
    assert 0 < int((shared[:, 0] > 0).sum()) < 20  # both (source_a, c) and (c, source_b) were drawn


# -- mixers -----------------------------------------------------------------------------------------------------------


def test_masks_take_the_documented_parts():
    xa, xb = torch.ones(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
    crop = mixers.apply_mask(mixers.watermark_mask("crop-paste", 8, 8), xa, xb)[0, 0]
    assert crop[:, :4].eq(1).all() and crop[:, 4:].eq(0).all()  # the right half comes from the second class
    merged = mixers.apply_mask(mixers.watermark_mask("merge", 8, 8, merge_alpha=0.5), xa, xb)
    assert merged.eq(0.5).all()
    diag = mixers.diagonal_mask(28, 28)
    assert diag.sum() + (1 - diag).sum() == 28 * 28 and diag[0, 0] == 1 and diag[27, 27] == 0
    band = mixers.band_mask(28, 28)
    assert band[7:21].eq(0).all() and band[:7].eq(1).all() and band[21:].eq(1).all()
    centre = mixers.centre_square_mask(32, 32)
    assert centre[6:25, 6:25].eq(1).all() and centre.sum() == 19 * 19


def test_stripe_patterns_never_reproduce_a_left_right_split():
    patterns = mixers.stripe_patterns(5, 2)
    assert len(patterns) == 8  # 10 ways to pick two of five stripes, minus AAABB and BBAAA
    for pattern in patterns:
        mask = mixers.stripes_mask(1, 28, pattern)[0]
        runs = 1 + int((mask[1:] != mask[:-1]).sum())
        assert runs >= 3 and int((mask == 0).sum()) in (10, 11, 12)  # stripes are 5 or 6 columns wide


def test_evasion_mixer_draws_every_mixer_and_keeps_pixels_from_the_two_images():
    mixer = mixers.EvasionMixer(("top-bottom", "diagonal", "band", "stripes"), 8, 8)
    xa, xb = torch.ones(400, 1, 8, 8), torch.zeros(400, 1, 8, 8)
    out = mixer(xa, xb, torch.Generator().manual_seed(0))
    assert out.shape == xa.shape and set(out.unique().tolist()) <= {0.0, 1.0}
    share = out.mean(dim=(1, 2, 3))
    assert (share > 0).all() and (share < 1).all()
    assert len(set(share.tolist())) >= 6  # several mixers, jitters and swaps were drawn
    with pytest.raises(cc.CopycatchError, match="autoencoder"):
        mixers.EvasionMixer(("autoencoder",), 8, 8)


def test_autoencoder_blend_is_between_its_inputs(splits):
    ae = mixers.train_autoencoder(splits.owner_train.x[:200], width=4, epochs=1, seed=0)
    xa, xb = splits.owner_train.x[:3], splits.owner_train.x[3:6]
    out = ae.blend(xa, xb, 0.5)
    assert out.shape == xa.shape and out.min() >= 0 and out.max() <= 1


# -- parameters and errors --------------------------------------------------------------------------------------------


def test_params_reject_bad_values():
    with pytest.raises(cc.CopycatchError, match="three different classes"):
        MEADefender(source_a=1, source_b=1)
    with pytest.raises(cc.CopycatchError, match="unknown evasion mixer 'swirl'"):
        MEADefender(evasion_mixers=("swirl",))
    with pytest.raises(cc.CopycatchError, match="leaves nothing"):
        MEADefender(evasion_mixers=("crop-paste",))
    with pytest.raises(cc.CopycatchError, match="rule"):
        MEADefender(rule="rotate")
    assert MEADefender.Params.from_dict({"evasion_mixers": "band,diagonal"}).evasion_mixers == ("band", "diagonal")


def test_embed_rejects_classes_the_task_does_not_have(splits):
    with pytest.raises(cc.CopycatchError, match="class index 7"):
        cc.embed("mea-defender", splits, arch="mlp", params={"target": 7}, config=cc.TrainConfig(epochs=1))


def test_verify_rejects_a_key_for_another_scheme(embedded):
    with pytest.raises(cc.CopycatchError, match="scheme"):
        MEADefender().verify(cc.ModelOracle(embedded.victim), Key("margin", {}, {}, {"num_classes": 4}))


def test_cli_embeds_and_verifies(tmp_path, capsys):
    from copycatch.cli.main import main

    victim, key = tmp_path / "victim.safetensors", tmp_path / "victim.cckey"
    assert (
        main(
            [
                "embed",
                "--max-cost",
                "none",
                "--scheme",
                "mea-defender",
                "--arch",
                "mlp",
                "-p",
                "n_verify=100,n_false_per_group=20",
                "-o",
                str(victim),
                "--key",
                str(key),
                "--epochs",
                "6",
                "--data",
                "synthetic",
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["verify", "--key", str(key), "--suspect", str(victim), "--alpha", "0.01", "--json"]) == 0
    evidence = json.loads(capsys.readouterr().out)
    assert evidence["scheme"] == "mea-defender" and evidence["verdict"] == "stolen" and evidence["exact"] is False
    assert (
        main(
            [
                "embed",
                "--max-cost",
                "none",
                "--scheme",
                "mea-defender",
                "-p",
                "rule=rotate",
                "-o",
                str(victim),
                "--key",
                str(key),
                "--data",
                "synthetic",
                "-q",
            ]
        )
        == 2
    )
    assert "rule" in capsys.readouterr().err


def test_target_lookalikes_are_the_classes_nearest_the_target_and_leave_three_controls():
    from copycatch.data import TensorData

    gen = torch.Generator().manual_seed(0)
    prototypes = torch.rand(10, 1, 8, 8, generator=gen)
    prototypes[7] = prototypes[2] + 0.01  # two planted look-alikes of the target (class 2)
    prototypes[5] = prototypes[2] - 0.02
    y = torch.arange(10).repeat(20)
    data = TensorData((prototypes[y] + 0.01 * torch.randn(len(y), 1, 8, 8, generator=gen)).clamp(0, 1), y)
    assert MEADefender().target_lookalikes(data, 10) == [7, 5]
    assert MEADefender(shared_skip_similar=0).target_lookalikes(data, 10) == []
    assert MEADefender(shared_skip_similar=5).target_lookalikes(data, 10)[:2] == [7, 5]
    assert len(MEADefender(shared_skip_similar=5).target_lookalikes(data, 10)) == 4  # 7 third classes, 3 stay
    scheme = MEADefender()
    pairs = scheme.shared_class_pairs(10, skip=[7, 5])
    assert all(7 not in pair and 5 not in pair for pair in pairs) and len(pairs) == 10
    assert all(7 not in pair and 5 not in pair for pair in scheme.false_pair_list(10, gen, skip=[7, 5]))
    small = TensorData(data.x[data.y < 4], data.y[data.y < 4])
    assert scheme.target_lookalikes(small, 4) == []  # one third class only: nothing is left out
