"""The query ledger: append-only lines that survive a crash, size rotation, per-key summaries, `copycatch ledger`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from copycatch.cli.main import main
from copycatch.core.errors import CorruptFile, InvalidArgument
from copycatch.serve.ledger import Ledger, LedgerError, ledger_files, read_ledger, row_digests, spent_by_key, summarize


def _entry(key="alice", n=2, status=200, inputs=None):
    inputs = inputs if inputs is not None else [f"{key}-{i}-{time.perf_counter_ns()}" for i in range(n)]
    return {
        "request": "r",
        "key": key,
        "status": status,
        "n": n,
        "output": "probs",
        "inputs": inputs,
        "outputs": ["o"] * n,
    }


def test_each_record_is_one_parseable_line_with_a_timestamp(tmp_path):
    path = tmp_path / "ledger.jsonl"
    with Ledger(path, fsync="always") as ledger:
        for i in range(5):
            ledger.record(_entry(n=i + 1))
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 6
    entries = [json.loads(line) for line in lines[:-1]]
    assert [e["n"] for e in entries] == [1, 2, 3, 4, 5]
    assert all(e["time"].endswith("Z") and isinstance(e["t"], float) for e in entries)


def test_rotation_by_size_keeps_every_line_in_order(tmp_path):
    path = tmp_path / "ledger.jsonl"
    with Ledger(path, max_bytes=4096, fsync="never") as ledger:
        for i in range(200):
            ledger.record({**_entry(n=1), "seq": i})
    files = ledger_files(path)
    assert len(files) > 3 and files[-1] == path
    assert all(f.stat().st_size <= 4096 for f in files)
    read = read_ledger(path)
    assert [e["seq"] for e in read.entries] == list(range(200)) and read.corrupt_lines == 0


def test_rotation_keep_deletes_only_the_oldest(tmp_path):
    path = tmp_path / "ledger.jsonl"
    with Ledger(path, max_bytes=4096, keep=2, fsync="never") as ledger:
        for i in range(200):
            ledger.record({**_entry(n=1), "seq": i})
    files = ledger_files(path)
    assert len(files) == 3
    seqs = [e["seq"] for e in read_ledger(path).entries]
    assert seqs == list(range(seqs[0], 200)) and seqs[0] > 0


def test_a_second_server_cannot_append_to_the_same_ledger(tmp_path):
    path = tmp_path / "ledger.jsonl"
    with Ledger(path), pytest.raises(LedgerError, match="in use by another server"):
        Ledger(path)
    Ledger(path).close()  # released on close


def test_a_foreign_file_is_never_appended_to(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("my shopping list\n")
    with pytest.raises(CorruptFile, match="not a copycatch ledger"):
        Ledger(path)
    assert path.read_text() == "my shopping list\n"


def test_a_short_write_is_rolled_back_not_left_as_half_a_line(tmp_path, monkeypatch):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path, fsync="never")
    ledger.record(_entry())
    good = path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[: len(data) // 2]))
    with pytest.raises(LedgerError, match="short write"):
        ledger.record(_entry())
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_bytes() == good
    ledger.record(_entry())
    ledger.close()
    assert read_ledger(path).corrupt_lines == 0 and len(read_ledger(path).entries) == 2


def test_an_unterminated_tail_is_counted_and_fenced_off(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(json.dumps(_entry()).encode() + b"\n" + b'{"key": "alice", "sta')
    with Ledger(path) as ledger:
        ledger.record(_entry(key="bob"))
    read = read_ledger(path)
    assert read.corrupt_lines == 1 and [e["key"] for e in read.entries] == ["alice", "bob"]


_WRITER = textwrap.dedent("""
    import sys
    from copycatch.serve.ledger import Ledger
    ledger = Ledger(sys.argv[1], max_bytes=200_000, fsync="never")
    print("ready", flush=True)
    i = 0
    while True:
        ledger.record({"key": "k%d" % (i % 3), "status": 200, "n": 64, "seq": i,
                       "inputs": ["%032x" % (i * 64 + j) for j in range(64)]})
        i += 1
""")


@pytest.mark.slow
def test_a_process_killed_mid_write_leaves_no_torn_line(tmp_path):
    path = tmp_path / "ledger.jsonl"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.4)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    read = read_ledger(path)
    # SIGKILL may cut the write in flight at a page boundary: at most the very last line is torn, nothing before
    # it, and every rotated file is whole.
    assert read.corrupt_lines <= 1 and len(read.entries) > 50
    assert [e["seq"] for e in read.entries] == list(range(len(read.entries)))
    assert all(len(e["inputs"]) == 64 for e in read.entries)
    assert all(f.read_bytes().endswith(b"\n") for f in read.files[:-1])
    tail = read.files[-1].read_bytes()  # empty when the kill came right after a rotation
    assert (tail == b"" or tail.endswith(b"\n")) == (read.corrupt_lines == 0)
    with Ledger(path) as ledger:  # a restarted server fences the torn tail off and carries on
        ledger.record({"key": "k0", "status": 200, "n": 1, "seq": len(read.entries)})
    after = read_ledger(path)
    assert after.corrupt_lines == read.corrupt_lines
    assert [e["seq"] for e in after.entries] == list(range(len(read.entries) + 1))


def test_row_digests_are_per_example_and_batch_independent():
    x = torch.rand(5, 1, 4, 4)
    digests = row_digests(x)
    assert len(set(digests)) == 5 and all(len(d) == 32 for d in digests)
    assert row_digests(x[2:3]) == digests[2:3]
    assert row_digests(x.double()) == digests  # the float32 value is what is hashed
    assert row_digests(np.array([3, 1, 3]))[0] == row_digests(np.array([3]))[0]


def test_summary_counts_answers_refusals_and_repeats():
    entries = [
        _entry("alice", 2, inputs=["a", "b"]),
        _entry("alice", 2, inputs=["a", "c"]),
        {**_entry("alice", 0, 429), "inputs": None},
        _entry("bob", 1, inputs=["z"]),
        {"key": "(unauthenticated)", "status": 401},
    ]
    rows = {r.key: r for r in summarize(entries)}
    alice = rows["alice"]
    assert (alice.requests, alice.answered, alice.queries, alice.unique_inputs) == (3, 2, 4, 3)
    assert alice.refused == {"429": 1} and alice.repeat_rate == pytest.approx(0.25)
    assert rows["(unauthenticated)"].refused == {"401": 1}
    assert next(r.key for r in summarize(entries)) == "alice"  # busiest first
    assert [r.key for r in summarize(entries, keys=["bob"])] == ["bob"]


def test_spent_by_key_counts_only_answered_inputs_since(tmp_path):
    path = tmp_path / "ledger.jsonl"
    with Ledger(path) as ledger:
        ledger.record({**_entry("alice", 3), "t": 100.0})
        ledger.record({**_entry("alice", 5), "t": 200.0})
        ledger.record({**_entry("alice", 7, 429), "t": 200.0})
        ledger.record({**_entry("bob", 1), "t": 300.0})
    assert spent_by_key(path) == {"alice": 8, "bob": 1}
    assert spent_by_key(path, since=150.0) == {"alice": 5, "bob": 1}
    assert spent_by_key(tmp_path / "missing.jsonl") == {}


def test_ledger_verb_summarises_per_key(tmp_path, capsys):
    path = tmp_path / "ledger.jsonl"
    with Ledger(path) as ledger:
        ledger.record(_entry("alice", 2, inputs=["a", "a"]))
        ledger.record(_entry("bob", 1))
        ledger.record({"key": "(unauthenticated)", "status": 401})
    assert main(["ledger", str(path)]) == 0
    out = capsys.readouterr().out
    assert "3 requests, 0 unreadable lines" in out
    alice = next(line for line in out.splitlines() if line.startswith("alice"))
    assert "50.0%" in alice and alice.split()[1:4] == ["1", "1", "2"]
    assert "401×1" in out
    assert main(["ledger", str(path), "--json", "--key", "bob"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [k["key"] for k in summary["keys"]] == ["bob"] and summary["keys"][0]["queries"] == 1


def test_ledger_verb_since_and_errors(tmp_path, capsys):
    from copycatch.cli.commands.ledger import parse_since

    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2025-01-01") == parse_since("2025-01-01T00:00:00Z")
    with pytest.raises(InvalidArgument, match="neither an ISO date"):
        parse_since("yesterday-ish")
    path = tmp_path / "ledger.jsonl"
    with Ledger(path) as ledger:
        ledger.record({**_entry("alice"), "t": 1.0, "time": "1970-01-01T00:00:01.000Z"})
    assert main(["ledger", str(path), "--since", "1h"]) == 0
    assert "no requests match" in capsys.readouterr().out
    assert main(["ledger", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("copycatch: error: ") and "no such ledger" in err and err.count("\n") == 1


def test_ledger_verb_merges_replicas_in_time_order(tmp_path, capsys):
    a, b = tmp_path / "a" / "ledger.jsonl", tmp_path / "b" / "ledger.jsonl"
    stamp = "1970-01-01T00:00:{:02d}.000Z"
    with Ledger(a) as ledger:
        for t in (1, 3, 5):
            ledger.record({**_entry("thief", 4), "t": float(t), "time": stamp.format(t)})
    with Ledger(b) as ledger:
        for t in (2, 4):
            ledger.record({**_entry("thief", 4), "t": float(t), "time": stamp.format(t)})
        ledger.record({**_entry("thief", 4, status=429), "t": 6.0, "time": stamp.format(6)})
    assert main(["ledger", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert f"ledger {a}: 1 file, 3 requests" in out and f"ledger {b}: 1 file, 3 requests" in out
    assert "2 ledgers merged in time order: 2 files, 6 requests, 0 unreadable lines" in out
    thief = next(line for line in out.splitlines() if line.startswith("thief")).split()
    assert thief[1:4] == ["6", "5", "20"] and "429×1" in thief
    assert thief[-2].endswith("00:00:01") and thief[-1].endswith("00:00:06")  # first and last across both files
    assert main(["ledger", str(b), str(a), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [d["lines"] for d in summary["ledgers"]] == [3, 3] and summary["keys"][0]["queries"] == 20
    assert main(["ledger", str(a), str(tmp_path / "a" / ".." / "a" / "ledger.jsonl")]) == 2
    assert "given twice" in capsys.readouterr().err
