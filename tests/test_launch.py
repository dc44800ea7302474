"""``msg3d launch``: GPU claiming with a faked device count (no GPU needed) and the DDP launch line."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from msg3d.launch import command_line, lock_dir, try_claim, release, visible_gpus

pytest_plugins = ["test_engine_common"]  # fixtures: tiny_store
REPO = Path(__file__).resolve().parents[1]

# A job as `msg3d launch` runs it: claim COUNT of GPUS (waiting), record when, hold, release by exiting.
JOB = """
import json, sys, time
from msg3d.launch import claim
count, gpus, directory, hold, record = int(sys.argv[1]), sys.argv[2].split(","), sys.argv[3], float(sys.argv[4]), sys.argv[5]
held = claim(count, gpus, directory, poll_seconds=0.05)
start = time.time()
print("claimed", ",".join(held), flush=True)
time.sleep(hold)
with open(record, "a") as f:
    f.write(json.dumps({"gpus": list(held), "start": start, "end": time.time()}) + "\\n")
"""


def start_job(count, gpus, directory, hold, record):
    return subprocess.Popen([sys.executable, "-c", JOB, str(count), ",".join(gpus), str(directory), str(hold),
                             str(record)], cwd=REPO, stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("value, expected", [
    ("0,1,2", ["0", "1", "2"]), (" 3 , 5 ", ["3", "5"]), ("", []), ("-1", []), ("NoDevFiles", []),
    ("GPU-8c1e,GPU-77aa", ["GPU-8c1e", "GPU-77aa"]),
])
def test_visible_gpus_follow_cuda_visible_devices(value, expected):
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": value}, query=lambda: pytest.fail("nvidia-smi asked")) == expected


def test_visible_gpus_without_the_variable_ask_nvidia_smi():
    assert visible_gpus({}, query=lambda: ["0", "1"]) == ["0", "1"]


def test_lock_dir_is_per_slurm_allocation(tmp_path):
    base = {"MSG3D_GPU_LOCK_DIR": str(tmp_path)}
    assert lock_dir(base) == tmp_path / "local"
    assert lock_dir({**base, "SLURM_JOB_ID": "42"}) == tmp_path / "slurm-42"
    assert lock_dir({}).name == "local" and str(os.getuid()) in lock_dir({}).parent.name


def test_claims_are_all_or_nothing(tmp_path):
    first = try_claim(2, ["0", "1", "2"], tmp_path)
    assert sorted(first) == ["0", "1"]
    assert try_claim(2, ["0", "1", "2"], tmp_path) is None  # only GPU 2 is free: nothing is held
    third = try_claim(1, ["0", "1", "2"], tmp_path)
    assert list(third) == ["2"]
    release(first)
    assert sorted(try_claim(2, ["0", "1", "2"], tmp_path)) == ["0", "1"]
    with pytest.raises(ValueError, match="3 GPU.s. requested but only 2 visible"):
        try_claim(3, ["0", "1"], tmp_path)


def test_n_jobs_on_k_gpus_never_share_one(tmp_path):
    record = tmp_path / "jobs.jsonl"
    jobs = [start_job(1, ["0", "1"], tmp_path / "locks", 0.4, record) for _ in range(5)]
    jobs.append(start_job(2, ["0", "1"], tmp_path / "locks", 0.4, record))
    for job in jobs:
        assert job.wait(timeout=60) == 0
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(runs) == 6 and sum(len(r["gpus"]) for r in runs) == 7
    for gpu in ("0", "1"):
        spans = sorted((r["start"], r["end"]) for r in runs if gpu in r["gpus"])
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:])), (gpu, spans)
    # two GPUs, five one-GPU jobs: some ran side by side (the claim does not serialise them all)
    singles = sorted((r["start"], r["end"]) for r in runs if len(r["gpus"]) == 1)
    assert any(b[0] < a[1] for a, b in zip(singles, singles[1:]))


def test_a_killed_job_frees_its_gpu(tmp_path):
    job = start_job(1, ["0"], tmp_path, 120, tmp_path / "never.jsonl")
    assert job.stdout.readline().strip() == "claimed 0"
    assert try_claim(1, ["0"], tmp_path) is None
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=30)
    held = try_claim(1, ["0"], tmp_path)
    assert held is not None and list(held) == ["0"]
    assert not (tmp_path / "never.jsonl").exists()


def test_ddp_launch_gets_one_process_per_gpu():
    line = command_line("train", ["--data", "s"], 4)
    assert line[:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "-m"]
    assert line[7:] == ["msg3d", "train", "--data", "s"]
    assert command_line("test", ["--data", "s"], 1) == [sys.executable, "-m", "msg3d", "test", "--data", "s"]
    assert command_line("train", [], 0) == [sys.executable, "-m", "msg3d", "train"]
    with pytest.raises(ValueError, match="msg3d test runs on one GPU"):
        command_line("test", [], 2)


def run_launch(args, env_extra, tmp_path):
    env = {**os.environ, "MSG3D_GPU_LOCK_DIR": str(tmp_path / "locks"), "OMP_NUM_THREADS": "1", **env_extra}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.run([sys.executable, "-m", "msg3d", "launch", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def test_launch_refuses_more_gpus_than_visible_and_unknown_commands(tmp_path):
    proc = run_launch(["--gpus", "3", "train", "--help"], {"CUDA_VISIBLE_DEVICES": "0,1"}, tmp_path)
    assert proc.returncode == 2 and "3 GPU(s) requested but only 2 visible" in proc.stderr
    proc = run_launch(["--gpus", "1", "fly"], {"CUDA_VISIBLE_DEVICES": "0"}, tmp_path)
    assert proc.returncode == 2 and "unknown msg3d command 'fly'" in proc.stderr


def test_launch_sets_cuda_visible_devices_to_the_claimed_gpus(tmp_path):
    # GPU 0 is taken by another job: the launched command sees GPU 1 only
    held = try_claim(1, ["0"], tmp_path / "locks" / "local")
    proc = run_launch(["--gpus", "1", "table", "--help"], {"CUDA_VISIBLE_DEVICES": "0,1"}, tmp_path)
    release(held)
    assert proc.returncode == 0, proc.stderr
    assert "GPU(s) 1 claimed" in proc.stderr and "usage: msg3d table" in proc.stdout


def test_launch_on_a_machine_without_gpus_claims_nothing(tmp_path):
    proc = run_launch(["--gpus", "1", "table", "--help"], {"CUDA_VISIBLE_DEVICES": ""}, tmp_path)
    assert proc.returncode == 0 and "claimed" not in proc.stderr and "usage: msg3d table" in proc.stdout


@pytest.mark.slow
def test_launch_two_fake_gpus_trains_ddp_with_two_ranks(tiny_store, tmp_path):
    out = tmp_path / "run"
    hp = {"epochs": 1, "batch_size": 8, "lr_batch": 8, "clip_len": 16, "num_workers": 0,
          "model": {"base_channels": 8, "num_gcn_scales": 2, "num_g3d_scales": 1}}
    proc = run_launch(["--gpus", "2", "train", "--data", str(tiny_store), "--split", "tiny", "--out", str(out),
                       "--seed", "1", "--hparams-json", json.dumps(hp)], {"CUDA_VISIBLE_DEVICES": "0,1"}, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GPU(s) 0,1 claimed" in proc.stderr and "--nproc-per-node 2" in proc.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["runtime"] == {"device": "cpu", "world_size": 2}
    # DDP's warning about the 1x1 convolutions' gradient strides (same bytes) stays out of the log
    assert "Grad strides do not match" not in proc.stderr
    # the job ended: its GPUs are free again
    assert try_claim(2, ["0", "1"], tmp_path / "locks" / "local") is not None
