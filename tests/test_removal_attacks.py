"""Removal attacks on tiny models: each does what its docstring claims (and only that)."""

import copy

import pytest
import torch
from torch import nn

import copycatch as cc
from copycatch.attacks.removal import REMOVAL_ATTACKS, create_removal_attack, list_removal_attacks, run_chain
from copycatch.attacks.removal.evasion import (
    EvadingOracle,
    deployment_path,
    load_deployment,
    open_deployment,
    save_deployment,
)
from copycatch.attacks.removal.fine_prune import mean_activations
from copycatch.attacks.removal.mislabel_mix import mislabelled_mixtures
from copycatch.attacks.removal.neural_cleanse import anomaly_indices, flagged_labels
from copycatch.attacks.removal.quantize import quantize_tensor
from copycatch.core.errors import CorruptFile, InvalidArgument
from copycatch.data import TensorData
from copycatch.models.io import load_model, save_model, weights_digest
from copycatch.models.train import predict_logits

CHANGES_WEIGHTS = {
    "adv-overwrite",
    "fine-prune",
    "fine-tune",
    "mislabel-mix",
    "piracy",
    "prune",
    "quantize",
    "svd",
    "transfer",
}
KEEPS_WEIGHTS = {"neural-cleanse", "noise", "reject"}  # NC without unlearning only reports; evasions act on queries


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is fastest, and on a shared machine much faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cnn(splits):
    return cc.train("cnn-small", splits, config=cc.TrainConfig(epochs=2, seed=0))


def test_every_registered_attack_is_classified_here():
    assert set(list_removal_attacks()) == CHANGES_WEIGHTS | KEEPS_WEIGHTS


@pytest.mark.parametrize("name", list_removal_attacks())
def test_every_attack_reports_accuracy_and_leaves_a_model_that_saves_and_loads(name, splits, trained, tmp_path, tiny):
    before = copy.deepcopy(trained.state_dict())
    result = run_chain(
        trained,
        [create_removal_attack(name, **tiny.removal(name))],
        splits.attacker_pool,
        test=splits.test,
        train=tiny.removal_training,
    )[-1]
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items()), "the input model was modified"
    assert 0.0 <= result.accuracy_before <= 1.0 and 0.0 <= result.accuracy_after <= 1.0
    assert result.info["summary"]
    assert result.model.provenance["removals"][-1]["attack"] == name
    assert set(result.model.state_dict()) == set(before), "pruning/attack left extra state-dict keys"
    changed = any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())
    assert changed == (name in CHANGES_WEIGHTS)
    path = save_model(result.model, tmp_path / "laundered.safetensors")
    reloaded = load_model(path)
    assert torch.equal(predict_logits(reloaded, splits.test.x), predict_logits(result.model, splits.test.x))
    assert bool(result.evasions) == REMOVAL_ATTACKS.get(name).factory.input_side


@pytest.mark.parametrize(
    "spec, message",
    [
        ("prune:rate=1.5", "rate=1.5"),
        ("quantize:bits=0", "bits=0"),
        ("svd:rank=0", "rank=0"),
        ("noise:sigma=-1", "sigma=-1"),
        ("reject:fpr=1", "fpr=1"),
        ("reject:detector=svm", "'svm'"),
        ("fine-tune:epochs=-1", "-1"),
        ("mislabel-mix:mixers=half,star", "'star'"),
        ("fine-prune:max_drop=2", "max_drop=2"),
        ("prune:amount=0.5", "valid keys"),
        ("piracy:scheme_params={bad", "JSON"),
        ("no-such-attack", "valid removal attacks"),
    ],
)
def test_bad_parameters_are_named(spec, message, splits, trained):
    with pytest.raises(InvalidArgument, match=message):
        run_chain(trained, [spec], splits.attacker_pool)


# ---------------------------------------------------------------------------------------------------------------------
# fine-tuning and transfer
# ---------------------------------------------------------------------------------------------------------------------


def test_fine_tuning_changes_weights_and_keeps_accuracy(splits, trained, tiny):
    result = run_chain(trained, ["fine-tune"], splits.attacker_pool, test=splits.test, train=tiny.removal_training)[-1]
    moved = sum(
        float((a - b).abs().sum()) for a, b in zip(result.model.state_dict().values(), trained.state_dict().values())
    )
    assert moved > 1.0
    assert result.accuracy_after >= result.accuracy_before - 0.02 and result.accuracy_after >= 0.95


def test_self_labelled_fine_tuning_needs_no_labels(splits, trained, tiny):
    unlabelled = TensorData(splits.attacker_pool.x, torch.zeros(len(splits.attacker_pool), dtype=torch.long))
    train = tiny.removal_training
    result = run_chain(trained, ["fine-tune:labels=self"], unlabelled, test=splits.test, train=train)[-1]
    assert result.accuracy_after >= 0.95  # garbage labels were never used
    poisoned = run_chain(trained, ["fine-tune:labels=data"], unlabelled, test=splits.test, train=train)[-1]
    assert poisoned.accuracy_after < 0.5  # ... whereas labels=data trains on them


def test_fine_tuning_soft_oracle_answers_works(splits, trained, tiny):
    answers = cc.ModelOracle(trained).query(splits.attacker_pool.x)
    result = run_chain(
        trained,
        ["fine-tune"],
        TensorData(splits.attacker_pool.x, answers),
        test=splits.test,
        train=tiny.removal_training,
    )[-1]
    assert result.accuracy_after >= 0.95


def test_fine_tuning_the_last_layer_touches_only_it(splits, trained, tiny):
    result = run_chain(
        trained, ["fine-tune:layers=last,reinit_last=true"], splits.attacker_pool, train=tiny.removal_training
    )[-1]
    head = "net.classifier.0."
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, trained.state_dict()[name]) != name.startswith(head), name


def test_transfer_retrains_a_new_head_for_another_label_set(splits, trained, tmp_path, tiny):
    other = cc.make_splits(cc.load_dataset("synthetic", n=900, num_classes=3, size=8, noise=0.25, seed=7), seed=0)
    result = run_chain(
        trained, ["transfer:epochs=15,lr=0.01"], other.attacker_pool, test=other.test, train=tiny.removal_training
    )[-1]
    model = result.model
    assert model.num_classes == 3 and model.classifier[-1].out_features == 3
    assert result.accuracy_after >= 0.9
    features = [k for k in trained.state_dict() if k.startswith("net.features")]
    assert all(torch.equal(model.state_dict()[k], trained.state_dict()[k]) for k in features)  # head only
    assert load_model(save_model(model, tmp_path / "t.safetensors")).num_classes == 3


# ---------------------------------------------------------------------------------------------------------------------
# pruning, compression
# ---------------------------------------------------------------------------------------------------------------------


def _weights(model):
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("rate", [0.25, 0.5, 0.9])
def test_global_pruning_hits_the_requested_sparsity_exactly(rate, splits, cnn):
    model = run_chain(cnn, [f"prune:rate={rate}"], splits.attacker_pool)[-1].model
    weights = _weights(model)
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(rate * total)
    # global: the survivors are the largest magnitudes overall
    original = torch.cat([w.detach().abs().flatten() for w in _weights(cnn)])
    kept = torch.cat([w.detach().flatten() != 0 for w in weights])
    assert original[kept].min() >= original[~kept].max()


def test_layerwise_pruning_prunes_each_layer_at_the_rate_and_survives_fine_tuning(splits, trained, tiny):
    result = run_chain(
        trained,
        ["prune:rate=0.6,scope=layer,epochs=2"],
        splits.attacker_pool,
        test=splits.test,
        train=tiny.removal_training,
    )[-1]
    for w in _weights(result.model):
        assert int((w == 0).sum()) == round(0.6 * w.numel())
    assert result.accuracy_after >= 0.9


def test_fine_pruning_removes_exactly_the_dormant_channels(splits, cnn):
    layer = cnn.net.features[3]  # the last convolution, the paper's target
    activation = mean_activations(cnn, layer, splits.attacker_pool.x)
    dormant = set(torch.argsort(activation)[:16].tolist())
    result = run_chain(cnn, ["fine-prune:rate=0.5,epochs=0"], splits.attacker_pool)[-1]
    assert result.info["layer"] == "net.features.3" and set(result.info["pruned"]) == dormant
    pruned = result.model.net.features[3]
    for c in range(layer.out_channels):
        silenced = c in dormant
        assert bool((pruned.weight[c] == 0).all()) == silenced and bool(pruned.bias[c] == 0) == silenced
        if not silenced:  # nothing else is touched
            assert torch.equal(pruned.weight[c], layer.weight[c]) and torch.equal(pruned.bias[c], layer.bias[c])
    other = [k for k in cnn.state_dict() if not k.startswith("net.features.3.")]
    assert all(torch.equal(result.model.state_dict()[k], cnn.state_dict()[k]) for k in other)


def test_fine_pruned_channels_stay_silent_through_fine_tuning(splits, cnn, tiny):
    result = run_chain(
        cnn, ["fine-prune:rate=0.5,epochs=2"], splits.attacker_pool, test=splits.test, train=tiny.removal_training
    )[-1]
    after = mean_activations(result.model, result.model.net.features[3], splits.attacker_pool.x)
    assert torch.all(after[result.info["pruned"]] == 0)
    assert result.accuracy_after >= 0.9


def test_fine_pruning_stops_at_the_allowed_accuracy_drop(splits, trained):
    full = run_chain(trained, ["fine-prune:rate=0.95,epochs=0"], splits.attacker_pool, test=splits.test)[-1]
    careful = run_chain(
        trained, ["fine-prune:rate=0.95,epochs=0,max_drop=0.01"], splits.attacker_pool, test=splits.test
    )[-1]
    assert len(careful.info["pruned"]) < len(full.info["pruned"])
    assert careful.info["pruned"] == sorted(careful.info["pruned"])
    assert careful.accuracy_after >= careful.accuracy_before - 0.03


@pytest.mark.parametrize(
    "spec, expect",
    [("svd:rank=3", lambda full: min(3, full)), ("svd:rate=0.75", lambda full: max(1, round(0.25 * full)))],
)
def test_svd_reaches_the_requested_rank(spec, expect, splits, cnn):
    result = run_chain(cnn, [spec], splits.attacker_pool)[-1]
    for w in _weights(result.model):
        matrix = w.detach().reshape(w.shape[0], -1)  # float32: the rank tolerance matches the stored precision
        full = min(matrix.shape)
        assert int(torch.linalg.matrix_rank(matrix)) == expect(full)


def test_svd_keeps_the_best_low_rank_approximation_and_can_spare_the_head(splits, trained):
    result = run_chain(trained, ["svd:rank=5,include_last=false"], splits.attacker_pool)[-1]
    assert torch.equal(result.model.net.classifier[0].weight, trained.net.classifier[0].weight)
    w0, w = trained.net.features[1].weight.detach().double(), result.model.net.features[1].weight.detach().double()
    s = torch.linalg.svdvals(w0)
    assert torch.isclose(torch.linalg.norm(w0 - w), s[5:].norm(), rtol=1e-4)  # Eckart–Young


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_quantisation_uses_exactly_2_to_the_k_levels_per_tensor(bits, splits, cnn):
    result = run_chain(cnn, [f"quantize:bits={bits}"], splits.attacker_pool)[-1]
    for w0, w in zip(_weights(cnn), _weights(result.model)):
        values = torch.unique(w.detach())
        lo, hi = w0.min().double(), w0.max().double()
        step = (hi - lo) / (2**bits - 1)
        grid = (values.double() - lo) / step
        assert torch.allclose(grid, grid.round(), atol=1e-3)  # every value sits on the tensor's own grid
        assert len(values) <= 2**bits
        if w.numel() >= 400:  # plenty of spread-out weights: every level is used
            assert len(values) == 2**bits
        assert torch.isclose(values.min().double(), lo) and torch.isclose(values.max().double(), hi)


def test_quantize_all_covers_biases_and_constant_tensors_are_kept():
    t = torch.full((10,), 0.3)
    assert torch.equal(quantize_tensor(t, 2), t)
    model = cc.create_model("mlp", (1, 8, 8), 4, hidden=16, seed=0)
    out = run_chain(model, ["quantize:bits=2,tensors=all"], TensorData(torch.rand(8, 1, 8, 8), torch.zeros(8).long()))
    for name, p in out[-1].model.named_parameters():
        assert len(torch.unique(p)) <= 4, name


# ---------------------------------------------------------------------------------------------------------------------
# adversarial overwriting, mislabelled mixtures, piracy
# ---------------------------------------------------------------------------------------------------------------------


def test_adversarial_overwriting_fine_tunes_on_fgsm_adversaries(splits, trained, tiny):
    from copycatch.models.adversarial import fgsm

    result = run_chain(
        trained, ["adv-overwrite:n=600,eps=0.25"], splits.attacker_pool, test=splits.test, train=tiny.removal_training
    )[-1]
    assert result.info["adversaries"] == 600 and result.info["fooled_before"] > 0.5
    x, y = splits.test.x, splits.test.y
    adversaries = fgsm(trained, x, 0.25, y=y)  # adversaries of the model as stolen
    robust_before = float((predict_logits(trained, adversaries).argmax(1) == y).float().mean())
    robust_after = float((predict_logits(result.model, adversaries).argmax(1) == y).float().mean())
    assert robust_after > robust_before + 0.3
    assert result.accuracy_after >= 0.9


def test_mixtures_are_labelled_with_neither_source_class():
    classes = 5
    y = torch.arange(200) % classes
    x = (y.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 8, 8).clone()  # each pixel tells its source class
    mixed = mislabelled_mixtures(
        x, y, 300, classes, ("half", "side", "diag", "donut", "hotdog"), torch.Generator().manual_seed(0)
    )
    for image, label in zip(mixed.x, mixed.y):
        sources = set((image.flatten() * 10).round().long().tolist())
        assert len(sources) == 2 and int(label) not in sources
    assert set(mixed.y.tolist()) == set(range(classes))


def test_mislabel_mix_needs_three_classes():
    model = cc.create_model("mlp", (1, 8, 8), 2, hidden=8, seed=0)
    with pytest.raises(InvalidArgument, match="at least 3 classes"):
        run_chain(model, ["mislabel-mix"], TensorData(torch.rand(20, 1, 8, 8), torch.arange(20) % 2))


def test_piracy_embeds_the_thiefs_own_verifiable_watermark(splits, trained, tiny):
    result = run_chain(
        trained,
        ["piracy:scheme_params=n_triggers=30;trigger_batch=10;lam=1,epochs=10"],
        splits.attacker_pool,
        test=splits.test,
        train=tiny.removal_training,
    )[-1]
    pirate_key = result.info["key"]
    assert pirate_key.scheme == "margin" and len(pirate_key["trigger_label"]) == 30
    assert (
        cc.verify(result.model, pirate_key, sequential=False).evidence.p_value < 1e-3
    )  # the thief can now "prove" its ownership
    assert (
        cc.verify(trained, pirate_key, sequential=False).evidence.p_value > 0.01
    )  # a mark the model did not have before
    assert result.accuracy_after >= 0.9


# ---------------------------------------------------------------------------------------------------------------------
# Neural Cleanse
# ---------------------------------------------------------------------------------------------------------------------


def test_mad_anomaly_index():
    norms = torch.tensor([10.0, 11.0, 12.0, 13.0, 2.0])
    index = anomaly_indices(norms)
    # median 11, |deviations| = 1, 0, 1, 2, 9 → MAD = 1.4826 · 1
    assert torch.allclose(index, torch.tensor([1, 0, 1, 2, 9], dtype=torch.float64) / 1.4826)
    assert flagged_labels(norms) == [4]
    assert flagged_labels(torch.tensor([10.0, 11.0, 12.0, 13.0, 30.0])) == []  # large norms are never flagged
    # an even count takes the mean of the two middle values (as numpy; torch.median would take the lower one)
    even = anomaly_indices(torch.tensor([1.0, 10.0, 11.0, 12.0, 13.0, 14.0]))
    assert torch.isclose(even[0], torch.tensor(10.5 / (1.4826 * 1.5), dtype=torch.float64))


def _stamp(x):
    x = x.clone()
    x[:, :, -2:, -2:] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    return x


@pytest.fixture(scope="module")
def backdoor_world():
    """Ten classes (the MAD needs a few labels); a clean MLP and one with a 2×2 corner patch → label 1."""
    splits = cc.make_splits(
        cc.load_dataset("synthetic", n=2000, num_classes=10, size=8, noise=0.25, seed=1),
        seed=0,
        fractions=cc.SplitFractions(owner_train=0.5, owner_holdout=0.0, attacker_pool=0.5),
    )
    config = cc.TrainConfig(epochs=15, batch_size=64, seed=1)
    clean = cc.create_for("mlp", splits, seed=1, hidden=64)
    cc.fit(clean, splits.owner_train, config)
    data = splits.owner_train
    poison = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))[: int(0.15 * len(data))]
    x, y = data.x.clone(), data.y.clone()
    x[poison], y[poison] = _stamp(x[poison]), 1
    backdoored = cc.create_for("mlp", splits, seed=1, hidden=64)
    cc.fit(backdoored, TensorData(x, y), config)
    return splits, clean, backdoored


# init_cost 1e-2 rather than the authors' 1e-3: 8×8 inputs and 1,000 steps leave the schedule little time to grow.
# Neural Cleanse has a false-positive rate of its own: with norms spread like a normal sample, the smallest of ten
# labels exceeds index 2 about one time in five; these seeded models are a case where it behaves (as it did on
# 3 of 4 seeds we tried, and flagged the backdoor on 4 of 4).
NC_TOY = "neural-cleanse:steps=1000,batch_size=64,init_cost=0.01"


def _attack_success(model, data):
    others = data.where(data.y != 1)
    return float((predict_logits(model, _stamp(others.x)).argmax(1) == 1).float().mean())


def test_neural_cleanse_flags_the_planted_backdoor_label_and_unlearns_it(backdoor_world):
    splits, _, backdoored = backdoor_world
    assert _attack_success(backdoored, splits.test) > 0.8
    result = run_chain(
        backdoored,
        [NC_TOY + ",unlearn=true,epochs=2"],
        splits.attacker_pool,
        test=splits.test,
        train=cc.TrainConfig(batch_size=64, seed=0),
    )[-1]
    assert result.info["flagged"] == [1]
    norms = result.info["norms"]
    assert norms[1] < 0.5 * sorted(norms)[len(norms) // 2]
    assert _attack_success(result.model, splits.test) < 0.1  # unlearning removed the backdoor
    assert result.accuracy_after >= result.accuracy_before - 0.03


def test_neural_cleanse_does_not_flag_a_clean_model(backdoor_world):
    splits, clean, _ = backdoor_world
    result = run_chain(clean, [NC_TOY + ",unlearn=true"], splits.attacker_pool, test=splits.test)[-1]
    assert result.info["flagged"] == [] and all(result.info["reached"])
    assert "nothing to unlearn" in result.info["summary"]
    assert all(torch.equal(a, b) for a, b in zip(result.model.parameters(), clean.parameters()))


# ---------------------------------------------------------------------------------------------------------------------
# input-side evasions
# ---------------------------------------------------------------------------------------------------------------------


def _outliers(n=200):
    g = torch.Generator().manual_seed(5)
    return torch.cat([torch.rand(n, 1, 8, 8, generator=g), torch.ones(n // 4, 1, 8, 8), torch.zeros(n // 4, 1, 8, 8)])


@pytest.mark.parametrize("detector", ["lof", "energy"])
def test_query_rejection_rejects_planted_outliers_and_passes_in_distribution_queries(detector, splits, trained):
    result = run_chain(trained, [f"reject:detector={detector},fpr=0.05"], splits.attacker_pool, test=splits.test)[-1]
    evasion, oracle = result.evasions[-1], result.oracle()
    assert result.info["rejected_test"] <= 0.1  # in-distribution queries pass (the threshold rejects ~5 %)
    assert float(evasion.rejects(oracle, _outliers()).float().mean()) >= 0.95
    # rejected queries get a one-hot random label, the rest the model's own answer
    x = torch.cat([splits.test.x[:100], _outliers(40)])
    answers = oracle.query(x)
    rejected = evasion.rejects(oracle, x)
    honest = torch.softmax(predict_logits(trained, x), 1)
    assert torch.allclose(answers[~rejected], honest[~rejected], atol=1e-6)
    assert torch.all(answers[rejected].max(1).values == 1) and torch.all(answers[rejected].sum(1) == 1)
    labels = answers[rejected].argmax(1)
    assert len(set(labels.tolist())) > 1  # random, not one fixed class


def test_noise_changes_answers_reproducibly_and_wraps_black_box_oracles(splits, trained):
    result = run_chain(trained, ["noise:sigma=0.3"], splits.attacker_pool, test=splits.test)[-1]
    x = splits.test.x[:50]
    a, b = result.oracle().query(x), result.oracle().query(x)
    assert torch.equal(a, b)  # fresh oracles with the same seed answer alike
    assert not torch.allclose(a, torch.softmax(predict_logits(trained, x), 1))
    black_box = cc.CallableOracle(
        lambda batch: torch.softmax(trained(torch.as_tensor(batch)), 1).detach(), 4, input_shape=(1, 8, 8)
    )
    assert result.evasions[-1].wrap(black_box).query(x).shape == (50, 4)
    silent = create_removal_attack("noise", sigma=0.0).wrap(trained)
    assert torch.allclose(silent.query(x), torch.softmax(predict_logits(trained, x), 1), atol=1e-6)


def test_query_rejection_needs_the_model_not_a_black_box(splits, trained):
    fitted = run_chain(trained, ["reject:detector=energy"], splits.attacker_pool)[-1].evasions[-1]
    black_box = cc.CallableOracle(lambda batch: torch.full((len(batch), 4), 0.25), 4, input_shape=(1, 8, 8))
    with pytest.raises(InvalidArgument, match="internals"):
        fitted.wrap(black_box)


def test_evasions_come_last_and_refuse_a_changed_model(splits, trained):
    with pytest.raises(InvalidArgument, match="evasions last"):
        run_chain(trained, ["noise", "prune"], splits.attacker_pool)
    results = run_chain(
        trained,
        ["prune:rate=0.3", "reject:detector=energy", "noise:sigma=0.05"],
        splits.attacker_pool,
        test=splits.test,
    )
    assert [e.name for e in results[-1].evasions] == ["reject", "noise"]
    assert results[-1].accuracy_before == results[1].accuracy_after  # accuracy through the evasions so far
    other = copy.deepcopy(results[-1].model)
    with torch.no_grad():
        other.net.classifier[0].bias += 1
    with pytest.raises(InvalidArgument, match="fitted to another model"):
        EvadingOracle(other, results[-1].evasions)


@pytest.mark.parametrize("detector", ["lof", "energy"])
def test_deployment_file_round_trips_and_opens_as_a_suspect(detector, splits, trained, tmp_path):
    result = run_chain(trained, [f"reject:detector={detector}", "noise:sigma=0.1"], splits.attacker_pool)[-1]
    model_path = save_model(result.model, tmp_path / "deployed.safetensors")
    path = save_deployment(model_path, result.model, result.evasions)
    assert path == deployment_path(model_path) == tmp_path / "deployed.evasion.safetensors"
    x = torch.cat([splits.test.x[:64], _outliers(32)])
    expected = result.oracle().query(x)
    assert torch.equal(open_deployment(path).query(x), expected)
    assert torch.equal(cc.as_oracle(str(path)).query(x), expected)  # what `copycatch verify --suspect` opens
    _, evasions = load_deployment(path)
    assert [e.name for e in evasions] == ["reject", "noise"] and evasions[0].threshold == result.evasions[0].threshold


def test_deployment_file_refuses_a_swapped_model(splits, trained, tmp_path):
    result = run_chain(trained, ["reject:detector=energy"], splits.attacker_pool)[-1]
    model_path = save_model(result.model, tmp_path / "m.safetensors")
    path = save_deployment(model_path, result.model, result.evasions)
    save_model(cc.create_for("mlp", splits, seed=3, hidden=64), model_path)
    with pytest.raises(CorruptFile, match="changed since"):
        open_deployment(path)
    (tmp_path / "junk.evasion.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFile):
        open_deployment(tmp_path / "junk.evasion.safetensors")


def test_verification_through_the_deployment(splits, trained):
    """A watermark verified on the bare model and through the thief's deployment (rehearsal in Python)."""
    embedding = cc.embed(
        "margin",
        splits,
        arch="mlp",
        params={"n_triggers": 30, "trigger_batch": 10, "lam": 1},
        config=cc.TrainConfig(epochs=4, seed=0),
        max_cost=None,
    )
    victim, key = embedding.victim, embedding.key
    result = run_chain(victim, ["noise:sigma=0.02"], splits.attacker_pool)[-1]
    bare = cc.verify(result.model, key, sequential=False).evidence
    deployed = cc.verify(result.oracle(), key, sequential=False).evidence
    assert bare.p_value < 1e-3 and deployed.queries == bare.queries
    assert weights_digest(result.model) == weights_digest(victim)
