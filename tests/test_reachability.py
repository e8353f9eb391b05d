"""How strong the evidence can ever be: every scheme's smallest attainable p-value against its own test on maximally
incriminating answers (whole key and smaller budgets), the sequential test's, and the warning when α is out of reach."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import classifier_entries

import copycatch as cc
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_INCONCLUSIVE, EXIT_STOLEN
from copycatch.oracles.base import Oracle
from copycatch.schemes import SCHEMES
from copycatch.schemes.base import UNREACHABLE
from copycatch.schemes.dataset_inference import NOISE_KINDS, regressor_scores
from copycatch.schemes.dynamarks import expected_candidate_responses
from copycatch.schemes.frontier_stitching import CONTROL
from copycatch.verification.sequential import SequentialPlan, reachable_p_value, verify_sequential

C = 4  # the tiny data's classes
CLASSIFIER_SCHEMES = classifier_entries(SCHEMES)
# every scheme, and the variants whose test or query layout differs
VARIANTS = [
    *CLASSIFIER_SCHEMES,
    "feature-sharing:distribution=in",
    "ewe:distribution=in",
    "frontier-stitching:null=paper",
]


@pytest.fixture(scope="module")
def keys(tiny):
    """One key per scheme (``name:param=value`` for a variant), made on first use on the scheme's tiny data (3
    epochs: the key's shape, not the victim's strength, matters)."""
    made: dict[str, cc.Key] = {}

    def key(variant: str) -> cc.Key:
        if variant not in made:
            name, _, change = variant.partition(":")
            made[variant] = tiny.for_scheme(name).embed(name, epochs=3, **dict([change.split("=")] if change else []))
            made[variant] = made[variant].key
        return made[variant]

    return key


def classes(key: cc.Key) -> int:
    return int(key.meta["num_classes"])


def one_hot(labels: torch.Tensor, num_classes: int = C) -> torch.Tensor:
    return F.one_hot(labels.long() % num_classes, num_classes).float()


def incriminating(key: cc.Key) -> torch.Tensor:
    """The answers to every verification input that incriminate the suspect most, by scheme."""
    p = key.params
    if key.scheme in ("margin", "trigger-set"):
        return one_hot(key["trigger_label"])
    if key.scheme == "frontier-stitching":  # every key label kept, every control moved off its label
        return one_hot(key["key_label"] + (key["key_role"] == CONTROL).long())
    if key.scheme == "patch-backdoor":
        return one_hot(key["key_label"])
    if key.scheme == "mea-defender":  # the target on true watermarks only
        return one_hot(torch.where(key["verify_group"] == 0, p["target"], p["target"] + 1))
    if key.scheme in ("feature-sharing", "ewe"):  # the target, certain, on triggers; another class on originals
        target, n = int(key["target_class"]), len(key["verify_x" if key.scheme == "feature-sharing" else "trigger_x"])
        if p.get("distribution", "out") == "out":
            return one_hot(torch.full((n,), target))
        flags = [0] * n + [1] * n if key.scheme == "feature-sharing" else [0, 1] * n
        return one_hot(target + torch.tensor(flags))
    if key.scheme == "dynamarks":  # E[F_alt] of the true secret: it fits the true secret exactly
        scheme = cc.scheme_for_key(key)
        prm, org = scheme.Params.from_dict(p), key["verify_org"].double()
        answers, rows = org.clone(), org.argmax(1)
        for i in rows.unique().tolist():
            true_index = int(key["favoured"][i]) * prm.range_choices + int(key["range_index"][i])
            answers[rows == i] = expected_candidate_responses(prm, i, org[rows == i])[true_index]
        return answers.float()
    if key.scheme == "dawn":  # the recorded wrong label on every record
        return one_hot(key["verify_wrong"])
    if key.scheme == "cae":  # every fingerprint carries its target label over
        return one_hot(key["target"], classes(key))
    if key.scheme == "dataset-inference":  # each group's whole walk on the label the regressor scores apart
        walk = 1 + p["directions"] * p["radii"]
        survives, falls = torch.ones(1, 1 + len(NOISE_KINDS)), torch.zeros(1, 1 + len(NOISE_KINDS))
        private_high = bool(regressor_scores(survives, key) > regressor_scores(falls, key))
        groups = []
        for y, high in ((key["y_private"], private_high), (key["y_public"], not private_high)):
            groups.append(one_hot((y if high else y + 1).repeat_interleave(walk), classes(key)))
        return torch.cat(groups)
    raise AssertionError(f"no incriminating answers for {key.scheme}: add them here")


@pytest.mark.parametrize("name", VARIANTS)
def test_smallest_p_value_is_what_the_test_gives_on_incriminating_answers(name, keys):
    key = keys(name)
    scheme = cc.scheme_for_key(key)
    answers = incriminating(key)
    assert len(answers) == len(scheme.verification_inputs(key))
    smallest = scheme.smallest_p_value(key, classes(key))
    evidence = scheme.evidence_from_answers(answers, key, alpha=1e-3, queries=len(answers))
    assert smallest is not None and 0.0 < smallest < 1.0
    assert evidence.p_value == pytest.approx(smallest, rel=1e-6)
    # every smaller budget, from the same answers: the first k queries of the key (power_curve)
    n = len(answers)  # a scheme whose item costs many queries (a blind walk) is cut at larger budgets too
    curve = scheme.power_curve(answers, key, alpha=1e-3, sizes=sorted({1, 5, 10, 20, 50, 100, n // 8, n // 2, n}))
    assert curve["p"] == pytest.approx(curve["smallest_p"], rel=1e-6) and len(curve["p"]) >= 3
    for k, floor in zip(curve["queries"], curve["smallest_p"]):
        assert scheme.smallest_p_value(key, classes(key), queries=k) == pytest.approx(floor, rel=1e-12)
    assert curve["queries"][-1] == len(answers) and curve["p"][-1] == pytest.approx(evidence.p_value)


@pytest.mark.parametrize("name", CLASSIFIER_SCHEMES)
def test_no_answers_go_below_the_smallest_p_value(name, keys, innocent, tiny):
    key = keys(name)
    scheme = cc.scheme_for_key(key)
    if scheme.tiny_data:  # an innocent of the scheme's own tiny data
        own = tiny.for_scheme(name).splits
        innocent = cc.train("mlp", own, on="attacker_pool", config=tiny.config(epochs=4, seed=5), hidden=64)
    evidence = scheme.verify(cc.ModelOracle(innocent), key, alpha=1e-3)
    assert evidence.p_value >= evidence.metrics["smallest_attainable_p"] * (1 - 1e-9)
    assert evidence.metrics["smallest_attainable_p"] == scheme.smallest_p_value(key, classes(key))


class _Answers(Oracle):
    """Answers looked up by input: the given answers to the key's verification inputs."""

    def __init__(self, inputs: torch.Tensor, answers: torch.Tensor):
        super().__init__(answers.shape[1], tuple(inputs.shape[1:]))
        self.inputs, self.answers = inputs.flatten(1), answers

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        return self.answers[torch.cdist(x.flatten(1), self.inputs).argmin(1)]


def test_the_sequential_test_reaches_exactly_its_smallest_p_value(keys):
    key = keys("margin")
    scheme = cc.scheme_for_key(key)
    oracle = _Answers(scheme.verification_inputs(key), incriminating(key))
    plan = SequentialPlan(batch_size=10, early_share=0.2)
    smallest = reachable_p_value(scheme, key, C, early_share=0.2)
    # at α = the smallest p-value, only the whole key, every answer a success, rejects
    evidence = verify_sequential(scheme, oracle, key, alpha=smallest * (1 + 1e-9), plan=plan)
    assert evidence.metrics["queried"] == evidence.metrics["key_size"] and evidence.decision
    assert evidence.p_value == pytest.approx(smallest, rel=1e-9)
    assert evidence.metrics["smallest_attainable_p"] == pytest.approx(smallest)
    too_strict = verify_sequential(scheme, oracle, key, alpha=smallest / 2, plan=plan)
    assert not too_strict.decision and any(n.startswith(UNREACHABLE) for n in too_strict.notes)
    assert smallest > scheme.smallest_p_value(key, C)  # the sequential test pays for stopping early
    budgeted = reachable_p_value(scheme, key, C, early_share=0.2, queries=20)
    assert smallest < budgeted < 1.0


def test_the_reachability_warning_fires_on_a_too_small_key(tiny, tmp_path, capsys):
    small = cc.embed(
        "margin",
        tiny.splits,
        arch="mlp",
        params={"n_triggers": 3, "trigger_batch": 3},
        config=tiny.config(epochs=1),
        max_cost=None,
    )
    key, victim = small.key.save(tmp_path / "small.cckey"), cc.save_model(small.victim, tmp_path / "v.safetensors")
    assert cc.scheme_for_key(small.key).smallest_p_value(small.key, C) == pytest.approx(1 / 27)
    report = tmp_path / "report"
    code = main(["verify", "--key", str(key), "--suspect", str(victim), "--report", str(report), "-q"])
    out, err = capsys.readouterr()
    assert code == EXIT_INCONCLUSIVE and "NOT STOLEN" in out and "smallest_attainable_p" in out
    assert "can never reach alpha=0.001" in err and err.count("\n") == 1
    record = json.loads((report / "evidence.json").read_text())
    sequential = reachable_p_value(cc.scheme_for_key(small.key), small.key, C, early_share=0.2)
    assert record["smallest_attainable_p"] == pytest.approx(sequential) and record["verdict"] == "not stolen"
    assert any(n.startswith(UNREACHABLE) for n in record["evidence"][0]["notes"])
    assert "could never have rejected" in (report / "report.html").read_text()
    # a key that can reach α says nothing of the sort
    code = main(["verify", "--key", str(key), "--suspect", str(victim), "--alpha", "0.05", "-q"])
    out, err = capsys.readouterr()
    assert code == EXIT_STOLEN and "can never reach" not in err and UNREACHABLE not in out


@pytest.mark.parametrize("name", CLASSIFIER_SCHEMES)
def test_every_scheme_declares_its_strength_knob_and_its_per_item_tensors(name, keys):
    cls = SCHEMES.get(name).factory
    assert cls.strength is None or cls.strength in cls.Params.field_names()
    key = keys(name)
    items = cls().key_items(key)
    assert cls.per_item and all(len(key[t]) == items for t in cls.per_item if t in key.tensors)
