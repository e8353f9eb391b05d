"""The protocol presets against real serving stacks: KServe's Python ModelServer (v1 and v2 REST), Seldon's MLServer
(Open Inference Protocol) and MLflow's scoring server (`mlflow models serve`), each in its own virtual environment
(`make test-interop` makes them, under $COPYCATCH_INTEROP_VENVS, default ~/.cache/copycatch-interop), each serving
a stolen and an innocent tiny model (tests/interop/), verified from the CLI with the matching preset.

Run with `pytest -m interop`; without that, or when a stack's environment is missing or its server does not start,
each test skips and says why."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from copycatch.cli.main import main
from copycatch.cli.options import EXIT_NOT_STOLEN, EXIT_STOLEN

pytestmark = pytest.mark.interop

VENVS = Path(os.environ.get("COPYCATCH_INTEROP_VENVS") or "~/.cache/copycatch-interop").expanduser()
SERVERS = Path(__file__).with_name("interop")
READY_SECONDS = 120.0  # a cold start imports the stack's whole framework


@pytest.fixture(autouse=True)
def _only_when_asked(request):
    if "interop" not in (request.config.getoption("-m") or ""):
        pytest.skip("starts real model servers: run with -m interop (make test-interop)")


def _venv_bin(name: str) -> Path:
    path = VENVS / name / "bin"
    if not (path / "python").exists():
        pytest.skip(f"no {name} environment at {path.parent}: `make test-interop` creates it")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(argv, ready_url, *, venv: Path, cwd: Path, log: Path):
    """A server subprocess (its own process group, ended with it), once ``ready_url`` answers 200; skips when it
    does not start, with the end of its log."""
    env = {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(SERVERS)}
    env["OMP_NUM_THREADS"] = "1"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(proc, ready_url, log)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_ready(proc, url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-1500:]
            pytest.skip(f"{Path(proc.args[0]).name} exited with status {proc.returncode} before it was ready:\n{tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.5)
    pytest.skip(f"{url} not ready within {READY_SECONDS:.0f} s:\n{log.read_text(errors='replace')[-1500:]}")


@pytest.fixture(scope="module")
def models(margin_embedding, trained, tmp_path_factory):
    """The key file and the two models as .npz (``stolen``: the watermarked victim itself; ``innocent``)."""
    sys.path.insert(0, str(SERVERS))
    try:
        from tiny_numpy import save_mlp
    finally:
        sys.path.remove(str(SERVERS))
    folder = tmp_path_factory.mktemp("interop")
    key = margin_embedding.key.save(folder / "victim.cckey")
    return key, {
        "stolen": save_mlp(margin_embedding.victim, str(folder / "stolen.npz")),
        "innocent": save_mlp(trained, str(folder / "innocent.npz")),
    }


def _verdicts(capsys, key, url, *options):
    """{model: exit status} of `copycatch verify` on each model behind ``url`` (--model-name or an {m} in the URL)."""
    out = {}
    for name in ("stolen", "innocent"):
        target = ["--suspect", url.format(m=name)] + ([] if "{m}" in url else ["--model-name", name])
        out[name] = main(["verify", "-q", "--key", str(key), *target, *options])
        _, err = capsys.readouterr()
        assert out[name] in (EXIT_STOLEN, EXIT_NOT_STOLEN), err
    return out


EXPECTED = {"stolen": EXIT_STOLEN, "innocent": EXIT_NOT_STOLEN}


def test_kserve_model_server_v1_and_v2(capsys, models, tmp_path):
    venv = _venv_bin("kserve")
    key, npz = models
    port = _free_port()
    argv = [str(venv / "python"), str(SERVERS / "kserve_server.py"), str(port), *(f"{m}={p}" for m, p in npz.items())]
    with _server(argv, f"http://127.0.0.1:{port}/v2/health/ready", venv=venv, cwd=tmp_path, log=tmp_path / "log"):
        base = f"http://127.0.0.1:{port}"
        assert _verdicts(capsys, key, base, "--protocol", "kserve-v1") == EXPECTED
        assert _verdicts(capsys, key, base, "--protocol", "kserve-v2") == EXPECTED
        assert _verdicts(capsys, key, base + "/v2/models/{m}/infer", "--protocol", "kserve-v2") == EXPECTED


def test_mlserver_open_inference_protocol(capsys, models, tmp_path):
    venv = _venv_bin("mlserver")
    key, npz = models
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    settings = {"http_port": http, "grpc_port": grpc, "metrics_port": metrics, "host": "127.0.0.1"}
    settings.update(parallel_workers=0, metrics_endpoint=None)  # one process: nothing left behind
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    for name, path in npz.items():
        (tmp_path / name).mkdir()
        model = {"name": name, "implementation": "mlserver_runtime.Tiny", "parameters": {"uri": path}}
        (tmp_path / name / "model-settings.json").write_text(json.dumps(model))
    argv = [str(venv / "mlserver"), "start", str(tmp_path)]
    with _server(argv, f"http://127.0.0.1:{http}/v2/health/ready", venv=venv, cwd=tmp_path, log=tmp_path / "log"):
        assert _verdicts(capsys, key, f"http://127.0.0.1:{http}", "--protocol", "kserve-v2") == EXPECTED


def test_mlflow_scoring_server(capsys, models, tmp_path):
    venv = _venv_bin("mlflow")
    key, npz = models
    ports = {}
    with contextlib.ExitStack() as servers:
        for name, path in npz.items():
            model = tmp_path / f"{name}-model"
            saved = subprocess.run(
                [str(venv / "python"), str(SERVERS / "mlflow_model.py"), str(model), path],
                capture_output=True,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            if saved.returncode:
                pytest.skip(f"saving the MLflow model failed:\n{saved.stderr[-1500:]}")
            ports[name] = port = _free_port()
            argv = [str(venv / "mlflow"), "models", "serve", "-m", str(model), "-p", str(port), "-h", "127.0.0.1"]
            argv += ["--env-manager", "local"]
            log = tmp_path / f"{name}.log"
            servers.enter_context(_server(argv, f"http://127.0.0.1:{port}/ping", venv=venv, cwd=tmp_path, log=log))
        for name, expected in EXPECTED.items():
            for field in ("inputs", "dataframe_split"):
                url = f"http://127.0.0.1:{ports[name]}/invocations"
                suspect = ["--suspect", url, "--protocol", "mlflow", "--input-field", field]
                code = main(["verify", "-q", "--key", str(key), *suspect])
                _, err = capsys.readouterr()
                assert code == expected, (name, field, err)
