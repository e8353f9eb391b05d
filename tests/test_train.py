import torch

import copycatch as cc
from copycatch.models.train import TrainHook


def test_training_is_seeded_and_learns(splits):
    cfg = cc.TrainConfig(epochs=4, seed=3)
    a = cc.train("mlp", splits, config=cfg, hidden=32)
    b = cc.train("mlp", splits, config=cfg, hidden=32)
    for (na, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), na
    assert cc.accuracy(a, splits.test) > 0.9


def test_hooks_add_loss_terms_and_can_stop_training(splits):
    class Counting(TrainHook):
        def __init__(self):
            self.calls = 0
            self.epochs = 0

        def extra_loss(self, state, x, y, logits, loss):
            self.calls += 1
            return loss + 0.0 * logits.sum()

        def on_epoch_end(self, state):
            self.epochs += 1
            state.stop = state.epoch >= 1

    hook = Counting()
    model = cc.create_for("mlp", splits, hidden=16)
    result = cc.fit(model, splits.owner_train, cc.TrainConfig(epochs=5, batch_size=100), hooks=[hook])
    steps_per_epoch = -(-len(splits.owner_train) // 100)
    assert result.epochs_run == 2 and hook.epochs == 2 and hook.calls == 2 * steps_per_epoch
    assert result.stopped_early


def test_a_hook_can_stop_training_mid_epoch(splits):
    class StopAtStep(TrainHook):
        def __init__(self, at):
            self.at, self.calls, self.epoch_ends = at, 0, 0

        def extra_loss(self, state, x, y, logits, loss):
            self.calls += 1

        def on_step_end(self, state):
            state.stop = state.step == self.at

        def on_epoch_end(self, state):
            self.epoch_ends += 1

    steps_per_epoch = -(-len(splits.owner_train) // 100)
    hook = StopAtStep(steps_per_epoch + 3)
    result = cc.fit(
        cc.create_for("mlp", splits, hidden=16),
        splits.owner_train,
        cc.TrainConfig(epochs=5, batch_size=100),
        hooks=[hook],
    )
    assert hook.calls == steps_per_epoch + 3  # not one step more
    assert result.epochs_run == 2 and hook.epoch_ends == 2 and result.stopped_early


def test_early_stopping_restores_the_best_epoch(splits):
    model = cc.create_for("mlp", splits, hidden=16)
    result = cc.fit(model, splits.owner_train, cc.TrainConfig(epochs=30, patience=2, lr=0.05), val=splits.test)
    best = max(r["val_accuracy"] for r in result.history)
    assert result.best_epoch is not None
    assert cc.accuracy(model, splits.test) == best
    assert result.epochs_run < 30


def test_soft_targets_train_with_kl(splits, trained):
    from copycatch.data import TensorData
    from copycatch.models.train import predict_logits

    probs = torch.softmax(predict_logits(trained, splits.attacker_pool.x), 1)
    student = cc.create_for("mlp", splits, hidden=32)
    cc.fit(student, TensorData(splits.attacker_pool.x, probs), cc.TrainConfig(epochs=3))
    assert cc.agreement(student, trained, splits.test.x) > 0.9


def test_train_with_patience_stops_on_the_holdout_never_the_test_split(splits, monkeypatch):
    import copycatch.models.train as training

    seen = []
    real_fit = training.fit

    def spy(model, data, config, *, val=None, **kwargs):
        seen.append(val)
        return real_fit(model, data, config, val=val, **kwargs)

    monkeypatch.setattr(training, "fit", spy)
    for on, expected in (
        ("owner_train", splits.owner_holdout),
        ("attacker_pool", splits.owner_holdout),
        ("owner_holdout", splits.owner_train),
    ):
        cc.train("mlp", splits, on=on, config=cc.TrainConfig(epochs=2, patience=1), hidden=8)
        assert seen[-1] is expected and seen[-1] is not splits.test
    cc.train("mlp", splits, config=cc.TrainConfig(epochs=1), hidden=8)
    assert seen[-1] is None
