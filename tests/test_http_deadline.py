"""`copycatch verify --deadline`: a suspect URL that stops answering ends the run within the deadline, with a message
naming the URL, the attempts and how to resume, and exit status 2; each retry is printed with its reason and wait.
Time the suspect spends answering, and our own time between requests, never count against the deadline."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import ThreadingHTTPServer

import pytest
import torch
from conftest import JsonHandler

from copycatch.cli.main import main
from copycatch.cli.options import EXIT_ERROR, EXIT_NOT_STOLEN
from copycatch.core.errors import SuspectUnresponsive
from copycatch.core.key import Key
from copycatch.oracles.http import HttpOracle
from copycatch.schemes.margin import MarginWatermark

INFO = {"input_shape": [1, 8, 8], "num_classes": 4, "class_names": ["a", "b", "c", "d"], "output": "probs"}


@pytest.fixture(scope="module")
def key_file(splits, tmp_path_factory):
    scheme = MarginWatermark(n_triggers=30)
    x_u8, true, labels = scheme.make_trigger_set(splits, torch.Generator().manual_seed(0))
    key = Key(
        "margin",
        scheme.params.to_dict(),
        {"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels},
        meta={"num_classes": 4, "input_shape": [1, 8, 8]},
    )
    return key.save(tmp_path_factory.mktemp("deadline") / "victim.cckey")


@pytest.fixture()
def silent_url():
    """A server that accepts every connection and never sends a byte."""
    server = socket.create_server(("127.0.0.1", 0))
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


class _Handler(JsonHandler):
    def do_GET(self):
        self._send(200, INFO)

    def do_POST(self):
        api = self.server.api
        n = len(json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"])
        mode = api["script"].pop(0) if api["script"] else api["mode"]
        if mode == "hang":
            api["release"].wait()
            return
        if mode.startswith("429"):
            return self._send(429, {"detail": "slow down"}, [("Retry-After", mode.partition(":")[2])])
        api["answered"] += n
        self._send(200, {"probabilities": [[0.7, 0.1, 0.1, 0.1]] * n})


@pytest.fixture()
def api():
    """(url, behaviour): POSTs follow ``script`` (then ``mode``): "ok", "hang" (never answer) or "429:SECONDS"."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.api = {"mode": "ok", "script": [], "answered": 0, "release": threading.Event()}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.api
    server.api["release"].set()
    server.shutdown()
    server.server_close()


def _verify(capsys, *argv):
    started = time.monotonic()
    code = main(["verify", "-q", *map(str, argv)])
    err = capsys.readouterr().err
    return code, err, time.monotonic() - started


def test_a_silent_url_stops_verify_at_its_deadline(silent_url, key_file, capsys):
    code, err, seconds = _verify(capsys, "--key", key_file, "--suspect", silent_url, "--deadline", 2)
    assert code == EXIT_ERROR
    assert seconds < 6, f"verify took {seconds:.1f} s against a 2 s deadline"
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"copycatch: error: {silent_url}/v1/info gave no answer within the deadline of 2 s")
    assert "(1 attempt; last: no answer within 2 s (timeout))" in line
    assert "run the same command again when it answers (a larger --deadline waits longer)" in line


def test_a_url_falling_silent_mid_run_keeps_the_answers_and_resumes(api, key_file, tmp_path, capsys):
    url, behaviour = api
    behaviour["script"], behaviour["mode"] = ["ok", "ok"], "hang"  # the fixed test asks 30 triggers, 10 a request
    report = tmp_path / "case"
    argv = ["--key", key_file, "--suspect", url, "--fixed", "--request-batch", 10, "--report", report]
    timing = ["--timeout", 0.5, "--backoff", 0.1, "--deadline", 2]
    code, err, seconds = _verify(capsys, *argv, *timing)
    assert code == EXIT_ERROR and seconds < 6
    # attempts of 0.5 s with waits of 0.1 and 0.2 s: the third wait (0.4 s) would pass the 2 s deadline
    retries = [line for line in err.splitlines() if "; retry " in line]
    assert len(retries) == 2
    for i, (line, wait) in enumerate(zip(retries, ["0.1", "0.2"]), 1):
        said = f"copycatch: {url}/v1/predict: no answer within 0.5 s (timeout); retry {i} of 5 in {wait} s, "
        assert re.fullmatch(re.escape(said) + r"[0-9.]+ s left before the deadline", line), line
    last = err.strip().splitlines()[-1]
    assert f"{url}/v1/predict gave no answer within the deadline of 2 s (3 attempts; last: no answer within" in last
    transcript = report / "transcript.jsonl"
    assert f"20 answers are on record in {transcript}: run the same command with --resume to continue" in last
    behaviour["mode"] = "ok"
    code, err, _ = _verify(capsys, *argv, "--resume")
    assert code == EXIT_NOT_STOLEN and behaviour["answered"] == 30  # the 20 on record were replayed, not re-asked


def test_a_retry_after_past_the_deadline_stops_without_waiting(api):
    url, behaviour = api
    behaviour["mode"] = "429:30"
    waits = []
    oracle = HttpOracle(url, deadline=5, sleep=waits.append, on_retry=waits.append)
    started = time.monotonic()
    with pytest.raises(SuspectUnresponsive, match=r"within the deadline of 5 s \(1 attempt; last: rate-limited"):
        oracle.query(torch.rand(2, 1, 8, 8))
    assert waits == [] and time.monotonic() - started < 2


def test_only_the_wait_for_an_answer_counts_against_the_deadline(api):
    url, behaviour = api
    behaviour["script"] = ["429:0.4", "ok", "429:0.4", "ok"]
    lines = []
    oracle = HttpOracle(url, deadline=1, on_retry=lines.append)
    for _ in range(2):
        assert oracle.query(torch.rand(2, 1, 8, 8)).shape == (2, 4)
        time.sleep(1.2)  # our own work between requests: longer than the deadline, never counted
    assert len(lines) == 2 and all("rate-limited (HTTP 429: slow down); retry 1 of 5 in 0.4 s" in s for s in lines)


def test_retries_running_out_at_the_deadline_name_the_silent_endpoint(silent_url):
    # the key gives the classes, so a failing /v1/info is not fatal by itself; its silence up to the deadline is
    with pytest.raises(SuspectUnresponsive, match=r"/v1/info gave no answer within the deadline of 1 s \(2 attempts;"):
        HttpOracle(silent_url, num_classes=4, input_shape=(1, 8, 8), timeout=0.5, retries=1, backoff=0.1, deadline=1)
