"""Signed evidence: `copycatch key keygen`, `verify --sign-with`, and `copycatch evidence check` run by a third party
with the owner's public key alone."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess

import pytest
import torch

import copycatch as cc
from copycatch import api
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_CHECK_FAILED, EXIT_ERROR
from copycatch.core.key import Key
from copycatch.core.signing import load_private_key, sign_file
from copycatch.schemes.margin import MarginWatermark
from copycatch.verification.transcript import GENESIS, line_hash, row_hashes


class Copycat(cc.Oracle):
    """Answers the secret label on the keys' triggers: a model that copied the watermarks."""

    def __init__(self, keys: list[Key]):
        super().__init__(4, (1, 8, 8), name="copycat")
        self.secret = {}
        for key in keys:
            self.secret.update(zip(row_hashes(key["trigger_x"].float() / 255), key["trigger_label"].tolist()))

    def _answer(self, x):
        labels = [self.secret.get(h, 0) for h in row_hashes(x)]
        return torch.nn.functional.one_hot(torch.tensor(labels), 4).float()


@pytest.fixture(scope="module")
def owner(tmp_path_factory, splits):
    """The owner's folder: two margin keys (no training needed), the owner's signing key pair and a stranger's."""
    folder = tmp_path_factory.mktemp("owner")
    scheme = MarginWatermark(n_triggers=30)
    for seed, name in [(3, "victim"), (4, "second")]:
        x_u8, true, labels = scheme.make_trigger_set(splits, torch.Generator().manual_seed(seed))
        tensors = {"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels}
        meta = {"num_classes": 4, "input_shape": [1, 8, 8]}
        Key("margin", scheme.params.to_dict(), tensors, meta=meta).save(folder / f"{name}.cckey")
    api.keygen(folder / "owner")
    api.keygen(folder / "stranger")
    return folder


def keys_of(case):
    """The key files a case was verified with: both keys for the combined case, else the victim's."""
    names = ["victim", "second"] if case.name == "two-keys" else ["victim"]
    return [case.parent / f"{name}.cckey" for name in names]


@pytest.fixture(scope="module", params=["sequential", "fixed", "two-keys"])
def case(request, owner):
    """Signed evidence of a verification that found theft: the sequential test (stops early), the fixed test, or
    two keys combined with Holm's adjustment."""
    folder = owner / request.param
    keys = keys_of(folder)
    run = api.verify(
        Copycat([Key.load(k) for k in keys]),
        keys,
        sequential=request.param != "fixed",
        report=folder,
        sign_with=owner / "owner.key",
    )
    assert run.verdict == "stolen" and set(run.signatures) == {"evidence", "transcript"}
    assert (run.combined is not None) == (request.param == "two-keys")
    return folder


def check(capsys, *args):
    code = main(["evidence", "check", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def copy(case, tmp_path):
    return shutil.copytree(case, tmp_path / "case")


def test_keygen_writes_a_private_key_for_its_owner_alone_and_never_overwrites_it(tmp_path, capsys):
    assert main(["key", "keygen", "-o", str(tmp_path / "me")]) == 0
    private, public = tmp_path / "me.key", tmp_path / "me.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    before = private.read_bytes()
    capsys.readouterr()
    assert main(["key", "keygen", "-o", str(tmp_path / "me.key")]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert private.read_bytes() == before
    assert main(["key", "keygen", "-o", str(tmp_path / "me"), "--force"]) == 0
    assert private.read_bytes() != before and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_a_third_party_accepts_signed_evidence_with_the_public_key_alone(case, owner, capsys):
    code, out, _ = check(capsys, case / "evidence.json", "--public-key", owner / "owner.pub")
    assert code == 0, out
    assert "VALID" in out and "FAIL" not in out
    for name in ("signature", "p-value of key 1", "verdict", "transcript chain", "transcript signature"):
        assert any(line.split()[:1] == ["ok"] and name in line for line in out.splitlines()), (name, out)
    disclosed = [arg for key in keys_of(case) for arg in ("--key", key)]
    code, out, _ = check(capsys, case / "evidence.json", "--public-key", owner / "owner.pub", *disclosed)
    assert code == 0 and "ok    answers recomputed, key 1" in out, out
    if case.name == "two-keys":
        assert "ok    answers recomputed, combined" in out and "holm combination of 2 keys" in out, out


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_one_changed_byte_is_rejected(case, owner, tmp_path, capsys, where):
    folder = copy(case, tmp_path)
    data = bytearray((folder / "evidence.json").read_bytes())
    data[{"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]] ^= 0x01
    (folder / "evidence.json").write_bytes(bytes(data))
    code, out, err = check(capsys, folder / "evidence.json", "--public-key", owner / "owner.pub")
    assert code == EXIT_CHECK_FAILED and "Traceback" not in err
    assert "FAIL  signature" in out and out.splitlines()[-1].startswith("FAILED")


def test_another_public_key_is_rejected(case, owner, capsys):
    code, out, _ = check(capsys, case / "evidence.json", "--public-key", owner / "stranger.pub")
    assert code == EXIT_CHECK_FAILED
    assert "FAIL  signature" in out and "names the signing key" in out


def _change_an_answer(path, *, rechain):
    """Swap two classes in one recorded answer; with ``rechain``, recompute every hash as anyone can."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    answers = next(line for line in lines if line["kind"] == "answers")
    answers["answers"][0] = answers["answers"][0][::-1]
    if rechain:
        prev = GENESIS
        for line in lines:
            line["prev"] = prev
            line["hash"] = prev = line_hash(line)
    path.write_text("".join(json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n" for line in lines))


@pytest.mark.parametrize("rechain", [False, True], ids=["edited", "edited-and-rechained"])
def test_a_transcript_with_one_changed_line_is_rejected(case, owner, tmp_path, capsys, rechain):
    folder = copy(case, tmp_path)
    _change_an_answer(folder / "transcript.jsonl", rechain=rechain)
    code, out, _ = check(capsys, folder / "evidence.json", "--public-key", owner / "owner.pub")
    assert code == EXIT_CHECK_FAILED
    assert "FAIL  transcript signature" in out
    # a re-chained transcript has an intact chain, but not the lines the signed evidence lists
    assert ("FAIL  transcript is the evidence's" if rechain else "FAIL  transcript chain") in out
    code, out, _ = check(capsys, folder / "transcript.jsonl", "--public-key", owner / "owner.pub")
    assert code == EXIT_CHECK_FAILED and "FAIL  signature" in out


def test_a_signed_but_wrong_p_value_is_caught_by_the_recomputation(case, owner, tmp_path, capsys):
    folder = copy(case, tmp_path)
    doc = json.loads((folder / "evidence.json").read_text())
    doc["p_value"] = doc["evidence"][0]["p_value"] = doc["evidence"][0]["p_value"] / 10
    (folder / "evidence.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    sign_file(folder / "evidence.json", load_private_key(owner / "owner.key"))  # the owner signs a number it made up
    code, out, _ = check(capsys, folder / "evidence.json", "--public-key", owner / "owner.pub")
    assert code == EXIT_CHECK_FAILED
    assert "ok    signature" in out and "FAIL  p-value of key 1" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00\xffnot a key at all" * 8, "not a PEM public key"),
        (None, "is a private key"),
        (b"", "not a PEM public key"),
    ],
    ids=["garbage", "private-key", "empty"],
)
def test_a_wrong_public_key_file_gives_one_clear_line(case, owner, tmp_path, capsys, content, message):
    pub = owner / "owner.key" if content is None else tmp_path / "bad.pub"
    if content is not None:
        pub.write_bytes(content)
    code, out, err = check(capsys, case / "evidence.json", "--public-key", pub)
    assert code == EXIT_ERROR and out == ""
    assert err.count("\n") == 1 and err.startswith("copycatch: error:") and message in err, err


def test_a_wrong_signing_key_fails_before_any_query(owner, tmp_path, capsys):
    code = main(
        ["verify", "--key", str(owner / "victim.cckey"), "--suspect", "nowhere.onnx", "--report", str(tmp_path),
         "--sign-with", str(owner / "owner.pub")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == EXIT_ERROR and err.count("\n") == 1 and "is a public key" in err, err
    assert not (tmp_path / "transcript.jsonl").exists()


def test_an_unsigned_rerun_removes_the_signatures_that_no_longer_match(case, owner, tmp_path):
    folder = copy(case, tmp_path)
    keys = keys_of(case)
    api.verify(Copycat([Key.load(k) for k in keys]), keys, report=folder, resume=True)
    assert not (folder / "evidence.json.sig").exists() and not (folder / "transcript.jsonl.sig").exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_openssl_checks_the_signature_without_copycatch(case, owner):
    """The documented check that needs no copycatch (OpenSSL 3)."""
    out = subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(owner / "owner.pub"), "-rawin",
         "-in", str(case / "evidence.json"), "-sigfile", str(case / "evidence.json.sig")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0 and "Verified Successfully" in out.stdout, out.stderr
