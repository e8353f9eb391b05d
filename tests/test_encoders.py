"""Self-supervised encoders (issue 18): NT-Xent, encoder files, embedding oracles and the /v1/embed endpoint, the
encoder thieves, MEA-Defender for encoders, removal attacks on encoders, and the encoder demo, on tiny data."""

from __future__ import annotations

import math

import pytest
import torch

import copycatch as cc
from copycatch.attacks.extraction import EXTRACTION_ATTACKS, create_extraction_attack
from copycatch.core.errors import BudgetExceeded, InvalidArgument, SuspectError
from copycatch.models.encoder import embedding_dim, is_encoder, list_encoders
from copycatch.models.simclr import Augment, attach_linear_probe, encode, nt_xent, train_simclr
from copycatch.oracles.embedding import CallableEncoderOracle, EncoderOracle, as_encoder_oracle
from copycatch.schemes import SCHEMES, create_scheme

SHAPE = (1, 8, 8)
SMALL = {"width": 4, "dim": 16}
ENCODER_ATTACKS = [
    n for n in EXTRACTION_ATTACKS.list() if getattr(EXTRACTION_ATTACKS.get(n).factory, "target", "") == "encoder"
]


def _encoder(arch: str = "encoder-cnn9", seed: int = 0) -> cc.Classifier:
    return cc.create_model(arch, SHAPE, 4, seed=seed, **SMALL).eval()


# ---------------------------------------------------------------------------------------------------------------------
# NT-Xent, augmentations, SimCLR
# ---------------------------------------------------------------------------------------------------------------------


def test_nt_xent_matches_a_two_pair_example_computed_by_hand():
    # N = 2 images, views z0, z1 (image 0 and 1) then z2, z3 (their twins); unit vectors at known angles:
    # z0 = (1, 0), z1 = (0, 1), z2 = (1, 0) (twin of z0, identical), z3 = (1, 1)/√2 (twin of z1, 45° away)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    c = 1 / math.sqrt(2)

    # cosine similarities sim(i, k) for k ≠ i, divided by τ:
    # row 0: sim(0,1)=0, sim(0,2)=1 (positive), sim(0,3)=c
    # row 1: sim(1,0)=0, sim(1,2)=0, sim(1,3)=c (positive)
    # row 2: sim(2,0)=1 (positive), sim(2,1)=0, sim(2,3)=c
    # row 3: sim(3,0)=c, sim(3,1)=c (positive), sim(3,2)=c
    def row(positive, others):
        return -(positive / tau) + math.log(sum(math.exp(s / tau) for s in others))

    by_hand = (row(1, [0, 1, c]) + row(c, [0, 0, c]) + row(1, [1, 0, c]) + row(c, [c, c, c])) / 4
    assert nt_xent(z, tau).item() == pytest.approx(by_hand, abs=1e-6)
    # scaling a projection does not change the loss (cosine similarity)
    assert nt_xent(z * torch.tensor([[3.0], [1.0], [0.5], [2.0]]), tau).item() == pytest.approx(by_hand, abs=1e-6)
    with pytest.raises(InvalidArgument, match="2N×d"):
        nt_xent(torch.ones(3, 2))
    with pytest.raises(InvalidArgument, match="temperature"):
        nt_xent(z, 0.0)


def test_augmentations_are_seeded_in_range_and_validated():
    x = torch.rand(6, *SHAPE)
    a = Augment()(x, torch.Generator().manual_seed(1))
    b = Augment()(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, Augment()(x, torch.Generator().manual_seed(2)))
    with pytest.raises(InvalidArgument, match="flip"):
        Augment(flip=1.5)


def test_encoders_are_registered_as_their_own_kind(tiny):
    assert {"encoder-cnn9", "encoder-resnet"} <= set(list_encoders())
    assert is_encoder("encoder-cnn9") and not is_encoder("cnn-small")
    model = _encoder()
    assert model.features(torch.rand(3, *SHAPE)).shape == (3, 16) and embedding_dim(model) == 16


def test_simclr_lowers_its_loss_and_a_probe_makes_the_encoder_classify(tiny):
    encoder = cc.create_model("encoder-cnn9", SHAPE, 4, seed=0, **SMALL)
    result = train_simclr(encoder, tiny.splits.owner_train, cc.TrainConfig(epochs=4, batch_size=64), progress=False)
    losses = [epoch["loss"] for epoch in result.history]
    assert losses[-1] < losses[0]
    attach_linear_probe(encoder, tiny.splits.owner_train)
    assert cc.accuracy(encoder, tiny.splits.test) > 0.6  # four classes: chance is 0.25


# ---------------------------------------------------------------------------------------------------------------------
# files and oracles
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["encoder-cnn9", "encoder-resnet"])
def test_an_encoder_round_trips_through_safetensors_and_onnx(arch, tmp_path):
    pytest.importorskip("onnxruntime")
    from copycatch.oracles.embedding import OnnxEncoderOracle, export_encoder_onnx

    model = _encoder(arch)
    x = torch.rand(5, *SHAPE)
    loaded = cc.load_model(cc.save_model(model, tmp_path / "e.safetensors"))
    assert is_encoder(loaded.arch) and torch.equal(encode(model, x), encode(loaded, x))
    path = export_encoder_onnx(model, tmp_path / "e.onnx")
    oracle = OnnxEncoderOracle(path, budget=5)
    assert oracle.dim == 16 and oracle.output_kind == "embedding" and oracle.input_shape == SHAPE
    assert torch.allclose(oracle.query(x), encode(model, x), atol=1e-5)
    with pytest.raises(BudgetExceeded):
        oracle.query(x[:1])
    assert as_encoder_oracle(str(path)).dim == 16


def test_embedding_oracles_count_queries_and_check_answers():
    model = _encoder()
    oracle = as_encoder_oracle(model, budget=4)
    assert isinstance(oracle, EncoderOracle) and oracle.output_kind == "embedding"
    assert oracle.query(torch.rand(3, *SHAPE)).shape == (3, 16) and oracle.remaining == 1
    with pytest.raises(BudgetExceeded, match="budget"):
        oracle.query(torch.rand(2, *SHAPE))
    fn = CallableEncoderOracle(lambda b: torch.ones(len(b), 16), 16, input_format="torch")
    assert fn.query(torch.rand(2, *SHAPE)).shape == (2, 16)
    with pytest.raises(SuspectError):
        CallableEncoderOracle(lambda b: torch.zeros(len(b)), 16, input_format="torch").query(torch.rand(2, *SHAPE))
    with pytest.raises(InvalidArgument, match="dim"):
        as_encoder_oracle(lambda b: b)


def test_the_embed_endpoint_validates_inputs_and_respects_budgets(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from copycatch.serve import ServeConfig, create_app, read_ledger
    from copycatch.serve.embedding import add_embedding_route, create_embedding_app

    model = _encoder()
    x = torch.rand(3, *SHAPE)
    app = create_embedding_app(model, ServeConfig(budget="5", ledger=str(tmp_path / "ledger.jsonl")))
    with TestClient(app) as client:
        ok = client.post("/v1/embed", json={"inputs": x.tolist()})
        assert ok.status_code == 200 and ok.headers["X-Budget-Remaining"] == "2"
        assert torch.allclose(torch.tensor(ok.json()["embeddings"]), encode(model, x), atol=1e-5)
        assert client.post("/v1/embed", json={"inputs": torch.rand(1, 1, 7, 8).tolist()}).status_code == 422
        assert client.post("/v1/embed", content=b"{", headers={"content-type": "application/json"}).status_code == 400
        assert client.post("/v1/embed", json={"inputs": x.tolist()}).status_code == 429  # 3 asked, 2 left
        info = client.get("/v1/embed/info").json()
        assert info["embedding_dim"] == 16 and info["output"] == "embedding"
        docs = client.get("/docs").text  # the Swagger page loads its scripts from the server, not a CDN
        assert "/docs/assets/swagger-ui-bundle.js" in docs and "https://" not in docs
        assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    lines = [e for e in read_ledger(tmp_path / "ledger.jsonl").entries if e.get("status") == 200]
    assert len(lines) == 1 and lines[0]["output"] == "embedding" and lines[0]["n"] == 3
    # beside the prediction route: one budget for both
    shared = create_app(cc.create_model("mlp", SHAPE, 4, seed=0, hidden=8), ServeConfig(budget="4"))
    add_embedding_route(shared, model)
    with TestClient(shared) as client:
        assert client.post("/v1/predict", json={"inputs": x.tolist()}).status_code == 200
        assert client.post("/v1/embed", json={"inputs": x[:2].tolist()}).status_code == 429


# ---------------------------------------------------------------------------------------------------------------------
# thieves
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODER_ATTACKS)
def test_encoder_thieves_lower_their_loss_within_budget(name, tiny):
    victim = _encoder()
    oracle = EncoderOracle(victim, budget=150)
    surrogate = _encoder("encoder-resnet", seed=1)  # another architecture, same embedding width
    attack = create_extraction_attack(name, budget=150)
    result = attack.run(oracle, tiny.splits.attacker_pool, surrogate, train=cc.TrainConfig(epochs=4, batch_size=32))
    losses = [epoch["loss"] for epoch in result.info["training"]["history"]]
    assert result.queries == oracle.queries == 150 and losses[-1] < losses[0]


def test_stolen_encoder_copies_the_victims_embeddings(tiny):
    victim = _encoder()
    surrogate = _encoder("encoder-resnet", seed=1)
    x = tiny.splits.test.stored
    before = torch.nn.functional.cosine_similarity(encode(victim, x), encode(surrogate, x)).mean()
    create_extraction_attack("stolen-encoder").run(
        EncoderOracle(victim), tiny.splits.attacker_pool, surrogate, train=cc.TrainConfig(epochs=6, batch_size=32)
    )
    after = torch.nn.functional.cosine_similarity(encode(victim, x), encode(surrogate, x)).mean()
    assert after > before + 0.3


def test_encoder_thieves_refuse_classifier_oracles_and_mismatched_widths(tiny, trained):
    attack = create_extraction_attack("stolen-encoder")
    with pytest.raises(InvalidArgument, match="embedding oracle"):
        attack.run(cc.ModelOracle(trained), tiny.splits.attacker_pool, _encoder())
    wide = cc.create_model("encoder-cnn9", SHAPE, 4, width=4, dim=8)
    with pytest.raises(InvalidArgument, match="dim=16"):
        attack.run(EncoderOracle(_encoder()), tiny.splits.attacker_pool, wide)


# ---------------------------------------------------------------------------------------------------------------------
# MEA-Defender for encoders
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def watermarked(tiny):
    scheme = create_scheme("mea-defender-encoder", **SCHEMES.get("mea-defender-encoder").factory.tiny_params)
    encoder = cc.create_model("encoder-cnn9", SHAPE, 4, seed=0, width=8, dim=32)
    embedding = scheme.embed(encoder, tiny.splits, train=cc.TrainConfig(epochs=5, batch_size=64), progress=False)
    return scheme, embedding


def test_mea_defender_encoder_catches_its_victim_and_clears_innocent_encoders(watermarked, tiny):
    scheme, embedding = watermarked
    caught = scheme.verify(EncoderOracle(embedding.victim), embedding.key, alpha=0.01)
    assert caught.verdict == "stolen" and caught.metrics["probe_wsr"] > 0.9 and caught.metrics["centroid_p"] < 0.01
    for seed in (1, 2):
        innocent = cc.create_model("encoder-cnn9", SHAPE, 4, seed=seed + 10, width=8, dim=32)
        train_simclr(innocent, tiny.splits.attacker_pool, cc.TrainConfig(epochs=5, batch_size=64, seed=seed))
        cleared = scheme.verify(EncoderOracle(innocent), embedding.key, alpha=0.01)
        assert cleared.verdict == "not stolen", cleared.summary()
        assert cleared.metrics["probe_p"] > 0.01 and cleared.metrics["centroid_p"] > 0.01


def test_mea_defender_encoder_key_round_trips_and_refuses_classifier_suspects(watermarked, tmp_path, trained):
    _, embedding = watermarked
    key = cc.Key.load(embedding.key.save(tmp_path / "e.cckey"))
    again = cc.scheme_for_key(key)
    assert again.params.test == "probe" and again.params.rule == "crop-paste"
    centroid = create_scheme("mea-defender-encoder", **{**key.params, "test": "centroid"})
    evidence = centroid.verify(EncoderOracle(embedding.victim), key, alpha=0.01)
    assert evidence.p_value == evidence.metrics["centroid_p"]
    with pytest.raises(InvalidArgument, match="embedding oracle"):
        again.verify(cc.ModelOracle(trained), key)


def test_cc_verify_takes_an_encoder_suspect_through_its_transcript(watermarked, tiny):
    # the transcript oracle keeps the suspect's answer kind: embeddings, not probabilities
    _, embedding = watermarked
    run = cc.verify(EncoderOracle(embedding.victim), embedding.key, alpha=0.01, commitment_checks=False)
    assert run.verdict == "stolen" and run.transcript.answered > 0
    innocent = cc.create_model("encoder-cnn9", SHAPE, 4, seed=11, width=8, dim=32)
    train_simclr(innocent, tiny.splits.attacker_pool, cc.TrainConfig(epochs=5, batch_size=64, seed=1))
    cleared = cc.verify(EncoderOracle(innocent), embedding.key, alpha=0.01, commitment_checks=False)
    assert cleared.verdict == "not stolen"


def test_create_app_serves_an_encoders_embeddings_beside_its_predictions(tiny):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from copycatch.serve import ServeConfig, create_app

    model = _encoder()
    attach_linear_probe(model, tiny.splits.owner_train)
    x = tiny.splits.test.x[:3]
    with TestClient(create_app(model, ServeConfig(budget="5"))) as client:  # an encoder architecture: detected
        assert client.post("/v1/predict", json={"inputs": x.tolist()}).status_code == 200
        embedded = client.post("/v1/embed", json={"inputs": x[:2].tolist()})
        assert embedded.status_code == 200
        assert torch.allclose(torch.tensor(embedded.json()["embeddings"]), encode(model, x[:2]), atol=1e-5)
        assert client.post("/v1/embed", json={"inputs": x[:1].tolist()}).status_code == 429  # one budget for both
    with TestClient(create_app(model, encoder=False)) as client:
        assert client.post("/v1/embed", json={"inputs": x.tolist()}).status_code == 404
    with TestClient(create_app(cc.create_model("mlp", SHAPE, 4, seed=0, hidden=8))) as client:
        assert client.post("/v1/embed", json={"inputs": x.tolist()}).status_code == 404


# ---------------------------------------------------------------------------------------------------------------------
# removal attacks and the demo
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fine-tune", "prune", "quantize"])
def test_weight_removal_attacks_launder_an_encoder_into_an_encoder(name, tiny):
    model = _encoder()
    attach_linear_probe(model, tiny.splits.owner_train)
    result = cc.create_removal_attack(name).run(
        model, tiny.splits.attacker_pool, train=cc.TrainConfig(epochs=1, batch_size=64), progress=False
    )
    assert result.model.arch == "encoder-cnn9" and encode(result.model, tiny.splits.test.stored[:4]).shape == (4, 16)


def test_the_tiny_encoder_demo_runs_end_to_end(capsys):
    from copycatch.bench.encoder_demo import run_encoder_demo

    result = run_encoder_demo(preset="tiny", budget=300)
    assert result["queries"] == 300 and set(result["verification"]) == {"victim", "stolen", "innocent"}
    assert result["verification"]["innocent"]["verdict"] == "not stolen"
    assert "encoder demo" in capsys.readouterr().out
