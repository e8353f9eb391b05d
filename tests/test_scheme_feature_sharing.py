import copy

import numpy as np
import pytest
import torch
from scipy import stats

import copycatch as cc
from copycatch.cli.main import main
from copycatch.core.key import Key
from copycatch.schemes.feature_sharing import FeatureSharingWatermark, detection_rate, signed_rank_greater, stamp_patch

# -- the signed-rank test -------------------------------------------------------------------------------------------


def test_signed_rank_is_scipys_exact_test_without_ties():
    rng = np.random.default_rng(0)
    for n in (5, 17, 60):
        d = rng.normal(0.2, 1.0, n)
        ours = signed_rank_greater(d)
        ref = stats.wilcoxon(d, zero_method="pratt", alternative="greater", method="exact")
        assert ours.method == "exact" and ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
        assert ours.statistic == ref.statistic


def test_signed_rank_keeps_tiny_p_values_where_scipy_cancels_to_zero():
    d = np.random.default_rng(1).uniform(0.1, 0.6, 100)
    assert stats.wilcoxon(d, zero_method="pratt", alternative="greater", method="exact").pvalue <= 0  # 1 - cdf
    assert signed_rank_greater(d).p_value == 2.0**-100
    smallest = np.argmin(np.abs(d))
    d[smallest] = -d[smallest]  # W+ = max - 1: reached by 2 of the 2^100 sign patterns
    assert signed_rank_greater(d).p_value == pytest.approx(2.0**-99, rel=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_signed_rank_with_ties_and_zeros_is_the_exact_sign_flip_distribution(seed):
    """With ties (rounded or one-hot answers) and zeros, the p-value equals full enumeration of the 2^n sign flips."""
    rng = np.random.default_rng(seed)
    d = np.round(rng.normal(0.1, 1.0, 11), 1)
    d[:2] = 0.0
    d[2:5] = d[5]  # a tie group
    ours = signed_rank_greater(d)
    ref = stats.wilcoxon(
        d, zero_method="pratt", alternative="greater", method=stats.PermutationMethod(n_resamples=10**5)
    )  # 2^11 < 10^5: exact enumeration
    assert ours.method == "exact-conditional" and ours.zeros == 2 and ours.ties
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def test_signed_rank_rounds_roundoff_to_zero_and_handles_all_zero():
    assert signed_rank_greater(np.array([0.3 - 0.1 - 0.2] * 4)).p_value == 1.0  # 5.6e-17 is a zero, not evidence
    assert signed_rank_greater(np.array([2.0] * 20)).p_value == pytest.approx(2.0**-20)
    with pytest.raises(cc.CopycatchError):
        signed_rank_greater(np.array([np.nan, 1.0]))


def test_signed_rank_null_p_values_are_valid_with_heavy_ties():
    """Symmetric differences (the boundary of H0), coarsely rounded: rejection rate at u stays <= u."""
    rng = np.random.default_rng(1)
    p = np.array([signed_rank_greater(np.round(rng.laplace(0, 1, 25), 0)).p_value for _ in range(1500)])
    for u in (0.01, 0.05, 0.1, 0.5):
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u * (1 - u) / len(p)), u
    assert np.mean(p <= 0.5) >= 0.35, "p-values piled up at 1: no power at the boundary"


def test_detection_rate_counts_rejections_over_draws():
    strong = np.full(100, 0.5) + np.linspace(0, 0.01, 100)
    assert detection_rate(strong, draws=50, fraction=0.1, alpha=0.05, seed=0) == (1.0, 10)
    assert detection_rate(-strong, draws=50, fraction=0.1, alpha=0.05, seed=0) == (0.0, 10)


# -- embedding and verification -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ood_embedded(tiny):
    return tiny.embed("feature-sharing", epochs=5)


def test_ood_victim_is_stolen_and_innocent_cleared(ood_embedded, innocent, splits):
    victim_ev = cc.verify(ood_embedded.victim, ood_embedded.key, sequential=False).evidence
    assert victim_ev.verdict == "stolen" and victim_ev.p_value <= 1e-6 and victim_ev.exact
    assert victim_ev.queries == 30 and victim_ev.metrics["watermark_accuracy"] >= 0.9
    assert victim_ev.details["zero_method"] == "pratt" and victim_ev.details["method"].startswith("exact")
    assert cc.accuracy(ood_embedded.victim, splits.test) >= 0.9
    innocent_ev = cc.verify(innocent, ood_embedded.key, alpha=0.05, sequential=False).evidence
    assert innocent_ev.verdict == "not stolen" and innocent_ev.p_value >= 0.01
    assert "1/|Y|" in " ".join(innocent_ev.notes)


def test_the_fine_tuned_split_defaults_by_distribution_and_is_recorded():
    def finetune(**params):
        return FeatureSharingWatermark(**params).params.finetune

    assert finetune() == "last-layer" and finetune(distribution="out") == "last-layer"
    assert finetune(distribution="in") == "decision-layers"  # one layer cannot tell a patched image from its original
    assert finetune(distribution="in", finetune="last-layer") == "last-layer"  # an explicit choice is kept
    assert FeatureSharingWatermark(distribution="in").params.to_dict()["finetune"] == "decision-layers"


def test_in_distribution_victim_is_stolen_innocent_cleared(splits, innocent):
    # a 3×3 white square on 8×8 inputs; the frozen-extractor fine-tune needs the paper's larger MNIST learning rate
    params = {"distribution": "in", "n_verify": 30, "finetune_lr": 0.01, "finetune_epochs": 5}
    emb = cc.embed(
        "feature-sharing", splits, arch="mlp", params=params, config=cc.TrainConfig(epochs=5, seed=0), max_cost=None
    )
    ev = cc.verify(emb.victim, emb.key, sequential=False).evidence
    assert ev.verdict == "stolen" and ev.p_value <= 1e-6 and ev.queries == 60  # triggered + clean copies
    assert ev.metrics["mean_p"] - ev.metrics["mean_q"] > 0.3
    assert cc.verify(innocent, emb.key, alpha=0.05, sequential=False).evidence.verdict == "not stolen"
    key = emb.key
    assert int(key["source_class"]) != int(key["target_class"]) and key["verify_x"].dtype == torch.uint8


def test_decision_layers_fine_tune_leaves_the_feature_extractor_untouched(trained, splits, tiny):
    model = copy.deepcopy(trained)
    before = copy.deepcopy(model.net.features.state_dict())
    head_before = copy.deepcopy(model.classifier.state_dict())
    FeatureSharingWatermark(**tiny.params("feature-sharing", finetune_epochs=1)).embed(
        model, splits, train=cc.TrainConfig(epochs=1, seed=0)
    )
    assert all(torch.equal(before[k], v) for k, v in model.net.features.state_dict().items())
    assert any(not torch.equal(head_before[k], v) for k, v in model.classifier.state_dict().items())


def test_whole_network_baseline_moves_the_feature_extractor(trained, splits, tiny):
    model = copy.deepcopy(trained)
    before = copy.deepcopy(model.net.features.state_dict())
    emb = FeatureSharingWatermark(**tiny.params("feature-sharing", finetune="whole-network", finetune_epochs=2)).embed(
        model, splits, train=cc.TrainConfig(epochs=2, seed=0)
    )
    assert any(not torch.equal(before[k], v) for k, v in model.net.features.state_dict().items())
    assert cc.verify(emb.victim, emb.key, sequential=False).evidence.verdict == "stolen"


def test_label_only_suspect_runs_the_indicator_variant_and_says_so(ood_embedded):
    labels = cc.ModelOracle(ood_embedded.victim).postprocess("hard-label")
    ev = cc.scheme_for_key(ood_embedded.key).verify(labels, ood_embedded.key)
    assert ev.verdict == "stolen" and any("labels only" in n for n in ev.notes)
    with pytest.raises(cc.CopycatchError, match="needs probabilities"):  # the product path refuses them
        cc.verify(cc.ModelOracle(ood_embedded.victim).postprocess("hard-label"), ood_embedded.key)


def _key(scheme, tensors):
    return Key(scheme.name, scheme.params.to_dict(), tensors, {"num_classes": 4, "input_shape": [1, 8, 8]})


@pytest.mark.parametrize("distribution", ["in", "out"])
def test_false_positive_rate_over_many_innocent_draws(splits, trained, distribution):
    """Independent keys (random classes, verification inputs, OOD sets) against innocent models: FPR(0.05) <= 0.07."""
    weak_splits = cc.make_splits(cc.load_dataset("synthetic", n=2400, num_classes=4, size=8, noise=0.9, seed=0), seed=0)
    innocents = [
        cc.train("mlp", splits, on="attacker_pool", config=cc.TrainConfig(epochs=3, seed=s), hidden=32) for s in (1, 2)
    ] + [
        cc.train("mlp", weak_splits, config=cc.TrainConfig(epochs=1, seed=1), hidden=16),
        cc.create_for("cnn-small", splits, seed=3),
    ]
    p_values, certainties = [], []
    for draw in range(30):
        extra = {"ood_dataset": f"synthetic:seed={100 + draw};n=400"} if distribution == "out" else {}
        scheme = FeatureSharingWatermark(distribution=distribution, n_verify=40, wdr_draws=1, **extra)
        sets = scheme.watermark_sets(splits, trained, torch.Generator().manual_seed(draw))
        key = _key(
            scheme,
            {
                "verify_x": sets["verify_u8"],
                "source_class": torch.tensor(sets["source"]),
                "target_class": torch.tensor(sets["target"]),
            },
        )
        for model in innocents:
            ev = scheme.verify(cc.ModelOracle(model), key, alpha=0.05)
            p_values.append(ev.p_value)
            certainties.append(ev.metrics["median_certainty"])
    p = np.array(p_values)
    assert len(p) == 120 and np.mean(p <= 0.05) <= 0.07
    assert np.median(certainties) < 0.3


def test_bad_parameters_and_inputs_are_named(splits, trained):
    with pytest.raises(cc.CopycatchError, match="certainty"):
        FeatureSharingWatermark(certainty=1.5)
    with pytest.raises(cc.CopycatchError, match="'kind_of'"):
        cc.create_scheme("feature-sharing", kind_of="in")
    with pytest.raises(cc.CopycatchError, match="both 2"):
        FeatureSharingWatermark(distribution="in", source_class=2, target_class=2).watermark_sets(
            splits, trained, torch.Generator()
        )
    with pytest.raises(cc.CopycatchError, match="target_class=7"):
        FeatureSharingWatermark(distribution="in", target_class=7).watermark_sets(splits, trained, torch.Generator())
    with pytest.raises(cc.CopycatchError, match="n_verify=500"):
        FeatureSharingWatermark(distribution="in", n_verify=500).watermark_sets(splits, trained, torch.Generator())
    with pytest.raises(cc.CopycatchError, match=r"shaped \(1, 28, 28\).*distribution=in"):
        FeatureSharingWatermark(distribution="out", ood_dataset="synthetic:size=28").watermark_sets(
            splits, trained, torch.Generator()
        )


def test_stamp_patch_whites_the_bottom_right_corner_only():
    x = torch.zeros(2, 1, 8, 8)
    out = stamp_patch(x, 3)
    assert out[:, :, 5:, 5:].eq(1).all() and out.sum() == 2 * 9 and x.sum() == 0


def test_cli_embed_and_verify(tmp_path, capsys):
    victim, key = tmp_path / "v.safetensors", tmp_path / "v.cckey"
    params = "distribution=out,ood_dataset=synthetic:seed=11,n_verify=30"
    assert (
        main(
            [
                "embed",
                "--max-cost",
                "none",
                "--scheme",
                "feature-sharing",
                "--arch",
                "mlp",
                "-p",
                params,
                "-o",
                str(victim),
                "--key",
                str(key),
                "--epochs",
                "4",
                "--data",
                "synthetic",
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["verify", "--key", str(key), "--suspect", str(victim)]) == 0
    assert "STOLEN" in capsys.readouterr().out
