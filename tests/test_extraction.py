import pytest
from conftest import classifier_entries

import copycatch as cc
from copycatch.attacks.extraction import EXTRACTION_ATTACKS, create_extraction_attack
from copycatch.core.errors import BudgetExceeded, InvalidArgument

CLASSIFIER_ATTACKS = classifier_entries(EXTRACTION_ATTACKS)


@pytest.mark.parametrize("name", CLASSIFIER_ATTACKS)
def test_every_extraction_attack_copies_a_toy_victim_within_its_budget(name, splits, trained):
    oracle = cc.ModelOracle(trained)
    budget = 600
    result = cc.steal(
        oracle, splits.attacker_pool, attack=name, arch="mlp", budget=budget, config=cc.TrainConfig(epochs=6, seed=0)
    )
    assert result.queries <= budget and oracle.queries == result.queries
    assert cc.agreement(result.surrogate, trained, splits.test.x) >= 0.9


def test_attack_refuses_to_start_when_the_oracle_budget_is_smaller(splits, trained):
    oracle = cc.ModelOracle(trained, budget=100)
    with pytest.raises(BudgetExceeded, match="allows only 100"):
        cc.steal(oracle, splits.attacker_pool, budget=500)
    assert oracle.queries == 0


def test_surrogate_architecture_is_the_thiefs_choice(splits, trained):
    result = cc.steal(trained, splits.attacker_pool, arch="cnn-small", budget=200, config=cc.TrainConfig(epochs=1))
    assert result.surrogate.arch == "cnn-small" and result.surrogate.provenance["queries"] == 200


def test_bad_attack_parameters_are_named():
    with pytest.raises(InvalidArgument, match="unknown"):
        create_extraction_attack("soft-label", temperature=3)
