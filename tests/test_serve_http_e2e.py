"""End to end over loopback HTTP: `copycatch serve` as a real process (keys, ledger, graceful shutdown), and the
thief's rehearsal plus the owner's verification through `HttpOracle` against a protected server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

import copycatch as cc
from copycatch.cli.main import main
from copycatch.cli.options import EXIT_NOT_STOLEN, EXIT_STOLEN
from copycatch.core.errors import SuspectError
from copycatch.serve import ServeConfig, create_app, new_key, read_ledger, serve_in_thread

VERDICT_STATUS = {"stolen": EXIT_STOLEN, "not stolen": EXIT_NOT_STOLEN}  # `copycatch verify`'s exit status

DATA = ["--data", "synthetic", "--max-train", "800", "-q"]

SLOW_MODEL = textwrap.dedent("""
    import time
    import numpy as np

    def predict(batch):
        # slow enough for a SIGTERM to land while a request is in flight
        time.sleep(1.5 if batch.max() > 0.99 else 0.0)
        scores = batch.reshape(len(batch), -1)[:, :4].astype(np.float64) + 1e-3
        return (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)
""")


def _start_cli_server(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "copycatch.cli.main", "serve", *args, "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 60
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("serving on "):
            return proc, line.split()[2]
    proc.kill()
    raise AssertionError("server did not start:\n" + "".join(lines) + proc.stderr.read())


@pytest.mark.slow
def test_cli_server_with_keys_ledger_and_a_graceful_shutdown(tmp_path):
    (tmp_path / "slowmodel.py").write_text(SLOW_MODEL)
    keys = tmp_path / "keys.txt"
    secret = new_key(keys, "owner-test")
    ledger = tmp_path / "ledger.jsonl"
    proc, url = _start_cli_server(
        tmp_path,
        "slowmodel:predict",
        "--input-shape",
        "1,4,4",
        "--num-classes",
        "4",
        "--api-keys",
        str(keys),
        "--ledger",
        str(ledger),
        "--batch-wait-ms",
        "0",
        "--class-names",
        "w,x,y,z",
    )
    try:
        from copycatch.oracles.http import HttpOracle

        oracle = HttpOracle(url, api_key=secret)
        assert oracle.num_classes == 4 and oracle.input_shape == (1, 4, 4) and oracle.class_names == list("wxyz")
        x = torch.rand(6, 1, 4, 4) * 0.9
        expected = (x.reshape(6, -1)[:, :4] + 1e-3) / (x.reshape(6, -1)[:, :4] + 1e-3).sum(1, keepdim=True)
        assert torch.allclose(oracle.query(x), expected, atol=1e-5)
        with pytest.raises(SuspectError, match="401"):
            HttpOracle(url, api_key="cc_wrong").query(x)

        slow: dict[str, httpx.Response] = {}

        def in_flight():
            slow["r"] = httpx.post(
                url + "/v1/predict",
                json={"inputs": torch.ones(1, 1, 4, 4).tolist()},
                headers={"X-API-Key": secret},
                timeout=30,
            )

        thread = threading.Thread(target=in_flight)
        thread.start()
        time.sleep(0.5)  # the request is inside the model now
        proc.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert slow["r"].status_code == 200 and len(slow["r"].json()["probabilities"]) == 1
    assert "stopped" in proc.stdout.read()
    entries = read_ledger(ledger).entries
    assert [e["status"] for e in entries][-1] == 200 and entries[-1]["n"] == 1
    assert {e["key"] for e in entries} == {"owner-test"}  # the wrong key was stopped at /v1/info
    assert secret not in ledger.read_text()


@pytest.fixture(scope="module")
def margin_victim(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    victim, key = work / "victim.safetensors", work / "victim.cckey"
    assert (
        main(
            [
                "embed",
                "--max-cost",
                "none",
                "--scheme",
                "margin",
                "--arch",
                "mlp",
                "-p",
                "n_triggers=30",
                "-p",
                "lam=1",
                "-o",
                str(victim),
                "--key",
                str(key),
                "--epochs",
                "6",
                *DATA,
            ]
        )
        == 0
    )
    return work, victim, key


def test_steal_and_verify_over_http_with_the_cli(margin_victim, capsys):
    work, victim, key = margin_victim
    ledger = work / "ledger.jsonl"
    app = create_app(str(victim), ServeConfig(ledger=str(ledger)), key=str(key))
    surrogate = work / "surrogate.safetensors"
    with serve_in_thread(app) as url:
        assert (
            main(
                [
                    "steal",
                    "--oracle",
                    url,
                    "--arch",
                    "mlp",
                    "--budget",
                    "300",
                    "-o",
                    str(surrogate),
                    "--epochs",
                    "3",
                    *DATA,
                ]
            )
            == 0
        )
        assert "300 queries" in capsys.readouterr().out
        assert main(["verify", "--key", str(key), "--suspect", url, "--json"]) == 0
        served_evidence = json.loads(capsys.readouterr().out)
    assert served_evidence["verdict"] == "stolen" and served_evidence["p_value"] < 1e-3
    code = main(["verify", "--key", str(key), "--suspect", str(surrogate), "--json"])
    assert VERDICT_STATUS[json.loads(capsys.readouterr().out)["verdict"]] == code
    answered = sum(e["n"] for e in read_ledger(ledger).entries if e["status"] == 200)
    assert answered == 300 + served_evidence["queries_used"]  # the ledger saw every query, thief's and owner's


def test_png_transport_and_budget_refusal_reach_the_client(margin_victim):
    from copycatch.oracles.http import HttpOracle

    _, victim, _ = margin_victim
    model = cc.load_model(victim)
    x = (torch.rand(5, *model.input_shape) * 255).round() / 255
    with serve_in_thread(create_app(model, ServeConfig(budget="8"))) as url:
        answers = HttpOracle(url, encoding="png").query(x)
        assert torch.allclose(answers, torch.softmax(model(x), 1).detach(), atol=1e-5)
        with pytest.raises(SuspectError, match="budget exhausted"):
            HttpOracle(url).query(x)  # 5 + 5 > 8, and a lifetime budget never renews: fail at once


@pytest.mark.slow
def test_dynamarks_protected_api_is_stolen_and_verified_over_http(tmp_path, capsys):
    victim, key = tmp_path / "victim.safetensors", tmp_path / "victim.cckey"
    data = ["--data", "synthetic", "-q"]
    assert (
        main(
            [
                "embed",
                "--max-cost",
                "none",
                "--scheme",
                "dynamarks",
                "--arch",
                "mlp",
                "-p",
                "range_choices=4",
                "-p",
                "n_verify=400",
                "-o",
                str(victim),
                "--key",
                str(key),
                "--epochs",
                "8",
                *data,
            ]
        )
        == 0
    )
    capsys.readouterr()
    model = cc.load_model(victim)
    probe = cc.load_splits("synthetic").test.x[:200]
    surrogate = tmp_path / "surrogate.safetensors"
    with serve_in_thread(create_app(model, key=str(key))) as url:
        served = torch.tensor(
            httpx.post(url + "/v1/predict", json={"inputs": probe.tolist()}, timeout=60).json()["probabilities"]
        )
        assert main(["steal", "--oracle", url, "--arch", "mlp", "--epochs", "10", "-o", str(surrogate), *data]) == 0
        assert "720 queries" in capsys.readouterr().out
        # The owner checks the live API with the secret: its answers carry the mark.
        assert main(["verify", "--key", str(key), "--suspect", url, "--alpha", "0.01", "--json"]) == 0
        api_evidence = json.loads(capsys.readouterr().out)
    own = torch.softmax(model(probe), 1).detach()
    assert torch.equal(served.argmax(1), own.argmax(1))  # protection keeps every answer's class
    assert not torch.allclose(served, own, atol=1e-4)  # ... and is applied on the server
    assert api_evidence["verdict"] == "stolen" and api_evidence["exact"]
    code = main(["verify", "--key", str(key), "--suspect", str(surrogate), "--alpha", "0.01", "--json"])
    evidence = json.loads(capsys.readouterr().out)
    assert VERDICT_STATUS[evidence["verdict"]] == code
    assert evidence["queries_used"] == 400 and evidence["exact"] and 0 < evidence["p_value"] <= 1
    # The paper's own criterion (eta > tau = 1) flags the HTTP-stolen surrogate. The scheme's exact p-value over
    # all secrets is not significant at this toy scale (4 classes, 720 queries), so it is not asserted here.
    assert evidence["evidence"][0]["metrics"]["eta"] > 1.0
