import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from copycatch.core.errors import InvalidArgument
from copycatch.models.adversarial import fgsm, pgd


def _linear(seed=0, d=6, c=3):
    g = torch.Generator().manual_seed(seed)
    lin = torch.nn.Linear(d, c)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(c, d, generator=g))
        lin.bias.copy_(torch.randn(c, generator=g))
    return lin


def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(0.0, 0.5), seed=st.integers(0, 1000), targeted=st.booleans())
def test_fgsm_matches_the_closed_form_on_a_linear_model(eps, seed, targeted):
    lin = _linear(seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(8, 6, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    # d CE(Wx+b, y)/dx = Wᵀ(softmax(Wx+b) − onehot(y))
    with torch.no_grad():
        grad = (torch.softmax(lin(x), 1) - torch.nn.functional.one_hot(y, 3)) @ lin.weight
    direction = -grad.sign() if targeted else grad.sign()
    expected = (x + eps * direction).clamp(0, 1)
    assert torch.allclose(fgsm(lin, x, eps, y=y, targeted=targeted), expected, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    eps=st.floats(0.0, 0.3),
    steps=st.integers(1, 6),
    seed=st.integers(0, 1000),
    rand_init=st.booleans(),
    lo=st.floats(-1.0, 0.4),
    width=st.floats(0.2, 1.5),
)
def test_pgd_stays_in_the_ball_and_the_clip_range(eps, steps, seed, rand_init, lo, width):
    net = _toy(seed)
    g = torch.Generator().manual_seed(seed)
    hi = lo + width
    x = lo + width * torch.rand(10, 4, generator=g)
    adv = pgd(net, x, eps, step_size=eps / 2 + 1e-3, steps=steps, rand_init=rand_init, generator=g, clip=(lo, hi))
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= lo - 1e-6 and adv.max() <= hi + 1e-6


def test_fgsm_respects_clip_and_ball():
    net = _toy(1)
    x = torch.rand(50, 4)
    adv = fgsm(net, x, 0.3)
    assert adv.min() >= 0 and adv.max() <= 1 and (adv - x).abs().max() <= 0.3 + 1e-6


def test_pgd_is_at_least_as_strong_as_fgsm_on_a_toy_model():
    net = _toy(2)
    x = torch.rand(400, 4, generator=torch.Generator().manual_seed(0))
    y = net(x).argmax(1)
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        l_fgsm = loss(net(fgsm(net, x, 0.1, y=y)), y, reduction="none")
        l_pgd = loss(net(pgd(net, x, 0.1, 0.025, 10, y=y)), y, reduction="none")
    assert l_pgd.mean() > l_fgsm.mean()
    with torch.no_grad():
        assert (net(pgd(net, x, 0.1, 0.025, 10, y=y)).argmax(1) != y).float().mean() > 0.05


def test_targeted_pgd_moves_towards_the_target():
    net = _toy(3)
    x = torch.rand(200, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = net(x).topk(2, dim=1).indices[:, 1]  # each input's runner-up class
        before = (net(x).argmax(1) == target).float().mean()
        after = (net(pgd(net, x, 1.0, 0.1, 30, y=target, targeted=True, clip=None)).argmax(1) == target).float().mean()
    assert before == 0 and after > 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": -0.1}, "eps"),
        ({"eps": 0.1, "clip": (1.0, 0.0)}, "clip"),
    ],
)
def test_fgsm_rejects_bad_values_naming_them(kwargs, match):
    with pytest.raises(InvalidArgument, match=match):
        fgsm(_toy(), torch.rand(2, 4), **kwargs)


def test_pgd_rejects_bad_steps_and_step_size():
    with pytest.raises(InvalidArgument, match="steps=0"):
        pgd(_toy(), torch.rand(2, 4), 0.1, 0.01, 0)
    with pytest.raises(InvalidArgument, match="step_size"):
        pgd(_toy(), torch.rand(2, 4), 0.1, 0.0, 3)
