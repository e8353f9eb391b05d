import math

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.cli.main import main
from copycatch.core.key import Key
from copycatch.schemes.ewe import (
    EntangledWatermark,
    LayerTap,
    Temperatures,
    default_layers,
    optimise_triggers,
    resolve_layers,
    snnl,
)

# -- the soft nearest-neighbour loss --------------------------------------------------------------------------------


def _snnl_by_the_formula(x, w, temperature, distance):
    """The notes' definition, one pair at a time."""
    x = torch.relu(x).flatten(1).double()
    n = len(x)
    total = 0.0
    for i in range(n):
        kernel = []
        for j in range(n):
            if distance == "cosine":
                d = 1 - torch.dot(x[i], x[j]) / (x[i].norm() * x[j].norm())
            else:
                d = ((x[i] - x[j]) ** 2).sum()
            kernel.append(min(1.0, max(0.0, math.exp(-float(d) * temperature / 100) - (i == j))))
        denom = 1e-5 + sum(kernel)
        same = sum(kernel[j] / denom for j in range(n) if w[j] == w[i])
        total += -math.log(1e-5 + same)
    return total / n


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_snnl_matches_the_formula(distance):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 2, 2, generator=gen)
    w = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    assert float(snnl(x, w, 30.0, distance=distance)) == pytest.approx(
        _snnl_by_the_formula(x, w, 30.0, distance), rel=1e-5
    )


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_snnl_of_relu_outputs_skips_the_relu_without_changing_value_or_gradient(distance):
    gen = torch.Generator().manual_seed(3)
    pre = torch.randn(12, 4, 3, 3, generator=gen)
    pre[:, 0] = 0.0  # exact zeros: where a second ReLU's mask could differ from the first's
    w = torch.tensor([1] * 6 + [0] * 6)
    grads = []
    for rectified in (False, True):
        x = pre.clone().requires_grad_(True)
        value = snnl(torch.relu(x), w, 20.0, distance=distance, rectified=rectified)
        value.backward()
        grads.append((value.detach(), x.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_snnl_is_high_when_groups_are_entangled_and_low_when_separated():
    w = torch.tensor([1] * 8 + [0] * 8)
    separated = torch.cat([torch.tensor([[1.0, 0.0]]).repeat(8, 1), torch.tensor([[0.0, 1.0]]).repeat(8, 1)])
    entangled = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(8, 1)
    assert snnl(entangled, w, 500.0) > math.log(2) - 0.05 > 0.1 > snnl(separated, w, 500.0)


def test_temperature_step_lowers_the_snnl():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=gen)
    w = torch.tensor([1] * 8 + [0] * 8)
    temps = Temperatures(20.0, 1, lr=50.0)
    leaves = temps.leaves(torch.device("cpu"))
    before = snnl(x, w, leaves[0])
    temps.step(leaves, [before])
    assert temps.values[0] != 20.0 and float(snnl(x, w, temps.values[0])) < float(before.detach())


# -- layers and triggers --------------------------------------------------------------------------------------------


def test_default_layers_follow_the_code_choice():
    small = cc.create_model("cnn-small", (1, 28, 28), 10)
    assert default_layers(small) == ("net.features.1", "net.features.4", "net.classifier.1")  # conv1, conv2, FC-128
    resnet = cc.create_model("resnet18", (1, 8, 8), 4, width=4)
    assert default_layers(resnet) == ("net.features.8", "net.features.9", "net.features.10")  # stage 3, both stage 4
    with pytest.raises(cc.CopycatchError, match=r"'net\.nope'"):
        resolve_layers(small, ("net.nope",))


def test_layer_tap_records_only_while_running(trained):
    tap = LayerTap(trained, default_layers(trained))
    x = torch.rand(3, 1, 8, 8)
    trained(x)
    assert tap.outputs == {}
    logits, feats = tap.run(trained, x)
    tap.remove()
    assert logits.shape == (3, 4) and [f.shape[0] for f in feats] == [3, 3]
    assert tap.rectified == tuple(isinstance(dict(trained.named_modules())[n], torch.nn.ReLU) for n in tap.names)
    trained(x)
    assert len(tap.outputs) == len(feats)  # removed hooks record nothing new


def test_trigger_optimisation_pushes_the_clean_models_target_rate_below_threshold(trained, splits, tiny):
    x = splits.owner_holdout.x[splits.owner_holdout.y == 1][:32]
    target = int(trained(x).argmax(1).mode().values)  # a target the clean model already predicts: must be undone
    scheme = EntangledWatermark(**tiny.params("ewe", maxiter=2, w_lr=0.05))
    tap = LayerTap(trained, default_layers(trained))
    try:
        out = optimise_triggers(
            trained,
            tap,
            x,
            splits.owner_train.x[splits.owner_train.y == target],
            target,
            16,
            [1.0, 1.0],
            scheme.params,
            torch.Generator().manual_seed(0),
        )
    finally:
        tap.remove()
    rate = (trained(out).argmax(1) == target).float().mean()
    assert rate <= 0.1 < (trained(x).argmax(1) == target).float().mean()
    assert out.min() >= 0 and out.max() <= 1


# -- embedding and verification -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tiny):
    return tiny.embed("ewe", epochs=4)


def test_victim_is_stolen_and_innocent_cleared(embedded, innocent, splits):
    ev = cc.verify(embedded.victim, embedded.key, sequential=False).evidence
    assert ev.verdict == "stolen" and ev.p_value <= 1e-6 and ev.exact and "sign test" in ev.notes[0]
    assert ev.queries == 40 and ev.metrics["watermark_accuracy"] >= 0.9 and ev.p_value == 0.5**ev.statistic
    assert cc.accuracy(embedded.victim, splits.test) >= 0.9
    assert embedded.info["clean_model_trigger_rate"] <= 0.1 < embedded.info["victim_trigger_rate"]
    history = embedded.info["training"]["history"]
    assert len(history) == 3 and all("snnl" in h and len(h["temperatures"]) == 2 for h in history)
    assert cc.verify(innocent, embedded.key, alpha=0.05, sequential=False).evidence.verdict == "not stolen"


def test_entangling_epochs_default_to_a_share_of_the_clean_epochs(tiny):
    emb = tiny.embed("ewe", epochs=5, w_epochs=None, maxiter=1)
    assert emb.key.params["w_epochs"] == 3  # round(0.6 * 5), recorded in the key
    assert len(emb.info["training"]["history"]) == 3


def test_label_only_suspects_run_at_the_scheme_level_but_the_evidence_warns(embedded):
    labels = cc.ModelOracle(embedded.victim).postprocess("hard-label")
    hard = cc.scheme_for_key(embedded.key).verify(labels, embedded.key)
    assert hard.verdict == "stolen" and any("labels only" in n for n in hard.notes)
    with pytest.raises(cc.CopycatchError, match="needs probabilities"):  # the product path refuses them
        cc.verify(cc.ModelOracle(embedded.victim).postprocess("hard-label"), embedded.key)


@pytest.fixture(scope="module")
def in_distribution(tiny):
    return tiny.embed("ewe", epochs=4, distribution="in", maxiter=1)


def test_in_distribution_patch_triggers_embed(in_distribution, innocent):
    emb = in_distribution
    assert emb.key["patch_position"].shape == (2,) and "patch_position" not in emb.key.meta
    assert int(emb.key["source_class"]) != int(emb.key["target_class"])
    ev = cc.verify(emb.victim, emb.key, sequential=False).evidence
    assert ev.p_value <= 1e-6 and ev.queries == 80  # triggers and their untriggered originals
    assert ev.metrics["mean_p"] - ev.metrics["mean_q"] > 0.5
    assert cc.verify(innocent, emb.key, alpha=0.05, sequential=False).evidence.verdict == "not stolen"


@pytest.mark.parametrize("which", ["out", "in"])
def test_sequential_verification_keeps_pairs_and_the_verdict(embedded, in_distribution, which):
    from copycatch.verification.sequential import verify_sequential

    emb = embedded if which == "out" else in_distribution
    scheme = cc.scheme_for_key(emb.key)
    fixed = scheme.verify(cc.ModelOracle(emb.victim), emb.key)
    sequential = verify_sequential(scheme, cc.ModelOracle(emb.victim), emb.key)
    assert sequential.verdict == fixed.verdict == "stolen" and sequential.queries <= fixed.queries
    if which == "in":
        x = scheme.verification_inputs(emb.key)
        assert torch.equal(x[1::2], emb.key["original_x"].float() / 255)  # each trigger followed by its original


@pytest.mark.parametrize("distribution", ["out", "in"])
def test_false_positive_rate_over_many_innocent_draws(splits, trained, distribution, tiny):
    """Keys from independent draws (OOD sets, source classes, triggers) against innocent models: FPR(0.05) <= 0.07.

    Several of these innocents label whole OOD classes as the key's target (the reason the plain target share is
    not the statistic); the certainty null must still hold for them.
    """
    weak_splits = cc.make_splits(cc.load_dataset("synthetic", n=2400, num_classes=4, size=8, noise=0.9, seed=0), seed=0)
    innocents = [
        cc.train("mlp", splits, on="attacker_pool", config=cc.TrainConfig(epochs=3, seed=s), hidden=32) for s in (1, 2)
    ] + [
        cc.train("mlp", weak_splits, config=cc.TrainConfig(epochs=1, seed=1), hidden=16),
        cc.create_for("cnn-small", splits, seed=3),
        cc.train("cnn-small", splits, on="attacker_pool", config=cc.TrainConfig(epochs=3, seed=4)),
    ]
    p_values, argmax_rates = [], []
    for draw in range(20):
        ood = f"synthetic:seed={100 + draw};n=400"
        params = tiny.params("ewe", ood_dataset=ood, n_triggers=64, maxiter=1, distribution=distribution)
        scheme = EntangledWatermark(**params)
        tap = LayerTap(trained, default_layers(trained))
        try:
            made = scheme.make_triggers(trained, splits, tap, 32, torch.Generator().manual_seed(draw))
        finally:
            tap.remove()
        tensors = {
            "trigger_x": made["triggers_u8"][:40],
            "original_x": made["sources_u8"][:40],
            "source_class": torch.tensor(made["source"]),
            "target_class": torch.tensor(made["target"]),
        }
        key = Key("ewe", scheme.params.to_dict(), tensors, {"num_classes": 4, "input_shape": [1, 8, 8]})
        for model in innocents:
            ev = scheme.verify(cc.ModelOracle(model), key, alpha=0.05)
            p_values.append(ev.p_value)
            argmax_rates.append(ev.metrics["watermark_accuracy"])
    p = np.array(p_values)
    assert len(p) == 100 and np.mean(p <= 0.05) <= 0.07
    if distribution == "out":
        assert np.mean(np.array(argmax_rates) >= 0.4) >= 0.05, "no innocent dumped a class on the target: too easy"


def test_bad_parameters_are_named(splits, tiny):
    with pytest.raises(cc.CopycatchError, match="certainty"):
        EntangledWatermark(certainty=-0.1)
    with pytest.raises(cc.CopycatchError, match="ratio"):
        EntangledWatermark(ratio=0.5)
    with pytest.raises(cc.CopycatchError, match="n_verify"):
        EntangledWatermark(n_triggers=10, n_verify=20)
    with pytest.raises(cc.CopycatchError, match="'factors'"):
        cc.create_scheme("ewe", factors=3)
    with pytest.raises(cc.CopycatchError, match="source_class=9"):
        EntangledWatermark(**tiny.params("ewe", source_class=9)).source_inputs(splits, torch.Generator())


def test_cli_embed_and_verify(tmp_path, capsys):
    victim, key = tmp_path / "v.safetensors", tmp_path / "v.cckey"
    params = "ood_dataset=synthetic:seed=11,n_triggers=64,n_verify=30,w_epochs=2,maxiter=1"
    assert (
        main(
            [
                "embed",
                "--max-cost",
                "none",
                "--scheme",
                "ewe",
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
    out = capsys.readouterr().out
    assert "STOLEN" in out and "sign test" in out
