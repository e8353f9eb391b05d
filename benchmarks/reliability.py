"""Reliability of the files, the server and the transcript under abuse: the figures of issue 21's "Why", re-measured.

Each check runs the real thing — the `copycatch` command line in this process for files and transcripts, real
`copycatch serve` processes on loopback for the server — and counts the cases that behaved:

* **hostile files**: damaged or hostile model and key files (truncated, random bytes, a pickle whose payload would
  create a file, a header that claims a terabyte, one flipped byte) given to `copycatch verify`: passed = exit
  status 2 with exactly one `copycatch: error:` line, and the pickle's payload never ran;
* **abusive requests**: no or wrong API key, malformed JSON, 100k-deep nesting, wrong shape, strings, NaN, Infinity,
  1e30, both fields, an array body, a batch past the limit, a 50 MB body, a 20,000×20,000 PNG bomb, bad base64, an
  empty body, the wrong content type: passed = a 4xx with a one-line JSON `detail`, and `/healthz` answers 200 after;
* **shared budget (one process)**: 40 concurrent clients holding one API key, batches of 1-8 inputs, against a
  lifetime budget of 1,000 inputs: passed (per round) = answered ≤ budget and the ledger counts what they received;
* **kill -9 under load**: 8 clients, the server SIGKILLed mid-load: passed (per round) = every answer a client
  received is in the ledger (same request id, same inputs), nothing but the very last line torn, and no more
  extra answers on record than requests in flight (answers recorded before they left, as the server is built to);
* **tampered transcript**: one line of a finished verification's transcript changed (an answer, an input hash, a
  line dropped, two swapped, the header) then `verify --resume`: passed = refused (exit 2, one line naming the line);
  the untouched copy must resume (the control);
* **schema fuzzing**: schemathesis from the server's own OpenAPI schema, valid and invalid requests to every
  operation: passed = no 5xx, no valid request refused for its form (a 4xx other than 401/403/404/409/429), and no
  invalid one answered.

    .venv/bin/python benchmarks/reliability.py                    # about 1-2 minutes on 2 cores
    .venv/bin/python benchmarks/reliability.py --only files transcript

The resolved configuration and every case's outcome go to bench-out/reliability/reliability-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import pickle
import platform
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

import copycatch as cc
from copycatch.cli.main import main as copycatch_main
from copycatch.core.key import Key
from copycatch.data.image_codec import encode_png
from copycatch.schemes.margin import MarginWatermark
from copycatch.serve.decoders import ImageDecoder
from copycatch.serve.keys import new_key
from copycatch.serve.ledger import read_ledger

####################################################################################################################
#                                                 Hyper-parameters                                                 #
####################################################################################################################

hyp = {
    "seed": 0,
    "input_shape": [1, 8, 8],  # the served and verified model's inputs: small, so bodies and forward passes are cheap
    "num_classes": 4,
    "key_triggers": 30,  # the margin key of the file and transcript checks (from synthetic data, no training)
    "request_batch": 10,  # inputs per transcript line in the transcript check
    "serve": ["--batch-wait-ms", "0", "--no-access-log", "--log-level", "warning", "--max-batch", "8"],
    "budget": 1000,  # lifetime budget per API key, in inputs
    "budget_clients": 40,
    "budget_batches": [1, 2, 3, 4, 5, 6, 7, 8],  # client i sends batches of budget_batches[i % 8] inputs
    "budget_rounds": 3,  # each with a fresh API key
    "kill_clients": 8,
    "kill_batch": 8,
    "kill_after": [2.0, 3.5],  # seconds of load before SIGKILL, one round each
    "fuzz_examples": 150,  # hypothesis examples per operation and generation mode
    "bomb_side": 20000,  # the PNG bomb's claimed width and height
    "big_body_mb": 50,
    "deep_nesting": 100_000,
}

CHECKS = ("files", "abuse", "budget", "kill", "transcript", "fuzz")

####################################################################################################################
#                                                      Setup                                                       #
####################################################################################################################


def make_victim(work: Path) -> tuple[Path, Path]:
    """A model file (an untrained MLP: every check is about handling, not accuracy) and a margin key for it, its
    triggers from synthetic data."""
    shape, classes = tuple(hyp["input_shape"]), hyp["num_classes"]
    data = cc.load_dataset("synthetic", n=1200, num_classes=classes, size=shape[-1], noise=0.25, seed=hyp["seed"])
    splits = cc.make_splits(data, seed=hyp["seed"])
    scheme = MarginWatermark(n_triggers=hyp["key_triggers"])
    x_u8, true, labels = scheme.make_trigger_set(splits, torch.Generator().manual_seed(hyp["seed"]))
    key = Key(
        "margin",
        scheme.params.to_dict(),
        {"trigger_x": x_u8, "trigger_true": true, "trigger_label": labels},
        meta={"num_classes": classes, "input_shape": list(shape)},
    )
    model = cc.create_model("mlp", shape, classes, hidden=16, seed=hyp["seed"])
    return cc.save_model(model, work / "victim.safetensors"), key.save(work / "victim.cckey")


def run_cli(*argv: Any) -> tuple[int, str]:
    """``copycatch ARGV`` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = copycatch_main([str(a) for a in argv])
    return code, err.getvalue()


def one_error_line(code: int, err: str) -> bool:
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and lines[0].startswith("copycatch: error: ") and "Traceback" not in err


def start_server(work: Path, name: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """A ``copycatch serve`` process answering the victim model; its URL once it listens."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "copycatch.cli.main", "serve", str(work / "victim.safetensors"), "--port", "0"]
    command += [*hyp["serve"], *extra]
    log = work / f"{name}.out"
    with open(log, "w") as out:  # the server process keeps its own descriptor
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        lines = [line for line in log.read_text().splitlines() if line.startswith("serving on ")]
        if lines:
            return proc, lines[0].split()[2]
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server {name} did not start:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def one_input() -> list:
    c, h, w = hyp["input_shape"]
    return [[[0.5] * w] * h] * c


####################################################################################################################
#                                                      Checks                                                      #
####################################################################################################################


class Payload:
    """Unpickling this creates ``marker``: proof that a loader unpickled a file it was given."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def check_files(work: Path, model: Path, key: Path) -> list[dict]:
    """Damaged and hostile model and key files given to ``copycatch verify``."""
    marker = work / "unpickled"
    folder = work / "hostile"
    folder.mkdir()
    raw_model, raw_key = model.read_bytes(), key.read_bytes()
    flipped = bytearray(raw_key)
    flipped[-5] ^= 0xFF  # inside the last tensor's data: the header still parses, the digest does not match
    rng = np.random.default_rng(hyp["seed"])
    files = {
        "model truncated": ("suspect", "truncated.safetensors", raw_model[: len(raw_model) // 2]),
        "model random bytes": ("suspect", "random.safetensors", rng.bytes(4096)),
        "model pickle with a payload": ("suspect", "payload.pt", _torch_save_bytes(Payload(marker))),
        "model header claims 1 TB": ("suspect", "huge.safetensors", struct.pack("<Q", 2**40) + b"{}"),
        "key truncated": ("key", "truncated.cckey", raw_key[: len(raw_key) - 7]),
        "key random bytes": ("key", "random.cckey", rng.bytes(4096)),
        "key pickle with a payload": ("key", "payload.cckey", pickle.dumps(Payload(marker), protocol=4)),
        "key with one byte flipped": ("key", "flipped.cckey", bytes(flipped)),
    }
    cases = []
    for name, (role, filename, content) in files.items():
        path = folder / filename
        path.write_bytes(content)
        given = {"key": key, "suspect": model, role: path}
        code, err = run_cli("verify", "-q", "--key", given["key"], "--suspect", given["suspect"])
        ok = one_error_line(code, err) and not marker.exists()
        cases.append({"case": name, "passed": ok, "exit": code, "stderr": err.strip()[:300]})
    return cases


def _torch_save_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def png_bomb(side: int) -> str:
    """A greyscale PNG that claims side×side pixels (side² bytes once inflated) in a few hundred kB, base64."""
    rows = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0 and a row of zeros
    idat = b"".join(rows.compress(row) for _ in range(side)) + rows.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


def abusive_requests(secret: str) -> dict[str, tuple[dict[str, str], bytes]]:
    """Name → (headers, body) of each abusive request to ``POST /v1/predict``."""
    key = {"X-API-Key": secret, "Content-Type": "application/json"}
    good = one_input()
    c, h, w = hyp["input_shape"]
    deep = hyp["deep_nesting"]

    def body(value: Any) -> bytes:
        return json.dumps(value).encode()

    def inputs_with(text: str) -> bytes:  # one input whose first value is spelled ``text`` (not always valid JSON)
        values = ", ".join([text] + ["0.5"] * (w - 1))
        row = f"[{values}]"
        rest = ", ".join([json.dumps([0.5] * w)] * (h - 1))
        return f'{{"inputs": [[[{row}, {rest}]]]}}'.encode()

    return {
        "no API key": ({"Content-Type": "application/json"}, body({"inputs": [good]})),
        "wrong API key": ({**key, "X-API-Key": "cc_not-a-key"}, body({"inputs": [good]})),
        "malformed JSON": (key, b'{"inputs": [[[[0.5, 0.5'),
        f"{deep:,}-deep nesting": (key, b'{"inputs": ' + b"[" * deep + b"]" * deep + b"}"),
        "wrong shape": (key, body({"inputs": [[[[0.5] * (w + 1)] * h] * c]})),
        "strings for numbers": (key, inputs_with('"0.5"')),
        "NaN": (key, inputs_with("NaN")),
        "Infinity": (key, inputs_with("Infinity")),
        "1e30": (key, inputs_with("1e30")),
        "both inputs and images": (key, body({"inputs": [good], "images": ["AAAA"]})),
        "an array body": (key, body([good])),
        "2,000-input batch": (key, body({"inputs": [good] * 2000})),
        f"{hyp['big_body_mb']} MB body": (key, b" " * (hyp["big_body_mb"] * 2**20)),
        f"{hyp['bomb_side']:,}×{hyp['bomb_side']:,} PNG bomb": (key, body({"images": [png_bomb(hyp["bomb_side"])]})),
        "bad base64": (key, body({"images": ["not base64!"]})),
        "empty body": (key, b""),
        "wrong content type": ({**key, "Content-Type": "text/plain"}, body({"inputs": [good]})),
    }


def check_abuse(url: str, secret: str) -> tuple[list[dict], dict]:
    """Each abusive request: a 4xx with a one-line detail, and the server healthy after it."""
    cases = []
    with httpx.Client(base_url=url, timeout=120) as http:
        for name, (headers, content) in abusive_requests(secret).items():
            try:
                r = http.post("/v1/predict", content=content, headers=headers)
                status, detail = r.status_code, r.json().get("detail") if r.content else None
            except httpx.HTTPError as exc:  # a server that hangs up instead of answering fails the case
                status, detail = None, f"{type(exc).__name__}: {exc}"
            healthy = http.get("/healthz").status_code == 200
            one_line = isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
            ok = status is not None and 400 <= status < 500 and one_line and healthy
            cases.append(
                {"case": name, "passed": ok, "status": status, "detail": str(detail)[:200], "healthy": healthy}
            )
        answer = http.post("/v1/predict", json={"inputs": [one_input()]}, headers={"X-API-Key": secret})
    return cases, {"valid_after": answer.status_code}


async def _budget_round(url: str, secret: str) -> dict:
    answered, statuses = 0, {}

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal answered
        n = hyp["budget_batches"][i % len(hyp["budget_batches"])]
        while True:
            r = await http.post("/v1/predict", json={"inputs": [one_input()] * n}, headers={"X-API-Key": secret})
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            if r.status_code != 200:
                return
            answered += n

    limits = httpx.Limits(max_connections=hyp["budget_clients"])
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(i, http) for i in range(hyp["budget_clients"])))
    return {"answered": answered, "statuses": statuses}


def check_budget(url: str, secrets: list[str], ledger: Path) -> list[dict]:
    """Rounds of concurrent clients on one key each against the lifetime budget; compared with the ledger."""
    rows = [asyncio.run(_budget_round(url, secret)) for secret in secrets]
    entries = read_ledger(ledger).entries
    cases = []
    for r, row in enumerate(rows):
        on_record = sum(e["n"] for e in entries if e.get("key") == f"budget-{r}" and e.get("status") == 200)
        ok = row["answered"] <= hyp["budget"] and on_record == row["answered"]
        cases.append({"case": f"round {r}", "passed": ok, **row, "ledger_answered": on_record})
    return cases


def check_kill(work: Path, kill_after: float, round_: int) -> dict:
    """Load on a server with a ledger, SIGKILL mid-load, then the ledger against what the clients received."""
    ledger = work / f"kill-{round_}.jsonl"
    proc, url = start_server(work, f"kill-{round_}", "--ledger", str(ledger))
    received: dict[str, int] = {}  # request id → inputs answered, as the clients saw it
    stop = threading.Event()

    def client() -> None:
        body = {"inputs": [one_input()] * hyp["kill_batch"]}
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v1/predict", json=body)
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    received[r.headers["X-Request-ID"]] = len(r.json()["probabilities"])

    threads = [threading.Thread(target=client) for _ in range(hyp["kill_clients"])]
    for t in threads:
        t.start()
    time.sleep(kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    read = read_ledger(ledger)
    recorded = {e["request"]: e["n"] for e in read.entries if e.get("status") == 200}
    missing = [rid for rid, n in received.items() if recorded.get(rid) != n]
    extra = sum(n for rid, n in recorded.items() if rid not in received)
    ok = not missing and read.corrupt_lines <= 1 and extra <= hyp["kill_clients"] * hyp["kill_batch"]
    return {
        "case": f"SIGKILL after {kill_after:g} s",
        "passed": ok,
        "client_inputs": sum(received.values()),
        "ledger_inputs": sum(recorded.values()),
        "received_missing_from_ledger": len(missing),
        "recorded_not_received_inputs": extra,
        "torn_lines": read.corrupt_lines,
    }


def _tamper(lines: list[str], how: str) -> list[str]:
    """The transcript's lines with one change; line 0 is the header, answers start after the session line."""
    answer = next(i for i, line in enumerate(lines) if json.loads(line)["kind"] == "answers")
    lines = list(lines)
    if how in ("an answer changed", "an input hash changed"):
        record = json.loads(lines[answer])
        if how == "an answer changed":
            record["answers"][0][0] = round(record["answers"][0][0] + 0.01, 6)
        else:
            record["input_sha256"][0] = "0" * len(record["input_sha256"][0])
        lines[answer] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    elif how == "a line dropped":
        del lines[answer]
    elif how == "two lines swapped":
        lines[answer], lines[answer + 1] = lines[answer + 1], lines[answer]
    else:  # the header: another suspect
        record = json.loads(lines[0])
        record["suspect"] = {**record["suspect"], "identity": "elsewhere.safetensors"}
        lines[0] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return lines


def check_transcript(work: Path, model: Path, key: Path) -> tuple[list[dict], dict]:
    """A finished fixed-test transcript, one line changed, then ``verify --resume``: refused, naming the line."""
    original = work / "transcript.jsonl"
    verify = ["verify", "-q", "--key", key, "--suspect", model, "--fixed", "--request-batch", hyp["request_batch"]]
    code, err = run_cli(*verify, "--transcript", original)
    if code not in (0, 1):
        raise SystemExit(f"the transcript check could not start: verify exited {code}: {err}")
    lines = original.read_text().splitlines()
    control = work / "control.jsonl"
    control.write_text(original.read_text())
    control_code, control_err = run_cli(*verify, "--transcript", control, "--resume")
    resumes = control_code in (0, 1)  # a refusal only counts if the untouched copy resumes
    cases = []
    for how in ("an answer changed", "an input hash changed", "a line dropped", "two lines swapped", "the header"):
        path = work / f"tampered-{len(cases)}.jsonl"
        path.write_text("\n".join(_tamper(lines, how)) + "\n")
        code, err = run_cli(*verify, "--transcript", path, "--resume")
        ok = resumes and one_error_line(code, err) and str(path) in err
        cases.append({"case": how, "passed": ok, "exit": code, "stderr": err.strip()[:300]})
    return cases, {"control_exit": control_code, "control_stderr": control_err.strip()[:300]}


# a schema promises which requests are well formed, not that every key is allowed everything
_NOT_ABOUT_FORM = {401, 403, 404, 409, 429}


def _fuzz_operation(operation: Any, mode: Any, url: str, secret: str) -> list[tuple[int, bool]]:
    """(status, answered against the schema?) of each request hypothesis draws for ``operation`` in ``mode``: a
    valid request refused for its form, or an invalid one answered 2xx, is against the schema."""
    from hypothesis import HealthCheck, Verbosity, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    outcomes: list[tuple[int, bool]] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=hyp["fuzz_examples"],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    def run(case: Any) -> None:
        status = case.call(base_url=url, headers={"X-API-Key": secret}).status_code
        if mode == GenerationMode.POSITIVE:
            outcomes.append((status, 400 <= status < 500 and status not in _NOT_ABOUT_FORM))
        else:
            outcomes.append((status, 200 <= status < 300))

    try:
        run()
    except Unsatisfiable:  # an operation that takes no input has no invalid request to send
        if mode == GenerationMode.POSITIVE or outcomes:
            raise
    return outcomes


def check_fuzz(url: str, secret: str) -> tuple[list[dict], dict]:
    """Schemathesis from the served schema: every operation, valid and invalid requests; statuses counted."""
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    pixels = int(np.prod(hyp["input_shape"]))
    png = st.lists(st.integers(0, 255), min_size=pixels, max_size=pixels).map(
        lambda v: base64.b64encode(encode_png(np.asarray(v, np.float32).reshape(hyp["input_shape"]) / 255)).decode()
    )
    schemathesis.openapi.format(ImageDecoder.encoded_format, png)  # real PNGs where the schema asks for base64 images
    # raw bodies and multipart files are `format: binary`: real images of the model's size, not arbitrary bytes
    schemathesis.openapi.format("binary", png.map(base64.b64decode))
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    cases, statuses = [], {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            outcomes = _fuzz_operation(operation, mode, url, secret)
            label = f"{operation.label} ({mode.value})"
            for status, _ in outcomes:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            cases += [{"case": label, "passed": status < 500 and not bad, "status": status} for status, bad in outcomes]
            errors, against = sum(s >= 500 for s, _ in outcomes), sum(bad for _, bad in outcomes)
            print(f"  {label}: {len(outcomes)} cases, {errors} 5xx, {against} against the schema", flush=True)
    return cases, {"statuses": statuses}


####################################################################################################################
#                                                       Run                                                        #
####################################################################################################################


def timed(name: str, results: dict, fn: Callable[[], tuple[list[dict], dict]]) -> None:
    started = time.perf_counter()
    print(f"{name} …", flush=True)
    cases, extra = fn()
    results[name] = {"cases": cases, **extra, "seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS), help="run only these checks")
    parser.add_argument("--out", default="bench-out/reliability")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("COPYCATCH_PROGRESS", "0")
    results: dict[str, Any] = {}
    server: dict[str, Any] = {}  # how the main server fared: a valid request after the abuse, its exit on SIGTERM
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="copycatch-reliability-") as tmp:
        work = Path(tmp)
        model, key = make_victim(work)
        if "files" in args.only:
            timed("hostile files", results, lambda: (check_files(work, model, key), {}))
        if "transcript" in args.only:
            timed("tampered transcript", results, lambda: check_transcript(work, model, key))
        if {"abuse", "budget", "fuzz"} & set(args.only):
            keys = work / "keys.txt"
            abuser, fuzzer = new_key(keys, "abuser"), new_key(keys, "fuzzer")
            thieves = [new_key(keys, f"budget-{r}") for r in range(hyp["budget_rounds"])]
            ledger = work / "ledger.jsonl"
            extra = ["--api-keys", str(keys), "--budget", str(hyp["budget"]), "--ledger", str(ledger)]
            proc, url = start_server(work, "main", *extra)
            try:
                if "abuse" in args.only:
                    timed("abusive requests", results, lambda: check_abuse(url, abuser))
                    server["valid request after the abuse"] = results["abusive requests"].pop("valid_after")
                if "budget" in args.only:
                    timed("shared budget (one process)", results, lambda: (check_budget(url, thieves, ledger), {}))
                if "fuzz" in args.only:
                    timed("schema fuzzing", results, lambda: check_fuzz(url, fuzzer))
            finally:
                server["exit status on SIGTERM"] = stop_server(proc)
        if "kill" in args.only:
            rounds = list(enumerate(hyp["kill_after"]))
            timed("kill -9 under load", results, lambda: ([check_kill(work, after, r) for r, after in rounds], {}))
    seconds = time.perf_counter() - started

    print(f"\n{'check':<30} {'cases':>6} {'passed':>7}")
    rows = []
    for name, result in results.items():
        cases = result["cases"]
        passed = sum(c["passed"] for c in cases)
        rows.append({"check": name, "cases": len(cases), "passed": passed, "seconds": result["seconds"]})
        print(f"{name:<30} {len(cases):>6} {passed:>7}")
        for case in cases:
            if not case["passed"]:
                print(f"  FAILED {case}")
    for what, value in server.items():
        print(f"main server: {what}: {value}")
    print(f"wall time {seconds:.0f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"reliability-{time.strftime('%Y%m%d-%H%M%S')}.json"
    versions = {"copycatch": cc.__version__, "torch": torch.__version__, "python": platform.python_version()}
    document = {"hyp": hyp, "only": args.only, "versions": versions, "command": sys.argv, "seconds": seconds}
    document.update(table=rows, server=server, results=results)
    path.write_text(json.dumps(document, indent=2))
    print(f"results written to {path}")
    healthy = server.get("valid request after the abuse", 200) == 200
    return 0 if healthy and all(row["passed"] == row["cases"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
