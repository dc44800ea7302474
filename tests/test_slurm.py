"""The shipped Slurm profile (workflow/profiles/slurm) on a real single-node Slurm: munged,
slurmctld and slurmd started here (tests/slurm_cluster.py) with two fake a100 GPUs, and the demo
DAG submitted through snakemake-executor-plugin-slurm, each job with sbatch. Needs root, Debian's
slurm-wlm and munge, and the `slurm` extra (`.ci/run` installs all three); skips without them."""

import collections
import copy
import importlib.util
import json
import re
import subprocess
import sys

import pytest
import yaml

from slurm_cluster import PARTITION, SlurmCluster, unavailable_reason
from test_workflow import REPO, RUN_CONFIG, copy_repo, job_stats, run_env

PROFILE = "workflow/profiles/slurm"
GPU_TYPE = "a100"
TARGET = "results/model_zoo.md"


@pytest.fixture(scope="module")
def slurm():
    reason = unavailable_reason()
    if reason is None and importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        reason = 'snakemake-executor-plugin-slurm is not installed: python -m pip install -e ".[slurm]"'
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(gpus=2, gpu_type=GPU_TYPE)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.mark.slow
def test_the_cluster_grants_its_fake_gpus(slurm, tmp_path):
    """A job given two GPUs finds them in CUDA_VISIBLE_DEVICES, set by Slurm from the GRES grant
    (what `msg3d launch` reads); a third is more than the node has."""
    out = tmp_path / "env.txt"
    job = slurm.command("sbatch", "--parsable", f"--gpus={GPU_TYPE}:2", f"--output={out}", "--wrap", "env").stdout
    record = slurm.wait_for_job(job.strip())
    assert record["JobState"] == "COMPLETED", record
    env = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    refused = slurm.command("sbatch", f"--gpus={GPU_TYPE}:3", "--wrap", "true", check=False)
    assert refused.returncode != 0 and "Requested node configuration is not available" in refused.stderr


def slurm_run_config(path):
    """The end-to-end test's tiny demo, smaller still: one dataset, one split, the j and b streams,
    one fusion, and `device: null` (the GPUs the profile asks for; CPU processes here)."""
    config = yaml.safe_load((REPO / "tests" / "e2e" / "config" / "config.yaml").read_text())
    config["datasets"] = {"demo": config["datasets"]["demo"]}
    config.update(modalities=["j", "b"], fusion={"2s": {"j": 1, "b": 1}}, ensemble={},
                  fusion_search={"enabled": False}, device=None)
    path.write_text(yaml.safe_dump(config))


# memory of every job here: the demo's jobs need little, and the node has a few GB
NODE_MEM_MB = 2000


def node_overlay(profile, cpus, rules):
    """Command-line options that fit the shipped profile to the test node (``cpus`` CPUs, a few GB
    of memory, two fake GPUs, no accounting database) for a DAG of ``rules``. A command-line option
    replaces the profile's entry of the same name whole, so each entry changed here is the shipped
    one restated with only these values changed; every other value (runtimes, default memory,
    jobs, latency-wait, ...) is the profile's."""
    resources = copy.deepcopy(profile["set-resources"])
    resources["train"].update(gpu=2, gpu_model=GPU_TYPE, cpus_per_gpu=1)
    resources["test"].update(cpus_per_gpu=1)
    for rule in rules:  # over a rule's own mem_mb too
        resources.setdefault(rule, {})["mem_mb"] = NODE_MEM_MB
    threads = {rule: min(n, cpus) for rule, n in profile["set-threads"].items()}
    threads.update(train=1, test=1)
    return [
        "--set-resources", *(f"{rule}:{k}={v}" for rule, values in resources.items() for k, v in values.items()),
        "--set-threads", *(f"{rule}={n}" for rule, n in threads.items()),
        # no accounting here, so no sacct; the plugin's first status check comes after 2 s, not 40
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "2",
    ]


def slurm_time(minutes):
    """A time limit in minutes as scontrol shows it: [D-]HH:MM:SS."""
    days, minutes = divmod(minutes, 1440)
    return f"{days}-" * bool(days) + f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def gpu_request(job):
    """A job's GPU request as `gpu[:type]:count` (scontrol's TresPerJob: `gres:gpu:a100:2` in Slurm
    22.05, `gres/gpu:a100=2` in later ones), or None."""
    tres = job.get("TresPerJob")
    return tres and re.sub(r"^gres[:/]", "", tres).replace("=", ":")


def rule_of(job):
    """The rule of a job the plugin submitted (its sbatch --comment: rule_<name>[_wildcards_...])."""
    return job["Comment"].removeprefix("rule_").split("_wildcards_")[0]


@pytest.mark.slow
def test_shipped_profile_runs_the_demo_through_sbatch(slurm, tmp_path):
    """`snakemake --workflow-profile workflow/profiles/slurm` as shipped, with the node's sizes on
    the command line: every job of the DAG is one Slurm job, with the profile's time limits and GPU
    requests (two a100s for a train job here), a train job runs DDP on the GPUs Slurm granted, and
    a second run has nothing to do."""
    root = copy_repo(tmp_path / "repo")
    slurm_run_config(root / RUN_CONFIG)
    profile = yaml.safe_load((REPO / PROFILE / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    # no placeholder account or partition: the plugin would refuse an account that is not yours,
    # sbatch a partition that does not exist; unset, sbatch takes the defaults
    assert not {"slurm_account", "slurm_partition"} & set(profile["default-resources"])
    env = slurm.client_env(dict(run_env(root), MSG3D_GPU_LOCK_DIR=str(tmp_path / "gpu-locks")))
    base = [sys.executable, "-m", "snakemake", "--workflow-profile", PROFILE, f"--configfile={RUN_CONFIG}"]
    plan = subprocess.run([*base, "-n", "--", TARGET], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    planned = job_stats(plan.stdout)
    assert planned["train"] == planned["test"] == 2, planned
    # --verbose: Snakemake prints each sbatch command line
    argv = [*base, *node_overlay(profile, int(slurm.node["CPUs"]), planned), "--verbose", "--", TARGET]

    first = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}\n{slurm.logs()}"

    # Slurm's own record of each job (kept MinJobAge s after it ended; no accounting database
    # here): every job of the DAG was one sbatch job, completed, in the default partition
    jobs = [j for j in slurm.jobs() if j.get("Comment", "").startswith("rule_")]
    assert collections.Counter(map(rule_of, jobs)) == planned
    assert {j["JobState"] for j in jobs} == {"COMPLETED"} and {j["Partition"] for j in jobs} == {PARTITION}
    # the GPU requests: two of the a100s per train job, one GPU per test job, none for the others;
    # the time limits the shipped profile states (minutes, shown as [D-]HH:MM:SS)
    requests = {(rule_of(j), gpu_request(j)) for j in jobs}
    assert requests == {("train", f"gpu:{GPU_TYPE}:2"), ("test", "gpu:1"),
                        *((rule, None) for rule in planned if rule not in ("train", "test"))}
    for j in jobs:
        minutes = profile["set-resources"].get(rule_of(j), {}).get("runtime", profile["default-resources"]["runtime"])
        assert j["TimeLimit"] == slurm_time(minutes), j
    assert {j["NumCPUs"] for j in jobs if rule_of(j) == "train"} == {"2"}  # cpus_per_gpu x gpus
    # and all of a train job's GPUs on one node, as the profile asks (one node here: its sbatch line)
    calls = re.findall(r"sbatch call: (sbatch .*)", first.stdout + first.stderr)
    train = [call for call in calls if " --comment rule_train_wildcards_" in call]
    assert len(calls) == len(jobs) and len(train) == 2, calls
    assert all(f" --nodes={profile['set-resources']['train']['nodes']} " in call for call in train), train

    # each train job ran DDP with one process per granted GPU
    for modality in ("j", "b"):
        config = json.loads((root / "results" / "train" / "demo" / "xsub" / modality / "config.json").read_text())
        assert config["runtime"]["world_size"] == 2, config["runtime"]
    assert "| demo | xsub |" in (root / TARGET).read_text()

    second = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    assert "Nothing to be done" in second.stdout + second.stderr
    assert len([j for j in slurm.jobs() if j.get("Comment", "").startswith("rule_")]) == len(jobs)
