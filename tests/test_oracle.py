import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.core.errors import BudgetExceeded, InvalidArgument, SuspectError, UnknownName
from copycatch.oracles.postprocess import POSTPROCESSORS, create_postprocessor


def _probs(n=64, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, c, generator=g) * 3, dim=1)


@pytest.mark.parametrize("name", POSTPROCESSORS.list())
def test_every_postprocessor_answers_each_row_independently_of_its_batch(name):
    proc = create_postprocessor(name)
    probs = _probs()
    batch = proc(probs)
    single = torch.cat([proc(probs[i : i + 1]) for i in range(len(probs))])
    assert torch.equal(batch, single)
    assert batch.shape == probs.shape and torch.isfinite(batch).all()


def test_postprocessors_through_an_oracle_match_per_example_queries(trained, splits):
    oracle = cc.ModelOracle(trained).postprocess("top-k:k=2", "round:decimals=2")
    x = splits.test.x[:32]
    batch = oracle.query(x)
    single = torch.cat([oracle.query(x[i : i + 1]) for i in range(len(x))])
    assert torch.allclose(batch, single, atol=0)
    assert ((batch > 0).sum(1) <= 2).all()


def test_hard_label_is_one_hot_of_argmax_per_row():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])  # ART's ClassLabels turned this into [[1,0,1],[1,0,1]]
    out = create_postprocessor("hard-label")(probs)
    assert out.tolist() == [[1, 0, 0], [0, 0, 1]]


@pytest.mark.parametrize("levels", [2, 3, 10, 1000])
def test_quantize_has_exactly_k_levels(levels):
    probs = torch.linspace(0, 1, 5001).unsqueeze(1).repeat(1, 2)
    out = create_postprocessor("quantize", levels=levels)(probs)
    values = torch.unique(out)
    assert len(values) == levels
    assert torch.allclose(values.double(), torch.linspace(0, 1, levels, dtype=torch.float64), atol=1e-6)


def test_top_k_keeps_the_k_largest():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])
    assert create_postprocessor("top-k", k=2)(probs).tolist() == [[0.0, 0.5, 0.0, 0.25]]
    renorm = create_postprocessor("top-k", k=2, renormalize=True)(probs)
    assert torch.allclose(renorm.sum(1), torch.ones(1))


def test_bad_postprocessor_specs_are_named():
    with pytest.raises(UnknownName, match="top-k"):
        cc.ModelOracle(cc.create_model("mlp", (1, 8, 8), 3)).postprocess("blur")
    with pytest.raises(InvalidArgument, match="k >= 1"):
        create_postprocessor("top-k", k=0)
    with pytest.raises(InvalidArgument, match="unknown"):
        create_postprocessor("round", digits=2)


def test_budget_is_hard_and_counts_exactly(trained, splits):
    oracle = cc.ModelOracle(trained, budget=50)
    oracle.query(splits.test.x[:30])
    assert oracle.queries == 30 and oracle.remaining == 20
    with pytest.raises(BudgetExceeded, match="50 queries allowed, 30 spent, this batch asks for 21"):
        oracle.query(splits.test.x[:21])
    assert oracle.queries == 30  # a refused batch costs nothing
    oracle.query(splits.test.x[:20])
    assert oracle.remaining == 0


def test_wrapped_oracles_count_on_both_layers(trained, splits):
    inner = cc.ModelOracle(trained)
    outer = inner.postprocess("hard-label")
    outer.query(splits.test.x[:7])
    assert inner.queries == 7 and outer.queries == 7 and outer.output_kind == "labels"


def test_inputs_are_validated(trained):
    oracle = cc.ModelOracle(trained)
    with pytest.raises(InvalidArgument, match="shape"):
        oracle.query(torch.rand(2, 1, 9, 9))
    bad = torch.rand(2, 1, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InvalidArgument, match="NaN"):
        oracle.query(bad)


def test_callable_oracle_accepts_probabilities_labels_and_flat_inputs():
    w = torch.randn(64, 3)

    def proba(x):  # scikit-learn's predict_proba shape: N×D in, N×C out
        assert x.shape[1] == 64
        return torch.softmax(torch.as_tensor(x) @ w, 1).numpy()

    x = torch.rand(5, 1, 8, 8)
    soft = cc.CallableOracle(proba, 3, input_format="flat")
    assert soft.query(x).shape == (5, 3) and soft.output_kind == "probs"
    hard = cc.CallableOracle(lambda a: np.argmax(proba(a), 1), 3, input_format="flat")
    out = hard.query(x)
    assert hard.output_kind == "labels" and torch.equal(out.argmax(1), soft.query(x).argmax(1))
    assert set(out.flatten().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(
    "answer, match",
    [
        (lambda x: np.full((len(x), 3), np.nan), "NaN"),
        (lambda x: np.ones((len(x), 4)), "shape"),
        (lambda x: np.full(len(x), 7), "labels outside"),
        (lambda x: (_ for _ in ()).throw(TimeoutError("slow")), "TimeoutError"),
    ],
)
def test_misbehaving_suspects_give_clear_errors(answer, match):
    oracle = cc.CallableOracle(answer, 3)
    with pytest.raises(SuspectError, match=match):
        oracle.query(torch.rand(2, 1, 8, 8))
