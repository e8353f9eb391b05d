"""Baselines on tiny data: the plain trigger set (margin paper's Eq. 1) and the patch backdoor; registry and CLI."""

import numpy as np
import pytest
import torch

import copycatch as cc
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_NOT_STOLEN, EXIT_STOLEN
from copycatch.core.key import Key
from copycatch.schemes import SCHEMES
from copycatch.schemes.patch_backdoor import CORNERS, PatchBackdoor, stamp
from copycatch.schemes.trigger_set import TriggerSetWatermark

MINE = ["dynamarks", "frontier-stitching", "patch-backdoor", "trigger-set"]


@pytest.fixture(scope="module")
def trigger_set(tiny):
    return tiny.embed("trigger-set", epochs=10)


@pytest.fixture(scope="module")
def backdoor(tiny):
    return tiny.embed("patch-backdoor", epochs=10)


# -- trigger set --------------------------------------------------------------------------------------------------


def test_trigger_set_victim_is_stolen_and_innocent_cleared(trigger_set, splits, innocent):
    evidence = cc.verify(trigger_set.victim, trigger_set.key, sequential=False).evidence
    assert evidence.verdict == "stolen" and evidence.exact and evidence.p_value <= 1e-6
    assert evidence.metrics["watermark_accuracy"] >= 0.9 and evidence.scheme == "trigger-set"
    assert cc.accuracy(trigger_set.victim, splits.test) >= 0.85
    assert cc.verify(innocent, trigger_set.key, alpha=0.05, sequential=False).evidence.verdict == "not stolen"
    key = trigger_set.key
    assert (key["trigger_label"] != key["trigger_true"]).all() and key["trigger_x"].dtype == torch.uint8


def test_trigger_set_has_no_margin_parameters():
    with pytest.raises(cc.CopycatchError, match="unknown trigger-set scheme key 'eps'"):
        TriggerSetWatermark(eps=0.1)
    fields = {"n_triggers", "label_strategy", "lam", "exposure", "trigger_batch"}
    assert set(TriggerSetWatermark.Params.field_names()) == fields


def test_trigger_set_null_is_exact_over_independent_keys(splits, innocent):
    scheme = TriggerSetWatermark(n_triggers=100)
    holdout = cc.make_splits(
        cc.load_dataset("synthetic", n=6000, num_classes=4, size=8, noise=0.9, seed=7),
        seed=1,
        fractions=cc.SplitFractions(owner_train=0.1, owner_holdout=0.5, attacker_pool=0.1),
    )
    weak = cc.train("mlp", holdout, config=cc.TrainConfig(epochs=1, seed=1), hidden=16)
    p = []
    for draw in range(300):
        x_u8, true, labels = scheme.make_trigger_set(holdout, torch.Generator().manual_seed(40_000 + draw))
        key = Key(
            "trigger-set",
            scheme.params.to_dict(),
            {"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels},
            {"num_classes": 4},
        )
        p.append(scheme.verify(cc.ModelOracle(weak), key, alpha=0.05).p_value)
    p = np.array(p)
    assert np.mean(p <= 0.05) <= 0.07 and np.mean(p <= 0.5) >= 0.25
    for u in (0.01, 0.05, 0.1, 0.25, 0.5):
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u * (1 - u) / len(p)), u


# -- patch backdoor -----------------------------------------------------------------------------------------------


def test_backdoor_victim_is_stolen_and_innocent_cleared(backdoor, splits, innocent):
    evidence = cc.verify(backdoor.victim, backdoor.key, sequential=False).evidence
    assert evidence.verdict == "stolen" and evidence.exact and evidence.p_value <= 1e-3
    assert evidence.metrics["watermark_accuracy"] >= 0.9 and evidence.metrics["groups"] == 8
    assert cc.accuracy(backdoor.victim, splits.test) >= 0.9
    hard = cc.verify(cc.ModelOracle(backdoor.victim).postprocess("hard-label"), backdoor.key, sequential=False).evidence
    assert hard.p_value == evidence.p_value  # labels only are enough
    assert cc.verify(innocent, backdoor.key, alpha=0.05, sequential=False).evidence.verdict == "not stolen"


def test_backdoor_targets_are_wrong_classes_and_the_patch_sits_in_its_corner(backdoor, splits):
    key = backdoor.key
    targets = key["targets"]
    assert (targets != torch.arange(4)).all() and targets.shape == (2, 4)
    assert torch.equal(key["key_label"], targets[key["key_patch"], key["key_true"]])
    x = torch.zeros(2, 1, 8, 8)
    patches = torch.ones(2, 1, 3, 3)
    out = stamp(x, patches, torch.tensor([0, 1]))
    assert out[0, 0, 5:, 5:].eq(1).all() and out[0].sum() == 9  # bottom-right
    assert out[1, 0, :3, :3].eq(1).all() and out[1].sum() == 9  # top-left
    assert CORNERS[:2] == ("bottom-right", "top-left") and x.sum() == 0  # stamping copies


class _PatchBiased:
    """A suspect that sends every stamped input to one class (a patch that looks like a bag): the case where a
    Binomial null at rate 1/(C-1) would accuse an innocent model whenever the secret target is that class."""

    def __init__(self, model, favourite):
        self.model, self.favourite = model, favourite

    def __call__(self, x):
        x = torch.as_tensor(x)
        pred = self.model(x).argmax(1)
        corner = x[:, :, 5:, 5:].flatten(1)
        stamped = ((corner == 0) | (corner == 1)).all(1)
        pred[stamped] = self.favourite
        return pred.numpy()


@pytest.mark.parametrize("suspect", ["independent", "patch-biased"])
def test_backdoor_null_is_exact_over_independent_keys(backdoor, innocent, suspect, tiny):
    """300 independently drawn target mappings: p-values (near) uniform, FPR at 0.05 <= 0.07 — including a suspect
    that answers one class on every stamped input."""
    scheme = PatchBackdoor(**tiny.params("patch-backdoor"))
    fn = _PatchBiased(innocent.eval(), favourite=2) if suspect == "patch-biased" else None
    oracle = cc.CallableOracle(fn, 4, input_format="torch") if fn else cc.ModelOracle(innocent)
    answers = oracle.query(scheme.verification_inputs(backdoor.key))
    g = torch.Generator().manual_seed(1)
    p = []
    for _ in range(300):
        tensors = dict(backdoor.key.tensors)
        tensors["targets"] = (torch.arange(4) + torch.randint(1, 4, (2, 4), generator=g)) % 4
        key = Key("patch-backdoor", backdoor.key.params, tensors, dict(backdoor.key.meta))
        p.append(scheme.evidence_from_answers(answers, key, alpha=0.05, queries=0).p_value)
    p = np.array(p)
    assert np.mean(p <= 0.05) <= 0.07
    for u in (0.01, 0.05, 0.1, 0.25, 0.5):
        assert np.mean(p <= u) <= u + 3 * np.sqrt(u * (1 - u) / len(p)), u
    if suspect == "patch-biased":
        # a binomial test at rate 1/3 would have accused it for every key whose target covers class 2 often
        assert np.mean(p <= 0.5) >= 0.25


def test_backdoor_rejects_patches_that_do_not_fit(splits):
    with pytest.raises(cc.CopycatchError, match="does not fit"):
        PatchBackdoor(patch_size=5, n_patches=2).embed(cc.create_for("mlp", splits), splits)
    with pytest.raises(cc.CopycatchError, match="n_patches"):
        PatchBackdoor(n_patches=5)


# -- registry and CLI ---------------------------------------------------------------------------------------------


def test_embed_help_lists_every_scheme_with_its_summary(capsys):
    with pytest.raises(SystemExit):
        main(["embed", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert set(MINE) <= set(SCHEMES.list())
    for name, summary in SCHEMES.describe():  # [kind; modalities], then the first line of the scheme's docstring
        scheme = SCHEMES.get(name).factory
        line = f"{name} [{scheme.kind}; {', '.join(scheme.modalities)}] {summary}"
        assert summary and " ".join(line.split())[:50] in out, name


@pytest.mark.parametrize("name", MINE)
def test_cli_embeds_and_verifies_every_scheme(capsys, tmp_path, name, tiny):
    import json

    victim, key = tmp_path / "victim.safetensors", tmp_path / "victim.cckey"
    params = [arg for k, v in tiny.params(name).items() for arg in ("-p", f"{k}={v}")]
    assert (
        main(
            [
                "embed",
                "--max-cost",
                "none",
                "--scheme",
                name,
                "--arch",
                "mlp",
                *params,
                "-o",
                str(victim),
                "--key",
                str(key),
                "--epochs",
                "5",
                "--data",
                "synthetic",
                "-q",
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = main(["verify", "--key", str(key), "--suspect", str(victim), "--json", "--alpha", "0.05"])
    assert code == (EXIT_NOT_STOLEN if name == "dynamarks" else EXIT_STOLEN)
    evidence = json.loads(capsys.readouterr().out)
    assert evidence["scheme"] == name and 0 <= evidence["p_value"] <= 1
    # DynaMarks marks the API, not the weights: the raw victim file is (correctly) not evidence of theft
    assert evidence["verdict"] == ("not stolen" if name == "dynamarks" else "stolen")
