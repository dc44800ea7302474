"""``benchmarks/device_check.py`` on the CPU at ``--quick`` sizes, so that the GPU check cannot rot:
its table's sections and rows, correctness rows passing, CUDA-only rows skipped with a reason, and
a broken, overrunning or terminated run still reporting every row."""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "device_check.py"
PRECISIONS = ("fp32", "tf32", "bf16", "bf16+compile")
QUICK_BATCHES = (2, 4)
# one torch thread, as the script's --quick sets for itself: on a busy 2-core machine a second
# OpenMP thread makes these tiny steps 10x slower
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def load_device_check():
    """The script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows_by_name(table, section):
    return {r["name"]: r for r in table["rows"] if r["section"] == section}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """(completed process, JSON table) of the CPU --quick run: 30-50 s on 2 cores."""
    out = tmp_path_factory.mktemp("device_check") / "table.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--json", str(out)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert out.exists(), proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_quick_cpu_run_succeeds_and_prints_one_table(quick_run):
    proc, table = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert table["ok"] is True
    header = table["header"]
    assert header["torch"] and header["device"].startswith("cpu: ")
    assert {"CUDA", "cuDNN", "TF32 at start", "sizes", "budget"} <= set(header)
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines if line.startswith("section")] == [["section", "check"]]
    for key in ("torch", "device", "CUDA", "cuDNN", "TF32 at start"):
        assert any(line.startswith(f"{key}: ") for line in lines), key
    # every row is on the printed table with its result
    for row in table["rows"]:
        assert any(row["name"] in line and row["status"] in line for line in lines), row["name"]
        assert row["status"] in ("pass", "fail", "ok", "skipped", "error"), row
    # --quick really is quick (30-50 s on a busy 2-core machine): a full-size model would take many minutes
    assert table["elapsed_s"] < 180


@pytest.mark.slow
def test_quick_run_has_every_section_and_row(quick_run):
    _, table = quick_run
    assert [r["section"] for r in table["rows"]] == sorted(
        (r["section"] for r in table["rows"]), key=["correctness", "train", "eval", "data", "goals"].index)
    for mode in ("train", "eval"):
        names = list(rows_by_name(table, mode))
        assert names == [f"{p} b{b}" for p in PRECISIONS for b in QUICK_BATCHES]
    assert len(rows_by_name(table, "data")) >= 1
    goals = list(rows_by_name(table, "goals"))
    assert goals == [f"{m} >= 3x baseline (b{b})" for m in ("train", "eval") for b in QUICK_BATCHES] + [
        "data loading >= 2x training consumption"]


@pytest.mark.slow
def test_correctness_rows_pass_on_the_cpu(quick_run):
    _, table = quick_run
    rows = rows_by_name(table, "correctness")
    for name in ("ntu", "coco"):
        fp32 = rows[f"fp32 logits vs PYSKL fixture ({name})"]
        assert fp32["status"] == "pass" and fp32["value"] <= 1e-4, fp32
        bf16 = rows[f"bf16 autocast logits vs PYSKL fixture ({name})"]
        assert bf16["status"] == "pass" and 0 < bf16["value"] < 0.2, bf16  # bf16 really ran: not exact
    for name in ("fp32 backward: every gradient finite", "bf16 backward: every gradient finite"):
        assert rows[name]["status"] == "pass" and rows[name]["value"] == 0, rows[name]
    for name in ("MSGCN per-sequence (CPU) vs batched (GPU) order", "baseline vs msg3d logits, same weights"):
        assert rows[name]["status"] == "pass" and rows[name]["value"] <= 1e-4, rows[name]
    learning = rows["50 training steps lower the loss (fp32)"]
    assert learning["status"] == "pass" and learning["value"] < 0.5 * math.log(4), learning


@pytest.mark.slow
def test_cuda_only_rows_are_skipped_with_a_reason(quick_run):
    _, table = quick_run
    correctness = rows_by_name(table, "correctness")
    for name in ("ntu", "coco"):
        row = correctness[f"tf32 logits vs PYSKL fixture ({name})"]
        assert row["status"] == "skipped" and "CUDA" in row["note"], row
    assert correctness["logits on cpu vs on CPU (ntu fixture)"]["status"] == "skipped"
    for mode in ("train", "eval"):
        for batch in QUICK_BATCHES:
            rows = rows_by_name(table, mode)
            tf32, compiled = rows[f"tf32 b{batch}"], rows[f"bf16+compile b{batch}"]
            assert tf32["status"] == "skipped" and "CUDA" in tf32["note"], tf32
            assert compiled["status"] == "skipped" and "--quick" in compiled["note"], compiled
    # peak GPU memory is not measured off CUDA
    assert all(r["memory_mib"] is None and r["reference_memory_mib"] is None for r in table["rows"])
    for line in quick_run[0].stdout.splitlines():
        if line.startswith(("train ", "eval ")) and "tf32" in line:
            assert "skipped: TF32 is a CUDA" in line


@pytest.mark.slow
def test_throughput_data_and_goal_rows_hold_measurements(quick_run):
    _, table = quick_run
    for mode in ("train", "eval"):
        for precision in ("fp32", "bf16"):
            for batch in QUICK_BATCHES:
                row = rows_by_name(table, mode)[f"{precision} b{batch}"]
                assert row["status"] == "ok" and row["value"] > 0 and row["reference"] > 0, row
                assert row["ratio"] == pytest.approx(row["value"] / row["reference"])
                assert (row["mode"], row["precision"], row["batch"]) == (mode, precision, batch)
    fastest = max(r["value"] for r in rows_by_name(table, "train").values() if r["value"])
    for row in rows_by_name(table, "data").values():
        assert row["status"] == "ok" and row["value"] > 0 and row["reference"] == fastest, row
    for row in rows_by_name(table, "goals").values():
        # measured, but not judged at --quick sizes
        assert row["status"] == "skipped" and row["note"].startswith("--quick sizes"), row
        assert row["value"] > 0 and row["ratio"] == pytest.approx(row["value"] / row["reference"])


@pytest.mark.slow
def test_a_broken_row_becomes_an_error_row_and_the_table_is_still_written(tmp_path, monkeypatch, capsys):
    dc = load_device_check()

    def missing_fixture(name):
        raise FileNotFoundError(f"no fixture {name} here")

    def broken_store(path, samples):
        raise RuntimeError("injected store failure")

    monkeypatch.setattr(dc, "load_fixture", missing_fixture)
    monkeypatch.setattr(dc, "build_store", broken_store)
    out = tmp_path / "table.json"
    code = dc.main(["--device", "cpu", "--quick", "--sections", "correctness", "data", "--json", str(out)])
    assert code == 1
    table = json.loads(out.read_text())
    assert table["ok"] is False
    correctness = rows_by_name(table, "correctness")
    for name in ("fp32 logits vs PYSKL fixture (ntu)", "bf16 autocast logits vs PYSKL fixture (coco)",
                 "fp32 backward: every gradient finite", "MSGCN per-sequence (CPU) vs batched (GPU) order"):
        assert correctness[name]["status"] == "error", correctness[name]
        assert correctness[name]["note"].startswith("FileNotFoundError: no fixture"), correctness[name]
    # the rows that do not need the fixture still ran, after the failures
    assert correctness["baseline vs msg3d logits, same weights"]["status"] == "pass"
    assert correctness["50 training steps lower the loss (fp32)"]["status"] == "pass"
    for row in rows_by_name(table, "data").values():
        assert row["status"] == "error" and row["note"] == "RuntimeError: injected store failure", row
    assert not rows_by_name(table, "train")  # not asked for
    printed = capsys.readouterr()
    assert "error: FileNotFoundError: no fixture ntu here" in printed.out
    assert "error: RuntimeError: injected store failure" in printed.out
    assert "Traceback" in printed.err  # the whole story goes to stderr


def test_a_spent_budget_skips_every_row_and_still_prints_the_table(tmp_path, capsys):
    dc = load_device_check()
    out = tmp_path / "table.json"
    assert dc.main(["--device", "cpu", "--quick", "--budget-s", "0", "--json", str(out)]) == 0
    table = json.loads(out.read_text())
    assert table["rows"] and all(r["status"] == "skipped" for r in table["rows"])
    budget_rows = [r for r in table["rows"] if "time budget" in r["note"]]
    assert {r["section"] for r in budget_rows} == {"correctness", "train", "eval", "data"}
    assert "fp32 logits vs PYSKL fixture (ntu)" in [r["name"] for r in budget_rows]
    assert "skipped: time budget (--budget-s 0) spent" in capsys.readouterr().out


def test_a_row_is_cut_off_at_its_limit_or_at_the_budget(monkeypatch):
    dc = load_device_check()
    monkeypatch.setitem(dc.ROW_CAP_S, "check", 0.2)
    start = time.monotonic()
    assert dc.attempt(dc.Budget(100), "check", lambda: time.sleep(5)) == (None, ("error", "ran past its 0.2 s limit"))
    assert time.monotonic() - start < 2
    monkeypatch.setitem(dc.ROW_CAP_S, "check", 100)
    status, reason = dc.attempt(dc.Budget(dc.RESERVE_S + 1.5), "check", lambda: time.sleep(5))[1]
    assert status == "skipped" and "ran out during this row" in reason
    assert dc.attempt(dc.Budget(100), "check", lambda: 7) == (7, None)


@pytest.mark.slow
def test_sigterm_ends_the_run_with_the_table(tmp_path):
    out = tmp_path / "table.json"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--sections", "correctness",
                             "--json", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # the first finished row writes the JSON
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    table = json.loads(out.read_text())
    statuses = [r["status"] for r in table["rows"]]
    assert "pass" in statuses and "pending" not in statuses
    stopped = [i for i, r in enumerate(table["rows"]) if r["note"] == "the run stopped before this row finished"]
    # the row in progress and the rest of the plan; the learning run comes after the first ~3 s of rows
    assert "50 training steps lower the loss (fp32)" in [table["rows"][i]["name"] for i in stopped]
    assert all(r["status"] == "skipped" for r in table["rows"][stopped[0]:])
    assert "section" in stdout and "the run stopped before this row finished" in stdout
