"""Benchmark grids: strict schema, content-addressed cells, the results store, resume after a kill, caching,
executors and the report — all on a tiny synthetic grid (seconds per cell)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from copycatch.bench import GridError, ResultsStore, load_grid, parse_grid, run_grid
from copycatch.bench.executors import LocalPoolExecutor, SerialExecutor, create_executor
from copycatch.bench.grid import artifact_specs, config_hash, flatten, packaged_grids, rescale
from copycatch.bench.report import make_report
from copycatch.cli.main import main
from copycatch.core.errors import CorruptFile, InvalidArgument

GRIDS = Path(__file__).resolve().parents[1] / "src" / "copycatch" / "bench" / "grids"


@pytest.fixture(scope="module")
def serial_results(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("bench") / "serial"
    summary = run_grid(tiny.grid(), out, executor=SerialExecutor(threads=1), progress=False, log=lambda line: None)
    return out, summary


# ---------------------------------------------------------------------------------------------------------------------
# schema
# ---------------------------------------------------------------------------------------------------------------------


def test_sweeps_and_experiments_expand_into_distinct_cells():
    grid = parse_grid("""
name: g
seeds: 2
data: {name: synthetic}
victim: {arch: mlp}
schemes: [{name: margin, sweep: {n_triggers: [10, 20], steps: [1, 2]}}]
experiments:
  - name: a
    attacks: [{extraction: {name: soft-label, sweep: {budget: [100, 200]}}}]
  - name: b
    attacks: [{extraction: {name: soft-label, budget: 200}, removals: [{name: prune, sweep: {rate: [0.1, 0.2]}}]}]
""")
    assert len(grid.experiments["a"]) == 4 * 2 * 2 and len(grid.experiments["b"]) == 4 * 2 * 2
    # the budget-200 cells of "a" are no cell of "b" (b adds a removal), so nothing is shared
    assert len(grid.cells) == 32
    params = {(c.config["scheme"]["params"]["n_triggers"], c.config["scheme"]["params"]["steps"]) for c in grid.cells}
    assert params == {(10, 1), (10, 2), (20, 1), (20, 2)}
    rates = sorted({c.config["removals"][0]["params"]["rate"] for c in grid.experiments["b"]})
    assert rates == [0.1, 0.2]


def test_a_swept_post_processor_gives_one_extraction_per_value():
    grid = parse_grid("""
name: g
data: {name: synthetic}
victim: {arch: mlp}
schemes: [margin]
attacks:
  - extraction: {name: soft-label, post: [{name: quantize, sweep: {levels: [100, 2]}}, "round:decimals=2"]}
  - extraction: {name: soft-label, post: [hard-label]}
""")
    chains = sorted(
        [(p["name"], p["params"].get("levels")) for p in c.config["extraction"]["post"]] for c in grid.cells
    )
    assert chains == [
        [("hard-label", None)],
        [("quantize", 2), ("round", None)],
        [("quantize", 100), ("round", None)],
    ]


def test_cells_shared_by_experiments_run_once_and_belong_to_both():
    grid = parse_grid("""
name: g
data: {name: synthetic}
victim: {arch: mlp}
schemes: [margin]
experiments:
  - {name: a, attacks: [{extraction: {name: soft-label, budget: 100}}]}
  - {name: b, attacks: [{extraction: {name: soft-label, sweep: {budget: [100, 200]}}}]}
""")
    assert len(grid.cells) == 2
    shared = [c for c in grid.cells if c.config["extraction"]["params"]["budget"] == 100]
    assert shared[0].experiments == ("a", "b")


def test_cell_id_hashes_the_resolved_config(tiny):
    base = tiny.grid()
    explicit = tiny.grid(**{"n_triggers: 30,": "n_triggers: 30, steps: 5, eps: 5/255,"})  # the defaults, spelled out
    assert [c.cell_id for c in base.cells] == [c.cell_id for c in explicit.cells]
    changed = tiny.grid(**{"n_triggers: 30": "n_triggers: 31"})
    assert not {c.cell_id for c in base.cells} & {c.cell_id for c in changed.cells}
    cell = base.cells[0]
    assert cell.cell_id == config_hash(cell.config)
    assert cell.config["victim"]["train"]["epochs"] == 8 and "seed" not in cell.config["victim"]["train"]
    assert cell.config["innocent"]["arch"] == "mlp"  # defaults to the surrogate's architecture and training


def test_cells_share_victims_but_not_surrogates(tiny):
    cells = tiny.grid().cells
    same_seed = [c for c in cells if c.seed == 0]
    victims = {config_hash(artifact_specs(c.config)["victim"]) for c in same_seed}
    surrogates = {config_hash(artifact_specs(c.config)["surrogate"]) for c in same_seed}
    assert len(victims) == 1 and len(surrogates) == 2


def test_innocent_takes_the_surrogates_options_only_with_its_architecture():
    grid = parse_grid("""
name: g
data: {name: synthetic}
victim: {arch: mlp}
schemes: [margin]
innocent: {arch: mlp}
experiments:
  - {name: other-arch, attacks: [{extraction: {name: soft-label, arch: resnet18, arch_kwargs: {width: 16}}}]}
  - name: same-arch
    innocent: {}
    attacks: [{extraction: {name: soft-label, arch: resnet18, arch_kwargs: {width: 16}}}]
""")
    assert grid.experiments["other-arch"][0].config["innocent"]["arch_kwargs"] == {}
    assert grid.experiments["same-arch"][0].config["innocent"] == {
        "arch": "resnet18",
        "arch_kwargs": {"width": 16},
        "train": grid.experiments["same-arch"][0].config["extraction"]["train"],
    }


def test_rescale_caps_data_scales_training_epochs_and_keeps_the_swept_ones():
    grid = parse_grid("""
name: g
seeds: 2
data: {name: synthetic, max_train: 5000}
victim: {arch: mlp, train: {epochs: 10}}
schemes: [margin]
innocent: {arch: mlp, train: {epochs: 3}}
attacks:
  - extraction: {name: soft-label, train: {epochs: 20}}
    removals: [{name: fine-tune, sweep: {epochs: [1, 5]}}]
""")
    small = rescale(grid, max_train=800, epochs_factor=0.25)
    assert small.name == "g-n800-e0.25" and "--max-train 800 --epochs-factor 0.25" in small.text
    assert len(small.cells) == len(grid.cells) == 4
    for cell in small.cells:
        cfg = cell.config
        assert cfg["data"]["max_train"] == 800 and cell.cell_id == config_hash(cfg)
        assert (cfg["victim"]["train"]["epochs"], cfg["extraction"]["train"]["epochs"]) == (2, 5)
        assert cfg["innocent"]["train"]["epochs"] == 1  # 0.75 rounds to 1, and never below 1
    # the removal's epochs are the swept variable: kept
    assert sorted({c.config["removals"][0]["params"]["epochs"] for c in small.cells}) == [1, 5]
    assert not {c.cell_id for c in small.cells} & {c.cell_id for c in grid.cells}
    # a larger cap than the grid's keeps the grid's; no scale is the grid itself
    assert {c.config["data"]["max_train"] for c in rescale(grid, max_train=9000).cells} == {5000}
    assert rescale(grid) is grid
    for bad in ({"max_train": 10}, {"max_train": 1.5}, {"epochs_factor": 0.0}, {"epochs_factor": -1.0}):
        with pytest.raises(InvalidArgument, match=next(iter(bad))):
            rescale(grid, **bad)


@pytest.mark.parametrize(
    "snippet, replacement, where, bad",
    [
        ("name: tiny", "colour: red\nname: tiny", "tiny.yaml", "colour"),
        ("data: {name: synthetic,", "data: {nam: 1, name: synthetic,", "data", "nam"),
        ("victim: {arch: mlp,", "victim: {archh: mlp, arch: mlp,", "victim", "archh"),
        (
            "train: {epochs: 8, batch_size: 64}",
            "train: {epochs: 8, batch_size: 64, epoch: 3}",
            "victim: train",
            "epoch",
        ),
        ("{name: margin,", "{name: margin, param: {},", "schemes[0]", "param"),
        ("{name: soft-label,", "{name: soft-label, budgt: 3,", "attacks[0]: extraction", "budgt"),
        ("  - extraction:", "  - removal: []\n    extraction:", "attacks[0]", "removal"),
    ],
)
def test_unknown_keys_name_the_place_the_key_and_the_valid_ones(snippet, replacement, where, bad, tiny):
    with pytest.raises(GridError) as err:
        parse_grid(tiny.GRID.replace(snippet, replacement, 1), source="tiny.yaml")
    message = str(err.value)
    assert message.startswith("tiny.yaml") and where in message, message
    assert f"unknown key {bad!r}" in message and "valid keys:" in message, message


def test_seed_in_a_training_config_is_refused_with_the_reason(tiny):
    with pytest.raises(GridError, match=r"unknown key 'seed' \(seeds come from the grid's `seeds`\)"):
        tiny.grid(**{"train: {epochs: 8, batch_size: 64}": "train: {epochs: 8, seed: 3}"})


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("{name: margin,", "{name: no-such-scheme,", "unknown scheme 'no-such-scheme'; valid schemes: "),
        (
            "{name: soft-label,",
            "{name: telepathy,",
            "unknown extraction attack 'telepathy'; valid extraction attacks: ",
        ),
        ("arch: mlp, arch_kwargs: {hidden: 128}", "arch: transformer-xl", "unknown architecture 'transformer-xl'"),
        ("data: {name: synthetic,", "data: {name: imagenet-22k,", "unknown data set 'imagenet-22k'"),
    ],
)
def test_unknown_names_list_the_registered_ones(old, new, message, tiny):
    with pytest.raises(GridError) as err:
        tiny.grid(**{old: new})
    assert message in str(err.value)
    if "scheme" in message:
        assert "margin" in str(err.value).split("valid schemes:")[1]


def test_unknown_removal_attack_and_bad_parameters_are_named(tiny):
    with pytest.raises(GridError, match=r"attacks\[0\]: removals\[0\].*unknown removal attack 'lobotomy'"):
        tiny.grid(**{"sweep: {budget: [300, 600]}}": "budget: 300}\n    removals: [lobotomy]"})
    with pytest.raises(GridError, match=r"schemes\[0\].*n_triggers must be >= 1"):
        tiny.grid(**{"n_triggers: 30": "n_triggers: 0"})
    with pytest.raises(GridError, match=r"schemes\[0\].*unknown .*key 'trigers'.*valid keys: n_triggers"):
        tiny.grid(**{"n_triggers: 30": "trigers: 30"})


def test_yaml_words_read_as_values_get_a_quoting_hint(tiny):
    with pytest.raises(GridError, match=r"key None is not a name.*quote such a key \('null': …\)"):
        tiny.grid(**{"n_triggers: 30": "null: 30"})
    with pytest.raises(GridError, match=r"sweep: key True is not a name"):
        tiny.grid(**{"sweep: {budget: [300, 600]}": "sweep: {yes: [1, 2]}"})


def test_broken_yaml_and_bad_values_are_one_line_errors(tmp_path, tiny):
    with pytest.raises(GridError, match=r"not valid YAML at line \d+"):
        parse_grid("name: x\nschemes: [margin\nattacks: []\n", source="x.yaml")
    with pytest.raises(GridError, match="seeds repeat"):
        tiny.grid(**{"seeds: [0, 1]": "seeds: [0, 0]"})
    with pytest.raises(GridError, match="alpha must be a number in"):
        tiny.grid(**{"alpha: 0.01": "alpha: 5"})
    with pytest.raises(GridError, match="missing 'attacks'"):
        parse_grid("name: x\nschemes: [margin]\n")
    with pytest.raises(InvalidArgument, match=r"no such grid file, nor a packaged grid \(.*fmnist-quick"):
        load_grid(tmp_path / "missing.yaml")


def test_every_shipped_grid_loads_or_names_a_scheme_or_attack_that_has_not_landed():
    from copycatch.attacks.extraction import list_extraction_attacks
    from copycatch.attacks.removal import list_removal_attacks
    from copycatch.schemes import list_schemes

    files = sorted(GRIDS.glob("*.yaml"), key=lambda f: f.stem)
    assert [f.stem for f in files] == packaged_grids()
    assert "fmnist-quick" in packaged_grids()
    registered = set(list_schemes()) | set(list_extraction_attacks()) | set(list_removal_attacks())
    for path in files:
        try:
            grid = load_grid(path)
        except GridError as exc:  # only a name that is not registered yet may stop a shipped grid
            message = str(exc)
            assert (
                "unknown scheme" in message
                or "unknown extraction attack" in message
                or "unknown removal attack" in message
            ), message
            missing = message.split("'")[1]
            assert missing not in registered, message
            continue
        assert grid.cells, path
    quick = load_grid("fmnist-quick")  # the grid `make bench` runs must always load, by name
    assert quick.cells and quick.text == (GRIDS / "fmnist-quick.yaml").read_text(encoding="utf-8")


def test_flatten_names_nested_paths():
    flat = flatten({"a": {"b": 1}, "r": [{"n": 2}], "e": [], "x": None})
    assert flat == {"a.b": 1, "r[0].n": 2, "e": "[]", "x": None}


# ---------------------------------------------------------------------------------------------------------------------
# running, store, cache, resume
# ---------------------------------------------------------------------------------------------------------------------


def test_a_run_writes_one_verified_row_per_cell(serial_results):
    out, summary = serial_results
    assert summary.planned == 4 and summary.computed == 4 and summary.failed == 0 and summary.done_before == 0
    with ResultsStore(out, create=False) as store:
        rows = list(store.cells())
        assert store.integrity() == "ok"
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    for row in rows:
        m = row["metrics"]
        assert row["cell_id"] == config_hash(row["config"])
        assert m["extraction_queries"] == row["config"]["extraction"]["params"]["budget"]
        assert 0.0 <= m["suspect_p"] <= 1.0 and 0.0 <= m["innocent_p"] <= 1.0
        assert m["victim_decision"] and m["victim_p"] <= 0.01  # the owner recognises its own API
        assert not m["innocent_decision"] and not m["clean_decision"]  # no false accusation on the controls
        assert m["clean_acc"] > 0.9 and m["victim_acc"] > 0.5 and 0.0 <= m["suspect_fidelity"] <= 1.0
        assert m["peak_rss_mb"] > 10 and m["peak_rss_source"] in ("VmHWM", "ru_maxrss")
        assert {"seconds_clean", "seconds_embed", "seconds_extract", "seconds_verify", "seconds_innocent"} <= set(m)
        assert row["versions"]["copycatch"] and row["versions"]["torch"]
        assert row["evidence"]["null_hypothesis"] and row["evidence"]["p_value"] == m["suspect_p"]
        for model in ("suspect", "innocent"):  # the power view: the fixed test on the first k of the 30 triggers
            curve = m[f"{model}_power"]
            assert curve["queries"] == [10, 20, 30] and curve["p"][-1] == pytest.approx(m[f"{model}_p"])
            assert all(floor <= p for p, floor in zip(curve["p"], curve["smallest_p"]))


def test_cells_sharing_a_victim_train_it_once(serial_results):
    out, _ = serial_results
    cache = out / "cache"
    assert len(list((cache / "victim").glob("*.json"))) == 2  # 2 seeds, each victim shared by two budgets
    assert len(list((cache / "clean").glob("*.json"))) == 2
    assert len(list((cache / "surrogate").glob("*.json"))) == 4
    with ResultsStore(out, create=False) as store:
        cached = [r["metrics"]["cached_victim"] for r in store.cells()]
    assert sorted(cached) == [False, False, True, True]


def test_rerun_computes_nothing_and_leaves_rows_untouched(serial_results, tiny):
    out, _ = serial_results
    with ResultsStore(out, create=False) as store:
        before = {r["cell_id"]: (r["finished_at"], r["run_id"]) for r in store.cells()}
    summary = run_grid(tiny.grid(), out, executor=SerialExecutor(threads=1), progress=False, log=lambda line: None)
    assert summary.done_before == 4 and summary.computed == 0 and summary.failed == 0
    with ResultsStore(out, create=False) as store:
        after = {r["cell_id"]: (r["finished_at"], r["run_id"]) for r in store.cells()}
        assert len(store.runs()) >= 2
    assert after == before


def test_removal_chains_and_the_leaked_victim(tmp_path, tiny):
    swept = """  - extraction: {name: soft-label, arch: mlp, arch_kwargs: {hidden: 32}, train: {epochs: 6},
                 sweep: {budget: [300, 600]}}"""
    chains = """  - extraction: {name: soft-label, arch: mlp, budget: 600, train: {epochs: 6}}
    removals: ["prune:rate=0.3", {name: fine-tune, params: {epochs: 1}}]
  - extraction: none
    removals: [{name: prune, params: {rate: 0.5}}]"""
    grid = tiny.grid(**{"seeds: [0, 1]": "seeds: [0]", swept: chains})
    summary = run_grid(grid, tmp_path, executor=SerialExecutor(threads=1), progress=False, log=lambda line: None)
    assert summary.computed == 2, summary.failures
    with ResultsStore(tmp_path, create=False) as store:
        rows = {("leaked" if r["config"]["extraction"] is None else "stolen"): r["metrics"] for r in store.cells()}
    stolen, leaked = rows["stolen"], rows["leaked"]
    assert [s["name"] for s in stolen["removal_steps"]] == ["prune", "fine-tune"]
    assert stolen["removal_steps"][0]["accuracy_before"] == pytest.approx(stolen["surrogate_acc"], abs=1e-6)
    assert stolen["removal_steps"][-1]["accuracy_after"] == pytest.approx(stolen["suspect_acc"], abs=1e-6)
    assert leaked["extraction_queries"] == 0 and "surrogate_p" not in leaked
    assert [s["name"] for s in leaked["removal_steps"]] == ["prune"]
    assert leaked["suspect_decision"]  # half the weights of the leaked victim pruned: the key still speaks
    assert leaked["removal_steps"][0]["accuracy_before"] == pytest.approx(leaked["victim_acc"], abs=1e-6)


def test_removals_train_on_the_apis_answers_with_removal_labels_oracle(tmp_path, tiny, monkeypatch):
    import copycatch.bench.cell as cell_module

    seen = {}

    def recording_chain(model, attacks, data, **kwargs):
        seen[len(seen)] = data.y
        return real_chain(model, attacks, data, **kwargs)

    real_chain = cell_module.run_chain
    monkeypatch.setattr(cell_module, "run_chain", recording_chain)
    chain = """  - extraction: {name: soft-label, arch: mlp, budget: 300, train: {epochs: 2}}
    removals: [{name: fine-tune, params: {epochs: 1}}]"""
    swept = """  - extraction: {name: soft-label, arch: mlp, arch_kwargs: {hidden: 32}, train: {epochs: 6},
                 sweep: {budget: [300, 600]}}"""
    default = tiny.grid(**{"seeds: [0, 1]": "seeds: [0]", swept: chain})
    oracle = tiny.grid(**{"seeds: [0, 1]": "seeds: [0]", swept: chain + "\n    removal_labels: oracle"})
    assert "removal_labels" not in default.cells[0].config  # the default keeps the ids of older cells
    assert oracle.cells[0].config["removal_labels"] == "oracle"
    with pytest.raises(GridError, match="removal_labels must be one of truth, oracle"):
        tiny.grid(**{swept: chain + "\n    removal_labels: owner"})
    for grid in (default, oracle):
        summary = run_grid(grid, tmp_path, executor=SerialExecutor(threads=1), progress=False, log=lambda line: None)
        assert summary.computed == 1, summary.failures
    truth, answers = seen[0], seen[1]
    assert truth.dtype == torch.int64  # the thief's true labels
    assert answers.dtype == torch.float32 and answers.shape == (len(truth), 4)  # the API's probabilities
    assert torch.allclose(answers.sum(1), torch.ones(len(truth)), atol=1e-4)


def test_store_never_replaces_a_finished_cell_and_refuses_foreign_files(tmp_path):
    with ResultsStore(tmp_path) as store:
        store.write_cell({"cell_id": "c1", "status": "ok", "config": {"a": 1}, "metrics": {"x": 1}})
        store.write_cell({"cell_id": "c1", "status": "failed", "config": {"a": 1}, "error": "boom"})
        store.write_cell({"cell_id": "c2", "status": "failed", "config": {"a": 2}, "error": "boom"})
        store.write_cell({"cell_id": "c2", "status": "ok", "config": {"a": 2}, "metrics": {"x": 2}})
        assert {r["cell_id"]: r["metrics"] for r in store.cells()} == {"c1": {"x": 1}, "c2": {"x": 2}}
    foreign = tmp_path / "other" / "results.sqlite"
    foreign.parent.mkdir()
    foreign.write_text("not a database at all, just text that happens to be long enough to look like a header\n" * 20)
    with pytest.raises(CorruptFile, match="not a copycatch results store"):
        ResultsStore(foreign.parent)
    with pytest.raises(InvalidArgument, match="no results store"):
        ResultsStore(tmp_path / "nowhere", create=False)


def test_a_failing_cell_is_recorded_then_retried(tmp_path, tiny):
    # mnist-5k images are 28×28, the synthetic victim takes 8×8: the cell fails at run time, the grid goes on
    grid = tiny.grid(
        **{"sweep: {budget: [300, 600]}}": "queries: mnist-5k, budget: 300}", "seeds: [0, 1]": "seeds: [0]"}
    )
    summary = run_grid(grid, tmp_path, executor=SerialExecutor(threads=1), progress=False, log=lambda line: None)
    assert summary.failed == 1 and summary.computed == 0 and "shaped" in summary.failures[0][1]
    with ResultsStore(tmp_path, create=False) as store:
        (row,) = store.cells(status="failed")
    assert "InvalidArgument" in row["error"] and row["metrics"] is None
    again = run_grid(grid, tmp_path, executor=SerialExecutor(threads=1), progress=False, log=lambda line: None)
    assert again.failed == 1 and again.done_before == 0
    skipped = run_grid(
        grid, tmp_path, executor=SerialExecutor(threads=1), retry_failed=False, progress=False, log=lambda line: None
    )
    assert skipped.failed == 0 and skipped.computed == 0


def _bench_until_first_row(tiny, tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    """Start a real `copycatch bench` on the tiny grid in its own process group; return once a cell is stored."""
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(tiny.GRID)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COPYCATCH_PROGRESS": "0"}
    # A shell that starts the suite in the background (`make test &`, nohup, some CI runners) leaves SIGINT ignored,
    # and a child inherits that, so Ctrl-C would mean nothing to it: give the bench process the default disposition.
    proc = subprocess.Popen(
        [sys.executable, "-m", "copycatch.cli.main", "bench", str(grid_file), "-o", str(out), "-q", *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    store_file = out / "results.sqlite"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if store_file.exists():
            try:
                with sqlite3.connect(store_file) as conn:
                    if conn.execute("SELECT COUNT(*) FROM cells WHERE status='ok'").fetchone()[0]:
                        return proc, grid_file, out
            except sqlite3.OperationalError:  # tables not created yet
                pass
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    pytest.fail("no cell finished in time: " + proc.stderr.read().decode()[-2000:])


def _resume_and_check(grid_file: Path, out: Path) -> None:
    with ResultsStore(out, create=False) as store:
        assert store.integrity() == "ok"
        finished = {r["cell_id"]: (r["finished_at"], r["run_id"]) for r in store.cells()}
        assert store.count("failed") == 0  # the cells in flight left nothing behind
    assert 0 < len(finished) < 4, "the run must be stopped part-way for this test to mean anything"
    summary = run_grid(
        load_grid(grid_file), out, executor=SerialExecutor(threads=1), progress=False, log=lambda line: None
    )
    assert summary.done_before == len(finished) and summary.computed == 4 - len(finished) and summary.failed == 0
    with ResultsStore(out, create=False) as store:
        rows = {r["cell_id"]: (r["finished_at"], r["run_id"]) for r in store.cells()}
    assert len(rows) == 4 and all(rows[cid] == finished[cid] for cid in finished)  # finished cells untouched


def _wait_until_the_group_is_gone(pgid: int) -> None:
    """The whole process group, workers included, goes away within 10 s (zombies are reaped)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, "worker processes outlived the stopped run"
        time.sleep(0.1)


def test_killed_run_resumes_without_recomputing_finished_cells(tmp_path, tiny):
    """kill -9 a real `copycatch bench` mid-run: the store stays sound and the re-run does only what is left."""
    proc, grid_file, out = _bench_until_first_row(tiny, tmp_path, "--executor", "serial")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    _resume_and_check(grid_file, out)


def test_interrupted_pool_run_stops_its_workers_and_resumes(tmp_path, tiny):
    """Ctrl-C on a pooled run: exit 130 promptly, no worker left running, finished cells kept."""
    proc, grid_file, out = _bench_until_first_row(tiny, tmp_path, "--jobs", "2")
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, proc.stderr.read().decode()[-2000:]
    assert "run the same command to resume" in proc.stderr.read().decode()
    _wait_until_the_group_is_gone(proc.pid)
    _resume_and_check(grid_file, out)


def test_sigterm_to_the_bench_process_alone_stops_its_workers_too(tmp_path, tiny):
    """`kill PID` (SIGTERM to the parent only, as `timeout` or a scheduler sends it): the run stops like Ctrl-C,
    exits 143, and takes its spawned workers with it instead of leaving them computing."""
    proc, grid_file, out = _bench_until_first_row(tiny, tmp_path, "--jobs", "2")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM
        _wait_until_the_group_is_gone(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left (workers hold the stderr pipe open)
    assert "run the same command to resume" in proc.stderr.read().decode()
    _resume_and_check(grid_file, out)


def test_local_pool_runs_the_same_cells_as_serial(serial_results, tmp_path, tiny):
    serial_out, _ = serial_results
    summary = run_grid(
        tiny.grid(), tmp_path, executor=LocalPoolExecutor(jobs=2, threads=1), progress=False, log=lambda line: None
    )
    assert summary.computed == 4 and summary.failed == 0
    with ResultsStore(serial_out, create=False) as a, ResultsStore(tmp_path, create=False) as b:
        serial = {r["cell_id"]: r["metrics"] for r in a.cells()}
        pooled = {r["cell_id"]: r["metrics"] for r in b.cells()}
        workers = {r["worker"] for r in b.cells()}
    assert serial.keys() == pooled.keys()
    assert len(workers) >= 1 and all(str(os.getpid()) not in w for w in workers)  # ran in other processes
    for cid in serial:
        for key in ("extraction_queries", "victim_decision", "innocent_decision"):
            assert serial[cid][key] == pooled[cid][key]
        assert abs(serial[cid]["clean_acc"] - pooled[cid]["clean_acc"]) < 0.05


def test_ray_executor_without_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InvalidArgument, match=r"pip install 'copycatch\[ray\]'"):
        create_executor("ray")
    with pytest.raises(InvalidArgument, match="--address is for --executor ray"):
        create_executor("local", address="ray://head:10001")


# ---------------------------------------------------------------------------------------------------------------------
# report and CLI
# ---------------------------------------------------------------------------------------------------------------------


def test_report_has_mean_std_tables_and_plots(serial_results, tmp_path):
    out, _ = serial_results
    info = make_report(out, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| scheme | budget | seeds |" in md and " ± " in md
    assert "| margin | 300 | 2 |" in md and "| margin | 600 | 2 |" in md
    assert "innocent accused" in md and "/2 |" in md  # decisions are counted over the 2 seeds
    assert "4 of 4 cells finished" in md
    assert (tmp_path / "report.html").read_text().count("<tr>") == 3  # header + two budgets
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["tiny-main-power.png", "tiny-main-tradeoff.png", "tiny-main-vs-budget.png"]
    assert all((tmp_path / p).stat().st_size > 5000 for p in pngs)
    lines = (tmp_path / "cells.csv").read_text().strip().splitlines()
    assert len(lines) == 5 and "config.extraction.params.budget" in lines[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    budgets = sorted(g["labels"]["extraction.params.budget"] for g in summary[0]["groups"])
    assert budgets == [300, 600] and len(info["files"]) == 7
    power = summary[0]["groups"][0]["power"]  # the power view's data: p on the first k key queries, per seed
    assert set(power) == {"suspect", "innocent"} and sorted(power["suspect"], key=int) == ["10", "20", "30"]
    assert all(len(ps) == 2 for ps in power["suspect"].values())


def test_cli_bench_dry_run_bench_and_report(tmp_path, capsys, tiny):
    grid_file = tmp_path / "tiny.yaml"
    grid_file.write_text(tiny.GRID.replace("seeds: [0, 1]", "seeds: [0]"))
    out, rep = tmp_path / "out", tmp_path / "rep"
    assert main(["bench", str(grid_file), "-o", str(out), "--dry-run"]) == 0
    assert "2 cells in 1 experiment(s), 0 already finished" in capsys.readouterr().out
    assert main(["bench", str(grid_file), "--dry-run", "--max-train", "500", "--epochs-factor", "0.5"]) == 0
    assert "grid tiny-n500-e0.5: 2 cells" in capsys.readouterr().out
    assert main(["bench", str(grid_file), "-o", str(out), "--executor", "serial", "-q", "--limit", "1"]) == 0
    assert "1 cells left (--limit)" in capsys.readouterr().out
    assert main(["bench", str(grid_file), "-o", str(out), "--executor", "serial", "-q", "--report", str(rep)]) == 0
    text = capsys.readouterr().out
    assert "1 finished before, 1 computed now, 0 failed" in text and (rep / "report.md").is_file()
    assert main(["report", str(out / "results.sqlite"), "-o", str(tmp_path / "rep2"), "--no-plots"]) == 0
    assert not list((tmp_path / "rep2").glob("*.png"))


def test_cli_errors_are_one_line(tmp_path, capsys, tiny):
    bad = tmp_path / "bad.yaml"
    bad.write_text(tiny.GRID.replace("{name: soft-label,", "{name: soft-label, budgt: 3,"))
    assert main(["bench", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("copycatch: error: ") and err.count("\n") == 1 and "unknown key 'budgt'" in err
    assert main(["report", str(tmp_path / "none")]) == 2
    assert "no results store" in capsys.readouterr().err


@pytest.mark.parametrize("verb", ["bench", "report"])
def test_bench_verbs_have_help(capsys, verb):
    with pytest.raises(SystemExit) as exit_:
        main([verb, "--help"])
    assert exit_.value.code == 0 and f"usage: copycatch {verb}" in capsys.readouterr().out
