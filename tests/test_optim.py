"""copycatch's optimisers and schedules do torch.optim's arithmetic bit for bit, without importing torch._dynamo."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from copycatch.core.errors import InvalidArgument
from copycatch.data.base import TensorData
from copycatch.models.optim import SGD, Adam, Schedule
from copycatch.models.train import TrainConfig, TrainHook, fit


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _steps(model: nn.Module, optimizer, steps: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randint(3, (16,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


OPTIMISERS = [
    ("sgd", lambda p: SGD(p, lr=0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    (
        "sgd momentum decay",
        lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-4, foreach=False),
    ),
    ("adam", lambda p: Adam(p, lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2, foreach=False)),
    (
        "adam decay betas",
        lambda p: Adam(p, lr=3e-3, betas=(0.5, 0.9), weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.5, 0.9), weight_decay=1e-3, foreach=False),
    ),
]


@pytest.mark.parametrize("name, ours, theirs", OPTIMISERS, ids=[o[0] for o in OPTIMISERS])
def test_optimiser_matches_torch_bit_for_bit(name, ours, theirs):
    a, b = _net(0), _net(0)
    _steps(a, ours(a.parameters()), 25)
    _steps(b, theirs(b.parameters()), 25)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


@pytest.mark.filterwarnings("ignore:Detected call of")  # torch's: no optimiser step between scheduler steps
@pytest.mark.parametrize(
    "kind, theirs",
    [
        ("cosine", lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7)),
        ("step", lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.3)),
    ],
)
def test_schedule_gives_torchs_learning_rates_exactly(kind, theirs):
    ours = Schedule(SGD(_net(0).parameters(), lr=0.1), kind, epochs=7, step_size=3, gamma=0.3)
    reference = theirs(torch.optim.SGD(_net(0).parameters(), lr=0.1))
    for _ in range(7):
        ours.step()
        reference.step()
        assert ours.optimizer.param_groups[0]["lr"] == reference.get_last_lr()[0]
    assert kind == "step" or ours.optimizer.param_groups[0]["lr"] == 0.0


def test_state_dict_resumes_exactly_where_it_stopped():
    whole, halves = _net(1), _net(1)
    _steps(whole, Adam(whole.parameters(), lr=1e-2), 20)
    first = Adam(halves.parameters(), lr=1e-2)
    _steps(halves, first, 10)
    saved = first.state_dict()
    second = Adam(halves.parameters(), lr=1e-2)
    second.load_state_dict(saved)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):  # replay the stream's first half to continue from the same position
        torch.randn(16, 6, generator=g), torch.randint(3, (16,), generator=g)
    for _ in range(10):
        x, y = torch.randn(16, 6, generator=g), torch.randint(3, (16,), generator=g)
        second.zero_grad()
        F.cross_entropy(halves(x), y).backward()
        second.step()
    for pa, pb in zip(whole.parameters(), halves.parameters()):
        assert torch.equal(pa, pb)
    with pytest.raises(InvalidArgument, match="different set of parameters"):
        Adam(list(halves.parameters())[:2], lr=1e-2).load_state_dict(saved)


@pytest.mark.parametrize("bad", [{"lr": 0.0}, {"lr": 0.1, "momentum": -1.0}])
def test_bad_hyperparameters_are_refused(bad):
    with pytest.raises(InvalidArgument):
        SGD(_net(0).parameters(), **bad)
    with pytest.raises(InvalidArgument, match="schedule"):
        Schedule(SGD(_net(0).parameters(), lr=0.1), "linear")


def test_a_hooks_own_backward_pass_gives_the_same_training_as_adding_to_the_loss():
    """after_backward backpropagates a second batch after the step's graph is freed; the gradients add up to what
    one backward pass of the summed loss gives."""
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(64, 6, generator=g), torch.randint(3, (64,), generator=g))
    extra_x = torch.randn(8, 6, generator=g)

    class Added(TrainHook):
        def extra_loss(self, state, x, y, logits, loss):
            return loss + state.model(extra_x).logsumexp(1).mean()

    class OwnPass(TrainHook):
        def after_backward(self, state, x, y):
            extra = state.model(extra_x).logsumexp(1).mean()
            extra.backward()
            return extra.detach()

    config = TrainConfig(epochs=2, batch_size=16, seed=0)
    a, b = _net(2), _net(2)
    ra = fit(a, data, config, hooks=[Added()], progress=False, checkpoint=False)
    rb = fit(b, data, config, hooks=[OwnPass()], progress=False, checkpoint=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert [h["loss"] for h in ra.history] == [h["loss"] for h in rb.history]


def test_training_does_not_import_torch_dynamo():
    """torch.optim's optimisers import torch._dynamo (67 MB resident) on their first step; ours must not."""
    code = (
        "import sys, torch\n"
        "from copycatch.data.base import TensorData\n"
        "from copycatch.models.train import TrainConfig, fit\n"
        "for opt, sched in (('adam', 'constant'), ('sgd', 'cosine')):\n"
        "    model = torch.nn.Sequential(torch.nn.Linear(4, 2))\n"
        "    data = TensorData(torch.randn(32, 4), torch.randint(2, (32,)))\n"
        "    fit(model, data, TrainConfig(epochs=2, optimizer=opt, schedule=sched), progress=False, checkpoint=False)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
