"""Each extraction attack does what its docstring claims, never spends more than its budget, and is reachable
from the CLI. (The lead's tests/test_extraction.py checks ≥ 90 % agreement for every attack at its defaults.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import classifier_entries

import copycatch as cc
from copycatch.attacks.extraction import EXTRACTION_ATTACKS, create_extraction_attack
from copycatch.attacks.extraction.base import answers_to_targets, draw_indices
from copycatch.attacks.extraction.distillation import distillation_loss
from copycatch.attacks.extraction.jacobian import jacobian_step
from copycatch.attacks.extraction.knockoff import kmeans
from copycatch.cli.main import main
from copycatch.core.errors import BudgetExceeded, InvalidArgument
from copycatch.models.train import predict_logits
from copycatch.oracles.base import Oracle

CLASSIFIER_ATTACKS = classifier_entries(EXTRACTION_ATTACKS)
# every classifier attack, plus the variants that take a different code path
VARIANTS = [(name, {}) for name in CLASSIFIER_ATTACKS] + [
    ("knockoff", {"policy": "adaptive"}),
    ("knockoff", {"policy": "adaptive", "actions": "labels", "reward": "cert"}),
    ("jacobian", {"seed_labels": "oracle"}),
]
VARIANT_IDS = [name + "".join(f"-{v}" for v in params.values()) for name, params in VARIANTS]


class RecordingOracle(Oracle):
    """Passes queries to an inner oracle and records every batch asked and every answer given."""

    def __init__(self, inner: Oracle, *, budget: int | None = None):
        super().__init__(inner.num_classes, inner.input_shape, budget=budget, name="recording")
        self.inner = inner
        self.output_kind = inner.output_kind
        self.batches: list[torch.Tensor] = []
        self.answers: list[torch.Tensor] = []

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner.query(x)
        self.batches.append(x.clone())
        self.answers.append(out.clone())
        return out

    @property
    def asked(self) -> torch.Tensor:
        return torch.cat(self.batches)

    @property
    def answered(self) -> torch.Tensor:
        return torch.cat(self.answers)


@pytest.fixture()
def steal_with(tiny):
    """Run one extraction attack into a fresh surrogate (trained at ``tiny.thief_training`` unless told)."""

    def steal(oracle, pool, name, params=None, *, budget=None, config=None, arch="mlp"):
        config = config or tiny.thief_training
        attack = create_extraction_attack(name, **{**(params or {}), "budget": budget})
        surrogate = cc.create_model(arch, tuple(pool.x.shape[1:]), oracle.num_classes, seed=config.seed)
        return attack.run(oracle, pool, surrogate, train=config, progress=False)

    return steal


# ---------------------------------------------------------------------------------------------------------------------
# budgets: planned up front, never exceeded, reported exactly
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=VARIANT_IDS)
def test_attack_spends_at_most_its_budget_and_reports_every_query(name, params, splits, trained, steal_with):
    # the oracle's own hard budget equals the attack's: one query too many would raise BudgetExceeded.
    # 97 is odd on purpose: partial adaptive rounds, a cut JBDA augmentation, averaging's leftover 7 queries
    budget = 97
    oracle = RecordingOracle(cc.ModelOracle(trained), budget=budget)
    result = steal_with(
        oracle,
        splits.attacker_pool,
        name,
        {**params, "seeds": 40} if name == "jacobian" else params,
        budget=budget,
        config=cc.TrainConfig(epochs=1, seed=0),
    )
    assert result.queries == oracle.queries == len(oracle.asked) <= budget
    assert oracle.inner.queries == oracle.queries  # nothing reached the victim behind the thief's back
    if name == "averaging":
        assert result.queries == budget // 10 * 10  # whole inputs only: 10 queries each
    elif name != "jacobian":  # JBDA's schedule may end before the budget
        assert result.queries == budget


@pytest.mark.parametrize(("name", "params"), VARIANTS, ids=VARIANT_IDS)
def test_attack_refuses_a_plan_the_oracle_cannot_pay_before_asking_anything(name, params, splits, trained, steal_with):
    oracle = cc.ModelOracle(trained, budget=50)
    with pytest.raises(BudgetExceeded, match="allows only 50"):
        steal_with(oracle, splits.attacker_pool, name, params, budget=300)
    assert oracle.queries == 0


def test_default_budget_is_planned_from_the_pool_or_schedule(splits, trained, steal_with):
    pool = splits.attacker_pool.subset(range(60))
    assert steal_with(cc.ModelOracle(trained), pool, "hard-label").queries == 60
    assert steal_with(cc.ModelOracle(trained), pool, "averaging", {"repeats": 3}).queries == 180
    jbda = steal_with(cc.ModelOracle(trained), pool, "jacobian", {"seeds": 8, "rounds": 3})
    assert jbda.queries == 8 * (2**2 - 1) and jbda.info["transfer_set"] == 32


def test_data_fraction_gamma_limits_the_thiefs_pool(splits, trained, steal_with):
    pool = splits.attacker_pool
    for name in ("soft-label", "hard-label", "knockoff"):
        result = steal_with(cc.ModelOracle(trained), pool, name, {"data_fraction": 0.1})
        assert result.queries == round(0.1 * len(pool))
    oracle = RecordingOracle(cc.ModelOracle(trained))
    steal_with(oracle, pool, "knockoff", {"data_fraction": 0.05}, budget=200)  # refills a pool of 43 images
    assert len(torch.unique(oracle.asked.flatten(1), dim=0)) == round(0.05 * len(pool))
    with pytest.raises(InvalidArgument, match="data_fraction"):
        create_extraction_attack("soft-label", data_fraction=0)


def test_draw_indices_refills_with_fresh_permutations():
    index = draw_indices(10, 25, seed=0, refill=True)
    assert len(index) == 25 and all(sorted(index[i : i + 10].tolist()) == list(range(10)) for i in (0, 10))
    assert len(draw_indices(10, 25, seed=0)) == 10
    assert draw_indices(5, 5, seed=0, shuffle=False).tolist() == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------------------------
# what each attack learns from
# ---------------------------------------------------------------------------------------------------------------------


def _scaled_oracle(model, scale: float) -> Oracle:
    """Same argmax as ``model``, different probabilities (logits multiplied by ``scale``)."""
    return cc.CallableOracle(
        lambda x: torch.softmax(predict_logits(model, x) * scale, dim=1),
        model.num_classes,
        input_shape=model.input_shape,
        input_format="torch",
    )


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("name", ["hard-label", "knockoff"])
def test_label_only_attacks_learn_nothing_but_the_top_label(name, splits, trained, steal_with):
    params = {"argmaxed": True} if name == "knockoff" else {}
    sharp = steal_with(_scaled_oracle(trained, 3.0), splits.attacker_pool, name, params, budget=200)
    soft = steal_with(_scaled_oracle(trained, 0.3), splits.attacker_pool, name, params, budget=200)
    assert torch.equal(_weights(sharp.surrogate), _weights(soft.surrogate))
    assert cc.agreement(sharp.surrogate, trained, splits.test.x) >= 0.9


def test_soft_label_does_use_the_probabilities(splits, trained, steal_with):  # the control for the test above
    sharp = steal_with(_scaled_oracle(trained, 3.0), splits.attacker_pool, "soft-label", budget=200)
    soft = steal_with(_scaled_oracle(trained, 0.3), splits.attacker_pool, "soft-label", budget=200)
    assert not torch.equal(_weights(sharp.surrogate), _weights(soft.surrogate))


def test_hard_label_leaves_out_answers_without_a_single_top_class(splits, trained, steal_with):
    def tied(x):
        probs = torch.softmax(predict_logits(trained, x), dim=1)
        probs[::2] = 0.0  # every other answer is all zeros, as from an over-quantised API
        return probs

    oracle = cc.CallableOracle(tied, 4, input_shape=trained.input_shape, input_format="torch")
    result = steal_with(oracle, splits.attacker_pool, "hard-label", budget=100)
    assert result.queries == 100 and result.info["ambiguous"] == 50 and result.info["transfer_set"] == 50


def _spread_oracle(num_classes: int = 4) -> Oracle:
    """Answers spanning the whole probability range: confident for bright inputs, flat for dark ones."""
    weights = torch.randn(64, num_classes, generator=torch.Generator().manual_seed(0))

    def answer(x):
        flat = x.flatten(1)
        return torch.softmax((flat - 0.5) @ weights * (flat.mean(dim=1, keepdim=True) * 4) ** 2, dim=1)

    return cc.CallableOracle(answer, num_classes, input_shape=(1, 8, 8), input_format="torch")


def _spread_pool(n: int = 400) -> cc.TensorData:
    gen = torch.Generator().manual_seed(1)
    brightness = torch.linspace(0.05, 1.0, n).view(n, 1, 1, 1)
    return cc.TensorData(
        (torch.rand(n, 1, 8, 8, generator=gen) * brightness).clamp(0, 1), torch.zeros(n, dtype=torch.long)
    )


@pytest.mark.parametrize("levels", [2, 3, 5, 11])
def test_quantized_attack_keeps_exactly_k_probability_levels(levels, steal_with):
    result = steal_with(_spread_oracle(), _spread_pool(), "quantized", {"levels": levels}, budget=400)
    assert result.info["levels_seen"] == levels  # every level of the grid occurs, and nothing else


@pytest.mark.parametrize("levels", [2, 3, 5, 1000])
def test_post_quantize_spec_gives_the_thief_exactly_k_levels(levels, steal_with):
    oracle = RecordingOracle(_spread_oracle().postprocess(f"quantize:levels={levels}"))
    result = steal_with(oracle, _spread_pool(), "soft-label", budget=400)
    values = torch.unique(oracle.answered)
    grid = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    on_grid = (values.double().unsqueeze(1) - grid).abs().min(dim=1).values < 1e-6
    assert result.queries == 400 and bool(on_grid.all())
    assert len(values) == levels if levels <= 11 else 2 < len(values) <= levels


def test_quantized_attack_ignores_differences_below_its_resolution(splits, trained, steal_with):
    # two APIs whose probabilities differ but round to the same levels: the second sits halfway to the level
    base = _scaled_oracle(trained, 1.0)
    quantize = cc.create_postprocessor("quantize", levels=5)

    def halfway(x):
        probs = base.query(x)
        return probs + 0.5 * (quantize(probs) - probs)

    nudged = cc.CallableOracle(halfway, 4, input_shape=trained.input_shape, input_format="torch")
    a = steal_with(base, splits.attacker_pool, "quantized", {"levels": 5}, budget=150)
    b = steal_with(nudged, splits.attacker_pool, "quantized", {"levels": 5}, budget=150)
    assert torch.equal(_weights(a.surrogate), _weights(b.surrogate))
    with pytest.raises(InvalidArgument, match="levels"):
        create_extraction_attack("quantized", levels=1001)


def test_steal_with_post_quantize_and_hard_label_runs_end_to_end(splits, trained, tiny):
    for post in ("quantize:levels=3", "hard-label"):
        result = cc.steal(
            trained,
            splits.attacker_pool,
            attack="soft-label",
            budget=300,
            config=tiny.thief_training,
            postprocess=[post],
        )
        assert result.queries == 300 and cc.agreement(result.surrogate, trained, splits.test.x) >= 0.9


def test_answers_to_targets_rescales_rows_and_makes_empty_rows_uniform():
    out = answers_to_targets(torch.tensor([[0.5, 0.5, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.allclose(out, torch.tensor([[1 / 3, 1 / 3, 1 / 3, 0.0], [0.25, 0.25, 0.25, 0.25]]))


# -- distillation -----------------------------------------------------------------------------------------------------


def test_distillation_loss_is_equation_7():
    gen = torch.Generator().manual_seed(0)
    logits, teacher_logits = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    labels = torch.tensor([0, 1, 2, 3, 0])
    packed = torch.cat([torch.softmax(teacher_logits, 1), labels.float().unsqueeze(1)], 1)
    alpha, t = 0.7, 20.0
    teacher_t, student_t = torch.softmax(teacher_logits / t, 1), torch.softmax(logits / t, 1)
    kl = (teacher_t * (teacher_t.log() - student_t.log())).sum(1).mean()
    expected = (1 - alpha) * F.cross_entropy(logits, labels) + 2 * alpha * t**2 * kl
    assert torch.allclose(distillation_loss(alpha, t)(logits, packed), expected, atol=1e-5)
    assert torch.allclose(distillation_loss(0.0, t)(logits, packed), F.cross_entropy(logits, labels))


def test_distillation_learns_from_the_true_labels(splits, trained, steal_with):
    # an API that answers noise teaches nothing; with α = 0.2 the true labels still make a good surrogate
    noise = cc.CallableOracle(
        lambda x: torch.softmax(torch.randn(len(x), 4), 1), 4, input_shape=trained.input_shape, input_format="torch"
    )
    with_labels = steal_with(
        noise, splits.attacker_pool, "distillation", {"alpha": 0.2}, budget=300, config=cc.TrainConfig(epochs=4, seed=0)
    )
    assert with_labels.info["uses_true_labels"] and cc.accuracy(with_labels.surrogate, splits.test) >= 0.9
    without = steal_with(noise, splits.attacker_pool, "soft-label", budget=300, config=cc.TrainConfig(epochs=4, seed=0))
    assert cc.accuracy(without.surrogate, splits.test) < 0.7


def test_distillation_refuses_a_pool_without_the_victims_labels(trained, steal_with):
    digits = cc.load_dataset("digits")  # 10 classes, an out-of-distribution pool for the 4-class toy
    with pytest.raises(InvalidArgument, match="true labels"):
        steal_with(cc.ModelOracle(trained), cc.TensorData(digits.x, digits.y), "distillation", budget=100)
    with pytest.raises(InvalidArgument, match="alpha"):
        create_extraction_attack("distillation", alpha=1.5)


# -- out-of-distribution query sets -------------------------------------------------------------------------------


def test_soft_label_steals_with_an_out_of_distribution_pool(splits, trained):
    digits = cc.load_dataset("digits")
    result = cc.steal(
        trained,
        cc.TensorData(digits.x, digits.y),
        attack="soft-label",
        budget=800,
        config=cc.TrainConfig(epochs=6, seed=0),
    )
    assert result.queries == 800
    # the thief never saw the owner's distribution, yet copies a good share of the victim's behaviour on it
    assert cc.agreement(result.surrogate, trained, splits.test.x) >= 0.6


# -- averaging ----------------------------------------------------------------------------------------------------


def _randomising_oracle(model, flip: float = 0.6) -> Oracle:
    """An API that answers a uniformly random one-hot row with probability ``flip`` (an extreme API-time defence)."""
    gen = torch.Generator().manual_seed(0)

    def answer(x):
        probs = torch.softmax(predict_logits(model, x), dim=1)
        noise = F.one_hot(torch.randint(4, (len(x),), generator=gen), 4).float()
        replace = torch.rand(len(x), 1, generator=gen) < flip
        return torch.where(replace, noise, probs)

    return cc.CallableOracle(answer, 4, input_shape=model.input_shape, input_format="torch")


def test_averaging_asks_each_input_n_times_and_recovers_the_expected_answer(splits, trained):
    oracle = RecordingOracle(_randomising_oracle(trained))
    attack = create_extraction_attack("averaging", repeats=50, query_batch=100)
    x = splits.attacker_pool.x[:40]
    means = attack.answer(oracle, x, progress=False)
    asked = oracle.asked
    assert len(asked) == 2000 and all(len(b) == 100 for b in oracle.batches)
    assert torch.equal(asked.view(40, 50, -1), x.flatten(1).unsqueeze(1).expand(40, 50, -1))
    # the API's expected answer is (1 − flip)·p + flip/4; the mean of 50 answers lands ~√50 times closer to it
    expected = 0.4 * torch.softmax(predict_logits(trained, x), 1) + 0.6 / 4
    single = oracle.answered.view(40, 50, 4)[:, 0]
    assert (means - expected).abs().mean() < 0.3 * (single - expected).abs().mean()


def test_averaging_beats_single_queries_against_a_randomising_api(splits, trained, steal_with):
    config = cc.TrainConfig(epochs=6, seed=0)
    averaged = steal_with(
        _randomising_oracle(trained, flip=0.7),
        splits.attacker_pool,
        "averaging",
        {"repeats": 20},
        budget=2000,
        config=config,
    )
    single = steal_with(
        _randomising_oracle(trained, flip=0.7), splits.attacker_pool, "soft-label", budget=100, config=config
    )
    agree_avg = cc.agreement(averaged.surrogate, trained, splits.test.x)
    assert agree_avg >= 0.9 and agree_avg > cc.agreement(single.surrogate, trained, splits.test.x)


def test_averaging_with_the_papers_100_repeats_at_an_honest_budget(splits, trained, steal_with):
    result = steal_with(
        cc.ModelOracle(trained),
        splits.attacker_pool,
        "averaging",
        {"repeats": 100},
        budget=6000,
        config=cc.TrainConfig(epochs=6, seed=0),
    )
    assert result.queries == 6000 and result.info["inputs_queried"] == 60
    assert cc.agreement(result.surrogate, trained, splits.test.x) >= 0.9
    with pytest.raises(InvalidArgument, match="at least 100"):
        steal_with(cc.ModelOracle(trained), splits.attacker_pool, "averaging", {"repeats": 100}, budget=99)


# -- Knockoff Nets ------------------------------------------------------------------------------------------------


def test_knockoff_random_refills_the_pool_when_the_budget_is_larger(splits, trained, steal_with):
    pool = splits.attacker_pool.subset(range(50))
    oracle = RecordingOracle(cc.ModelOracle(trained))
    result = steal_with(oracle, pool, "knockoff", budget=120)
    per_image = torch.unique(oracle.asked.flatten(1), dim=0, return_counts=True)[1]
    assert result.queries == 120 and len(per_image) == 50 and per_image.min() >= 2 and per_image.max() <= 3


def test_knockoff_adaptive_learns_to_avoid_an_uninformative_part_of_the_pool(splits, trained, steal_with):
    # a fifth action of blank images: the victim says the same thing about all of them
    pool = splits.attacker_pool
    blank = cc.TensorData(torch.zeros(400, *pool.x.shape[1:]), torch.full((400,), 4))
    result = steal_with(
        cc.ModelOracle(trained),
        cc.TensorData.concat([pool, blank]),
        "knockoff",
        {"policy": "adaptive", "actions": "labels"},
        budget=600,
    )
    counts, policy = result.info["action_counts"], result.info["final_policy"]
    assert result.queries == 600 and sum(counts) == 600 and len(counts) == 5
    assert counts[4] < 600 / 5 / 2 and policy[4] == min(policy) and policy[4] < 0.1
    assert cc.agreement(result.surrogate, trained, splits.test.x) >= 0.9


def test_kmeans_separates_obvious_groups():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 2, generator=gen) * 0.1, torch.randn(30, 2, generator=gen) * 0.1 + 5])
    assign = kmeans(x, 2, seed=0)
    assert len(set(assign[:30].tolist())) == 1 and len(set(assign[30:].tolist())) == 1 and assign[0] != assign[30]


# -- Jacobian-based augmentation ----------------------------------------------------------------------------------


def test_jacobian_sign_schedule_and_query_plan_follow_the_reference():
    attack = create_extraction_attack("jacobian")
    assert [attack.step_size(r) for r in range(5)] == [-0.1, -0.1, -0.1, 0.1, 0.1]
    assert attack.planned_queries(150) == 4650
    assert create_extraction_attack("jacobian", seed_labels="oracle").planned_queries(150) == 4800
    assert create_extraction_attack("jacobian", flip_every=0).step_size(0) == 0.1


def test_jacobian_step_moves_along_the_sign_of_the_label_logit_gradient():
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.full((2, 1, 2, 2), 0.5)
    labels = torch.tensor([0, 2])
    out = jacobian_step(linear, x, labels, 0.1)
    expected = 0.5 + 0.1 * linear[1].weight[labels].sign().view(2, 1, 2, 2)
    assert torch.allclose(out, expected)
    assert jacobian_step(linear, torch.ones(1, 1, 2, 2), labels[:1], 0.1).max() <= 1  # stays a valid input


def test_jacobian_doubles_the_set_with_oracle_labels_and_truth_labelled_seeds(splits, trained, steal_with):
    oracle = RecordingOracle(cc.ModelOracle(trained))
    result = steal_with(oracle, splits.attacker_pool, "jacobian", {"seeds": 20, "rounds": 4})
    sizes = [r["set_size"] for r in result.info["rounds"]]
    assert sizes == [20, 40, 80, 160] and result.queries == 140 and result.info["transfer_set"] == 160
    # every query is an augmented point λ away (L∞) from the set, never a seed (those came with true labels)
    asked, pool_rows = oracle.asked.flatten(1), splits.attacker_pool.x.flatten(1)
    assert not (torch.cdist(asked, pool_rows, p=float("inf")) < 1e-6).any()
    known = torch.cat([pool_rows, asked])
    distance = torch.cdist(asked, known, p=float("inf"))
    distance[torch.arange(len(asked)), len(pool_rows) + torch.arange(len(asked))] = float("inf")  # not itself
    assert torch.allclose(distance.min(dim=1).values, torch.tensor(0.1), atol=1e-6)


def test_jacobian_cuts_the_last_augmentation_to_fit_the_budget(splits, trained, steal_with):
    result = steal_with(
        cc.ModelOracle(trained), splits.attacker_pool, "jacobian", {"seeds": 20, "rounds": 6}, budget=50
    )
    assert result.queries == 50 and result.info["transfer_set"] == 70
    assert cc.agreement(result.surrogate, trained, splits.test.x) >= 0.8


# -- margin extraction --------------------------------------------------------------------------------------------


def test_margin_extraction_queries_within_eps_and_moves_towards_the_victims_boundary(splits, trained, steal_with):
    eps = 0.25
    oracle = RecordingOracle(cc.ModelOracle(trained))
    result = steal_with(
        oracle,
        splits.attacker_pool,
        "margin-extraction",
        {"eps": eps, "step_size": eps / 4, "steps": 10},
        budget=400,
        config=cc.TrainConfig(epochs=6),
    )
    asked = oracle.asked.flatten(1)
    clean = asked[: result.info["clean_queries"]]
    perturbed = asked[result.info["clean_queries"] :]
    assert result.queries == 400 and len(clean) == 200 and len(perturbed) == 200
    distance = torch.cdist(perturbed, clean, p=float("inf")).min(dim=1).values
    assert (distance <= eps + 1e-6).all() and (distance > 0).all()
    # PGD on the surrogate changes the victim's label far more often than random corners of the same ball
    changed = sum(r["victim_label_changed"] * r["queries"] for r in result.info["rounds"]) / len(perturbed)
    gen = torch.Generator().manual_seed(0)
    corners = (clean + eps * torch.randn(clean.shape, generator=gen).sign()).clamp(0, 1).view(-1, *trained.input_shape)
    victim_clean = predict_logits(trained, clean.view(-1, *trained.input_shape)).argmax(1)
    random_changed = (predict_logits(trained, corners).argmax(1) != victim_clean).float().mean().item()
    assert changed > 0.3 and changed > 5 * random_changed
    assert cc.agreement(result.surrogate, trained, splits.test.x) >= 0.9


def test_margin_extraction_plans_every_query_of_the_budget():
    attack = create_extraction_attack("margin-extraction", rounds=3)
    assert attack.split_budget(101, 1000) == (50, [17, 17, 17])
    assert attack.split_budget(1, 1000) == (1, [0, 0, 0])
    assert attack.split_budget(1000, 100) == (100, [300, 300, 300])  # a small pool: more perturbed queries


# ---------------------------------------------------------------------------------------------------------------------
# registry and CLI
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXTRACTION_ATTACKS.list())
def test_every_attack_documents_every_parameter_with_its_default(name):
    """The module docstring is where ``-p NAME=VALUE`` parameters are described, as ``name (default)``; the first
    line of the class docstring is the summary ``copycatch steal --help`` shows (tested there)."""
    cls = EXTRACTION_ATTACKS.get(name).factory
    doc = __import__(cls.__module__, fromlist=["_"]).__doc__ or ""
    for field in dataclasses.fields(cls.Params):
        assert f"{field.name} (" in doc, f"{name}: parameter {field.name} is not documented with its default"


@pytest.fixture(scope="module")
def cli_victim(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("steal") / "victim.safetensors"
    assert main(["train", "--arch", "mlp", "-o", str(path), *tiny.flags(), "--data", "synthetic", "-q"]) == 0
    return path


def test_steal_help_lists_every_attack_with_its_summary(capsys):
    with pytest.raises(SystemExit):
        main(["steal", "--help"])
    out = capsys.readouterr().out
    for name, summary in EXTRACTION_ATTACKS.describe():
        assert summary and name in out and summary[:30] in " ".join(out.split())


@pytest.mark.parametrize("name", CLASSIFIER_ATTACKS)
def test_cli_steal_reaches_every_attack(name, cli_victim, tmp_path, capsys):
    out = tmp_path / "surrogate.safetensors"
    code = main(
        [
            "steal",
            "--victim",
            str(cli_victim),
            "--attack",
            name,
            "--budget",
            "200",
            "-o",
            str(out),
            "--epochs",
            "2",
            "--data",
            "synthetic",
            "-q",
            *(["-p", "seeds=40"] if name == "jacobian" else []),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0 and f"with {name}" in printed and "200 queries" in printed
    assert cc.load_model(out).provenance["stolen_with"] == name


@pytest.mark.parametrize(
    "extra",
    [
        ["--queries", "digits"],
        ["--post", "quantize:levels=3"],
        ["--attack", "quantized", "-p", "levels=4,data_fraction=0.5"],
    ],
)
def test_cli_steal_with_ood_queries_post_processing_and_parameters(extra, cli_victim, tmp_path, capsys):
    code = main(
        [
            "steal",
            "--victim",
            str(cli_victim),
            "--budget",
            "150",
            "-o",
            str(tmp_path / "s.safetensors"),
            "--epochs",
            "2",
            "--data",
            "synthetic",
            "-q",
            *extra,
        ]
    )
    assert code == 0 and "150 queries" in capsys.readouterr().out


def test_cli_names_a_bad_attack_parameter(cli_victim, tmp_path, capsys):
    code = main(
        [
            "steal",
            "--victim",
            str(cli_victim),
            "--attack",
            "knockoff",
            "-p",
            "policy=greedy",
            "-o",
            str(tmp_path / "s"),
            "--data",
            "synthetic",
            "-q",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "policy" in err and "greedy" in err and len(err.strip().splitlines()) == 1
