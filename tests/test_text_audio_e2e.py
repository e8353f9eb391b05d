"""Stealing, laundering and proving text and audio models: steal (soft, hard, Hinton distillation, another
architecture) through the in-process API, the vocabulary stored with a text model and refused when altered, removal
attacks on a text model, and MEA-Defender keys on text and audio. Tiny data made here; seconds each."""

import json

import pytest
import torch
from conftest import TOPIC_WORDS, tiny_audio_splits, tiny_text_splits
from safetensors import safe_open
from safetensors.torch import save_file

import copycatch as cc
from copycatch.attacks.removal.base import run_chain
from copycatch.attacks.steal import steal
from copycatch.cli.main import main
from copycatch.core.errors import CorruptFile, InvalidArgument
from copycatch.data import Vocabulary, VocabularySettings
from copycatch.models.io import VOCABULARY_ENTRY, load_model, read_model_info, save_model
from copycatch.models.train import accuracy, agreement
from copycatch.schemes import _mixers as mixers

SAMPLES = 4000  # a quarter of a second at 16 kHz: enough for m5 and the log-mel CNN
SMALL = {
    "lstm": {"embed_dim": 16, "hidden": 32},
    "text-cnn": {"embed_dim": 16, "channels": 16},
    "transformer": {"d_model": 16, "heads": 2, "head": 16},
    "m5": {"width": 8},
    "logmel-cnn": {"width": 8, "hidden": 32},
}
CONFIG = cc.TrainConfig(epochs=8, batch_size=16, lr=1e-2, seed=0)
MEA_PARAMS = {"n_verify": 100, "n_false_per_group": 30}


@pytest.fixture(scope="module")
def text_splits() -> cc.Splits:
    return tiny_text_splits(400, 4, (3, 9))


@pytest.fixture(scope="module")
def audio_splits() -> cc.Splits:
    """600 clips: MEA-Defender draws its verification pairs per class from the owner's holdout."""
    return tiny_audio_splits(600, 4, SAMPLES, 0.05, (0.3, 0.6), ("a", "b", "c", "d"))


def _train(arch: str, splits: cc.Splits, seed: int = 0, on: str = "owner_train") -> cc.Classifier:
    config = cc.TrainConfig(**{**CONFIG.to_dict(), "seed": seed})
    return cc.train(arch, splits, on=on, config=config, **SMALL[arch])


@pytest.fixture(scope="module")
def text_victim(text_splits) -> cc.Classifier:
    return _train("lstm", text_splits)


@pytest.fixture(scope="module")
def audio_victim(audio_splits) -> cc.Classifier:
    return _train("m5", audio_splits)


# -- steal ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "arch"), [("soft-label", "lstm"), ("hard-label", "text-cnn"), ("distillation", "transformer")]
)
def test_steal_a_text_model_into_any_text_architecture(text_splits, text_victim, attack, arch):
    result = steal(
        cc.ModelOracle(text_victim), text_splits.attacker_pool, attack=attack, arch=arch, config=CONFIG,
        arch_kwargs=SMALL[arch],
    )  # fmt: skip
    surrogate = result.surrogate
    assert result.queries == len(text_splits.attacker_pool)
    assert surrogate.arch_kwargs["vocab_size"] == len(text_splits.vocabulary)
    assert surrogate.vocabulary == text_splits.vocabulary
    assert accuracy(surrogate, text_splits.test) > 0.8
    assert agreement(surrogate, text_victim, text_splits.test.x) > 0.8


@pytest.mark.parametrize(("attack", "arch"), [("soft-label", "m5"), ("hard-label", "logmel-cnn")])
def test_steal_an_audio_model_into_either_audio_architecture(audio_splits, audio_victim, attack, arch):
    result = steal(
        cc.ModelOracle(audio_victim), audio_splits.attacker_pool, attack=attack, arch=arch, config=CONFIG,
        arch_kwargs=SMALL[arch],
    )  # fmt: skip
    assert result.surrogate.modality == "audio" and result.surrogate.arch_kwargs["sample_rate"] == 16000
    assert accuracy(result.surrogate, audio_splits.test) > 0.8


def test_steal_refuses_a_surrogate_of_another_modality_naming_the_fitting_ones(text_splits, text_victim):
    with pytest.raises(InvalidArgument, match=r"reads image inputs but the victim's are text; text architectures: "):
        steal(cc.ModelOracle(text_victim), text_splits.attacker_pool, arch="mlp")
    with pytest.raises(InvalidArgument, match="extraction attack 'jacobian' applies to image victims, not to text"):
        steal(cc.ModelOracle(text_victim), text_splits.attacker_pool, attack="jacobian", arch="lstm")


def test_steal_defaults_to_a_surrogate_of_the_victims_modality(audio_splits, audio_victim):
    pool = audio_splits.attacker_pool.subset(torch.arange(20))
    result = steal(cc.ModelOracle(audio_victim), pool, config=CONFIG.replace(epochs=1), arch_kwargs={"width": 8})
    assert result.surrogate.arch == "logmel-cnn"


def test_the_thiefs_texts_are_encoded_as_the_victims_api_encodes_them(text_splits, text_victim):
    """A thief holding its own vocabulary's ids still asks the API with strings: they are re-encoded."""
    own = Vocabulary.build(text_splits.attacker_pool.texts, VocabularySettings(max_length=12, min_freq=1))
    pool = text_splits.attacker_pool.encoded(own)
    assert not torch.equal(pool.x, text_splits.attacker_pool.x)
    result = steal(cc.ModelOracle(text_victim), pool, attack="hard-label", arch="text-cnn", config=CONFIG,
                   arch_kwargs=SMALL["text-cnn"])  # fmt: skip
    assert accuracy(result.surrogate, text_splits.test) > 0.8
    ids_only = cc.TensorData(torch.full((4, 12), len(text_splits.vocabulary)), torch.zeros(4, dtype=torch.long))
    with pytest.raises(InvalidArgument, match=r"token id \d+ but the victim's vocabulary has \d+ ids"):
        steal(cc.ModelOracle(text_victim), ids_only, arch="text-cnn")


def test_cli_steals_a_text_model_file(tmp_path, capsys):
    """The reported bug: `copycatch steal` built a text surrogate without vocab_size."""
    data = tmp_path / "texts.csv"
    data.write_text("text,label\n" + "".join(f"the {t},{i % 4}\n" for i, t in enumerate(TOPIC_WORDS * 30)))
    victim, surrogate = tmp_path / "v.safetensors", tmp_path / "s.safetensors"
    common = ["--data", str(data), "--epochs", "2", "-q"]
    assert main(["train", "--arch", "text-cnn", "-o", str(victim), *common]) == 0
    assert main(["steal", "--victim", str(victim), "--arch", "lstm", "-o", str(surrogate), *common]) == 0
    assert "stole a lstm surrogate" in capsys.readouterr().out
    stolen = load_model(surrogate)
    assert stolen.arch_kwargs["vocab_size"] == load_model(victim).arch_kwargs["vocab_size"]


# -- the vocabulary in the model file -----------------------------------------------------------------------------


def test_the_vocabulary_round_trips_with_a_text_model(tmp_path, text_splits, text_victim):
    path = save_model(text_victim, tmp_path / "v.safetensors", vocabulary=text_splits.vocabulary)
    loaded = load_model(path)
    assert loaded.vocabulary == text_splits.vocabulary
    texts = list(text_splits.test.texts[:5])
    assert torch.equal(loaded(loaded.vocabulary.encode(texts)), text_victim(text_splits.vocabulary.encode(texts)))
    assert read_model_info(path)["vocabulary"]["sha256"] == text_splits.vocabulary.digest()


def test_a_model_file_without_vocabulary_still_loads(tmp_path, text_splits):
    model = cc.create_for("text-cnn", text_splits, seed=0, **SMALL["text-cnn"])
    assert load_model(save_model(model, tmp_path / "old.safetensors")).vocabulary is None


def _rewrite_header(path, change) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no __iter__)
    change(meta)
    save_file(tensors, str(path), metadata=meta)


def test_an_altered_stored_vocabulary_is_refused(tmp_path, text_splits, text_victim):
    path = save_model(text_victim, tmp_path / "v.safetensors", vocabulary=text_splits.vocabulary)

    def swap_two_tokens(meta):
        body = json.loads(meta[VOCABULARY_ENTRY])
        body["tokens"][2], body["tokens"][3] = body["tokens"][3], body["tokens"][2]
        meta[VOCABULARY_ENTRY] = json.dumps(body)

    _rewrite_header(path, swap_two_tokens)
    with pytest.raises(CorruptFile, match=r"stored vocabulary .* does not match the digest in the file"):
        load_model(path)
    _rewrite_header(path, lambda meta: meta.pop(VOCABULARY_ENTRY))
    with pytest.raises(CorruptFile, match="vocabulary of this text model is missing"):
        load_model(path)


def test_a_mismatched_vocabulary_is_refused_when_saving(tmp_path, text_splits, text_victim, audio_victim):
    other = Vocabulary.build(["some other words entirely"], VocabularySettings(max_length=12, min_freq=1))
    with pytest.raises(InvalidArgument, match=rf"holds {len(other)} tokens but the 'lstm' model embeds vocab_size="):
        save_model(text_victim, tmp_path / "v.safetensors", vocabulary=other)
    same_size = Vocabulary(["<pad>", "<unk>", *reversed(text_splits.vocabulary.tokens[2:])], other.settings)
    with pytest.raises(InvalidArgument, match="is not the one the model's training data were encoded with"):
        save_model(text_victim, tmp_path / "v.safetensors", vocabulary=same_size)
    with pytest.raises(InvalidArgument, match="reads audio inputs"):
        save_model(audio_victim, tmp_path / "a.safetensors", vocabulary=text_splits.vocabulary)


# -- removal attacks ----------------------------------------------------------------------------------------------


def test_weight_removals_launder_a_text_model_and_input_attacks_refuse_it(text_splits, text_victim):
    results = run_chain(
        text_victim, ["fine-tune:epochs=1", "prune:rate=0.5", "quantize:bits=4"], text_splits.attacker_pool,
        test=text_splits.test, train=CONFIG,
    )  # fmt: skip
    assert [r.model.modality for r in results] == ["text"] * 3
    assert results[-1].accuracy_after > 0.7
    embedding = results[-1].model.net.features.embedding.weight
    assert embedding is not None and (embedding[1:] != 0).all()  # pruning leaves the embedding table whole
    with pytest.raises(InvalidArgument, match=r"'mislabel-mix' applies to image models, not to this text model"):
        run_chain(text_victim, ["mislabel-mix"], text_splits.attacker_pool, train=CONFIG)


# -- MEA-Defender on text and audio -------------------------------------------------------------------------------


def test_text_and_clip_mixers():
    a, b = torch.tensor([[5, 6, 7, 0, 0, 0]]), torch.tensor([[2, 3, 4, 4, 4, 0]])
    assert mixers.concat_texts(a, b).tolist() == [[5, 6, 7, 2, 3, 4]]
    assert mixers.interleave_texts(a, b).tolist() == [[5, 2, 6, 3, 7, 4]]
    assert mixers.text_mixer("pairs")(a, b).tolist() == [[5, 6, 2, 3, 7, 4]]
    long = torch.tensor([[9, 9, 9, 9, 9, 9]])
    assert mixers.concat_texts(long, b).tolist() == [[9, 9, 9, 2, 3, 4]]  # b keeps half the length
    xa, xb = torch.full((2, 1, 8), 0.5), torch.full((2, 1, 8), -0.5)
    merged = mixers.apply_mask(mixers.watermark_mask("merge", 1, 8), xa, xb)
    spliced = mixers.apply_mask(mixers.watermark_mask("crop-paste", 1, 8), xa, xb)
    assert torch.equal(merged, torch.zeros(2, 1, 8)) and spliced[0, 0].tolist() == [0.5] * 4 + [-0.5] * 4


@pytest.mark.parametrize(
    ("modality", "arch", "rule", "stored"),
    [("text", "lstm", "concat", torch.int64), ("audio", "logmel-cnn", "merge", torch.int16)],
)
def test_mea_defender_proves_its_text_and_audio_models_and_not_an_innocent_one(
    text_splits, audio_splits, modality, arch, rule, stored
):
    splits = text_splits if modality == "text" else audio_splits
    model = cc.create_for(arch, splits, seed=0, **SMALL[arch])
    result = cc.embed("mea-defender", splits, model=model, params=MEA_PARAMS, config=CONFIG, max_cost=None)
    key = result.key
    assert key.params["rule"] == rule and key["verify_x"].dtype == stored
    assert tuple(key["verify_x"].shape[1:]) == tuple(splits.input_shape)
    # no "other rule" controls on text and audio: only mixes that lack a source (shared class, other pair)
    assert key.params["false_families"] == ["shared class", "other pair"]
    assert set(key["group_family"].tolist()) == {0, 2}  # four classes: one third class, so no "other pair"
    own = cc.verify(cc.ModelOracle(result.victim), key, alpha=0.01, sequential=False).evidence
    assert own.verdict == "stolen" and own.p_value < 1e-4, own.p_value
    assert any("no 'other rule' false watermarks" in note for note in own.notes)
    innocent = cc.ModelOracle(_train(arch, splits, seed=3, on="attacker_pool"))
    assert cc.verify(innocent, key, alpha=0.01, sequential=False).evidence.verdict == "not stolen"


def test_mea_defender_false_families_default_per_modality_and_refuse_unknown_names():
    from copycatch.schemes.mea_defender import MEADefender

    params = MEADefender.Params()
    assert params.for_modality("image").false_families == ("other rule", "shared class", "other pair")
    assert params.for_modality("image").n_false_per_group == 60
    assert params.for_modality("text").false_families == ("shared class", "other pair")
    assert params.for_modality("audio").n_false_per_group == 150
    assert MEADefender.Params(false_families="other pair").for_modality("text").false_families == ("other pair",)
    with pytest.raises(InvalidArgument, match=r"false_families must name some of .*got \['other rules'\]"):
        MEADefender.Params(false_families=("other rules",))


def test_mea_defender_refuses_a_rule_of_another_modality(text_splits):
    with pytest.raises(InvalidArgument, match=r"mixer 'crop-paste' does not apply to text inputs; text mixers: concat"):
        cc.embed("mea-defender", text_splits, arch="lstm", params={"rule": "crop-paste"}, max_cost=None)


# -- the demo -------------------------------------------------------------------------------------------------------


def test_the_text_demo_runs_its_whole_story_on_a_csv_file(tmp_path, capsys):
    """`copycatch demo --modality text` on a small CSV in place of the stand-in: every model verified and saved (too
    little training for the verdicts to mean anything; the stand-in's are in the report of the timed runs)."""
    data = tmp_path / "texts.csv"
    rows = [f"the {' '.join(TOPIC_WORDS[i % 4].split()[j % 5 : j % 5 + 4])},{i % 4}" for i, j in enumerate(range(400))]
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "demo"
    params = ["-p", "n_verify=50", "-p", "n_false_per_group=10"]
    argv = ["demo", "--modality", "text", "--data", str(data), "--epochs", "1", "--out", str(out), *params, "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "watermark: mea-defender, classes 0 + 1 → 2 by concat" in printed and "WSR" in printed
    assert "thief steals the victim through its API http://127.0.0.1:" in printed  # `copycatch serve`'s app
    report = json.loads((out / "demo-results.json").read_text())
    assert [r["arch"] for r in report["rows"]] == ["lstm", "text-cnn", "text-cnn", "lstm"]
    assert all(r["watermark"] == "mea-defender" and r["combination"] == "fisher" for r in report["rows"])
    assert load_model(out / "surrogate.safetensors").vocabulary == load_model(out / "victim.safetensors").vocabulary


def test_a_trained_text_model_carries_its_vocabulary_into_its_file_and_steal_picks_a_text_surrogate(
    text_splits, text_victim, tmp_path
):
    """cc.train attaches the splits' vocabulary (its file carries it); cc.steal's default surrogate is a text model."""
    assert text_victim.vocabulary is text_splits.vocabulary
    path = tmp_path / "victim.safetensors"
    save_model(text_victim, path)
    assert load_model(path).vocabulary.tokens == text_splits.vocabulary.tokens
    stolen = cc.steal(text_victim, text_splits.attacker_pool, config=cc.TrainConfig(epochs=1, seed=0))
    assert stolen.surrogate.arch == "text-cnn"
