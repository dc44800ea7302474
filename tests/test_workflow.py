"""The Snakemake workflow: lint, the DAG the config asks for (exactly the config files given),
honest code digests, and one end-to-end run of the small demo (tests/e2e/config) in a temporary
copy of the repository."""

import argparse
import ast
import dataclasses
import functools
import hashlib
import http.server
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema
import pytest
import yaml

from msg3d.cli import COMMANDS
from msg3d.data.modality import MODALITIES
from msg3d.data.splits import KINETICS_SPLITS, SPLIT_NAMES
from msg3d.engine.hparams import HParams, ModelHParams, hparams_help, resolve_hparams
from msg3d.provenance import code_digest

REPO = Path(__file__).resolve().parents[1]


def run_env(root):
    """Rules call `python -m msg3d`: the venv's python first on PATH, msg3d from ``root``."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = str(root)
    return env


# the config a test runs, in its copy of the repository (copy_repo writes it)
RUN_CONFIG = "config/run.yaml"


def snakemake(root, *args, check=True, configfile=RUN_CONFIG):
    """Run snakemake in ``root`` (a copy of the repository: its own msg3d, workflow and config)
    with the config file ``configfile`` (None: none)."""
    # `--configfile=FILE`: with a space, --configfile would also take the targets that follow
    config = [f"--configfile={configfile}"] if configfile else []
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *config, *args],
        cwd=root, env=run_env(root), capture_output=True, text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_repo(dest, config=REPO / "config" / "demo.yaml"):
    """The parts of the repository a run needs (config/ with its shipped configs), with ``config``
    as RUN_CONFIG."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("msg3d", "workflow", "config"):
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    shutil.copy(REPO / "environment.yml", dest)
    shutil.copy(config, dest / RUN_CONFIG)
    return dest


def job_stats(output):
    """{rule: count} from the "Job stats" table of a dry run (empty when nothing is to be done)."""
    stats = {}
    lines = output.splitlines()
    if "Job stats:" not in lines:
        return stats
    for line in lines[lines.index("Job stats:") + 3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        stats[parts[0]] = int(parts[1])
    stats.pop("total", None)
    return stats


def planned_outputs(output):
    """Every output path of the jobs a dry run would execute."""
    paths = set()
    for line in output.splitlines():
        match = re.match(r"\s+output: (.*)", line)
        if match:
            paths.update(p.strip() for p in match.group(1).split(","))
    return paths


def edit_config(root, update):
    path = root / RUN_CONFIG
    config = yaml.safe_load(path.read_text())
    update(config)
    path.write_text(yaml.safe_dump(config))


def shell_commands(output):
    """The shell commands a `snakemake -n -p` run prints, one per job."""
    return [line.removeprefix("Shell command: ") for line in output.splitlines() if line.startswith("Shell command: ")]


def msg3d_args(command):
    """The arguments msg3d's own parser makes of a rule's `python -m msg3d NAME ...` command (the
    words the shell passes, up to the log redirection); for `msg3d launch --gpus N NAME ...`, those
    of the command it launches, with `gpus` added."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "msg3d"], command
    name, rest = words[3], words[4:words.index(">")]
    if name == "launch":
        launch = argparse.ArgumentParser(prog="msg3d launch")
        importlib.import_module(COMMANDS[name][0]).add_arguments(launch)
        launched = launch.parse_args(rest)
        name, args = msg3d_args(shlex.join(["python", "-m", "msg3d", launched.command, *launched.arguments, ">"]))
        args.gpus = launched.gpus
        return name, args
    parser = argparse.ArgumentParser(prog=f"msg3d {name}")
    importlib.import_module(COMMANDS[name][0]).add_arguments(parser)
    return name, parser.parse_args(rest)


# --------------------------------------------------------------------------- lint and format


@pytest.mark.slow
def test_snakemake_lint_is_clean(tmp_path):
    proc = snakemake(copy_repo(tmp_path / "repo"), "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check_is_clean():
    proc = subprocess.run(
        [sys.executable, "-m", "snakefmt", "--check", "workflow"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- shell quoting

# params already built as several shell words, each quoted (workflow/rules/common.smk)
WORD_LIST_PARAMS = {"params.device", "params.reference", "params.scores", "params.runs",
                    "params.sha256", "params.release"}


def rule_shell_strings():
    """{rule: shell string} of every rule, read from the rule files' text (snakefmt's layout: the
    string literals on the lines under `shell:`, indented deeper)."""
    commands = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        lines = smk.read_text().splitlines()
        rule = None
        for i, line in enumerate(lines):
            if match := re.match(r"(?:rule|checkpoint) (\w+):", line):
                rule = match[1]
            if line.strip() == "shell:":
                indent = len(line) - len(line.lstrip()) + 1
                body = []
                for literal in lines[i + 1:]:
                    if not literal.strip() or len(literal) - len(literal.lstrip()) < indent:
                        break
                    body.append(ast.literal_eval(literal.strip()))
                commands[rule] = "".join(body)
    return commands


def test_every_shell_placeholder_is_quoted():
    """A placeholder without :q splits a path with a space into two words (and runs `$(...)`):
    only the params that are already lists of quoted words may go in as they are."""
    commands = rule_shell_strings()
    assert {"import_pyskl", "convert_ntu", "derive", "train", "test", "fuse", "download_checkpoint"} <= set(commands)
    unquoted = {
        rule: bare
        for rule, command in commands.items()
        if (bare := [p for p in re.findall(r"{([^{}]+)}", command) if not p.endswith(":q")
                     and p not in WORD_LIST_PARAMS])
    }
    assert not unquoted


# file names with shell characters: a comma, both quotes, $, &, ( and a space, or a leading "-"
# (argparse takes a word with a space for a value, so that one has none)
SPACED = """a b,c 'd' "e" $f & (g)"""
DASHED = """-a,b'c'"d"$e&(f)"""


@pytest.mark.slow
def test_hostile_paths_reach_msg3d_as_one_word_each(tmp_path):
    """Dataset paths and checkpoints (relative with a leading "-", absolute with spaces, a URL)
    holding shell characters: each reaches msg3d's parser as exactly the configured path, never as
    an option; import-pyskl gets the dataset's release."""
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
    pickle, raw = f"{DASHED}.pkl", root / SPACED / f"{SPACED} raw"
    (root / pickle).write_bytes(b"")
    raw.mkdir(parents=True)
    local = root / SPACED / f"{SPACED}.pth"
    local.write_bytes(b"")
    (root / f"{DASHED}.pth").write_bytes(b"")
    url = f"https://example.org/{SPACED}/{DASHED}.pth"
    checked = {"url": f"{url}?bm", "sha256": "AB" * 32}
    checkpoints = {"xsub": {"j": f"{DASHED}.pth", "b": str(local), "jm": url, "bm": checked}}

    def hostile(config):
        config["datasets"] = {
            "pkl": {"source": "pyskl", "path": pickle, "ntu": "ntu120", "checkpoints": checkpoints},
            "raw": {"source": "ntu_raw", "path": str(raw), "ntu": "ntu60"},
        }

    edit_config(root, hostile)
    commands = shell_commands(snakemake(root, "-n", "-p", "all").stdout)
    parsed = [msg3d_args(c) for c in commands if c.startswith("python -m msg3d ")]
    imports = [args for name, args in parsed if name == "import-pyskl"]
    assert [(a.annotations, a.dataset) for a in imports] == [(Path(pickle), "ntu120")]
    assert [a.raw_dir for name, a in parsed if name == "convert-ntu"] == [raw]
    tested = {os.path.normpath(a.checkpoint) for name, a in parsed if name == "test" and "/pkl/" in a.data}
    assert tested == {f"{DASHED}.pth", str(local), "resources/checkpoints/pkl/xsub/jm.pth",
                      "resources/checkpoints/pkl/xsub/bm.pth"}
    downloads = sorted((a.url, str(a.out), a.sha256) for name, a in parsed if name == "download")
    assert downloads == [(url, "resources/checkpoints/pkl/xsub/jm.pth", None),
                         (f"{url}?bm", "resources/checkpoints/pkl/xsub/bm.pth", "ab" * 32)]


def schema_errors(config):
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(config)]


@pytest.mark.parametrize("name", ["my data", "a,b", "a'b", 'a"b', "a$b", "a&b", "a(b", "-a", "demo\n", "a/b", "a{b}"])
def test_schema_refuses_dataset_and_scheme_names_that_are_not_plain_words(name):
    """Names are wildcard values and folder names in every path and command."""
    assert schema_errors({"datasets": {name: {"source": "demo"}}})
    assert schema_errors({"datasets": {"demo": {"source": "demo"}}, "fusion": {name: {"j": 1}}})
    assert not schema_errors({"datasets": {"a-b_1": {"source": "demo"}}, "fusion": {"a-b_1": {"j": 1}}})


# --------------------------------------------------------------------------- the schema


def test_schema_enums_are_msg3ds_names():
    """The schema's $defs restate two lists of msg3d (JSON Schema cannot import them): the
    modalities, and the benchmarks: NTU's (the X of the X_train split names), in msg3d's order,
    then Kinetics-400's one, named after the split it tests on."""
    defs = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["$defs"]
    benchmarks = [n.removesuffix("_train") for names in SPLIT_NAMES.values() for n in names if n.endswith("_train")]
    assert defs["modality"]["enum"] == list(MODALITIES)
    assert defs["split"]["enum"] == [*dict.fromkeys(benchmarks), KINETICS_SPLITS[1]]


def test_schema_train_section_has_the_hparams_names_and_types():
    """The schema's train: section keeps HParams' names and types (typos fail at parse time); the
    defaults, bounds and meanings stay in HParams alone."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["train"]["$ref"] == "#/$defs/hparams"
    assert schema["$defs"]["dataset"]["properties"]["train"]["$ref"] == "#/$defs/hparams"
    train = schema["$defs"]["hparams"]
    json_type = {"int": "integer", "float": "number", "bool": "boolean", "str": "string", "tuple": "array"}

    def types(cls):
        return {f.name: json_type[f.type.__name__] for f in dataclasses.fields(cls) if f.name != "model"}

    assert {k: v["type"] for k, v in train["properties"].items() if k != "model"} == types(HParams)
    model = train["properties"]["model"]["properties"]
    assert {k: v["type"] for k, v in model.items()} == types(ModelHParams)
    assert not [k for k, v in {**train["properties"], **model}.items() if set(v) - {"type", "properties",
                                                                                  "additionalProperties", "default",
                                                                                  "items"}]


def test_config_readme_lists_the_hparams_table_of_msg3d_train_help():
    assert f"```\n{hparams_help()}\n```" in (REPO / "config" / "README.md").read_text()


def test_readme_quick_start_names_the_demo_config_and_ci_runs_its_test_command():
    """Quick start: the CPU-wheel tip before the install it changes, then two commands: the demo,
    its config named (no config is implied), and the tests, which .ci/run runs word for word."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Quick start\n")
    quick = readme[start:readme.index("\n## ", start)]
    commands = [line for block in re.findall(r"```bash\n(.*?)```", quick, re.S)
                for line in block.splitlines() if line and not line.startswith("#")]
    assert commands[0] == "python -m pip install -e . && snakemake --cores 8 --configfile config/demo.yaml"
    assert len(commands) == 2 and commands[1] in (REPO / ".ci" / "run").read_text().splitlines()
    assert quick.index("--index-url https://download.pytorch.org/whl/cpu") < quick.index("```bash")


# --------------------------------------------------------------------------- the DAG


@pytest.mark.slow
def test_demo_config_runs_the_whole_demo_pipeline(tmp_path):
    root = copy_repo(tmp_path / "repo")
    stats = job_stats(snakemake(root, "-n", "all", configfile="config/demo.yaml").stdout)
    datasets = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())["datasets"]
    # the NTU demo and the Kinetics-format demo (REFERENCE §14), each from its own generator
    assert datasets["demo_kinetics"]["annotation"] == "openpose" and datasets["demo_kinetics"]["reference"]
    splits = sum(len(ds["splits"]) for ds in datasets.values())
    assert stats["make_demo"] == 1 and stats["convert_ntu"] == 1
    assert stats["make_kinetics_demo"] == 1 and stats["convert_kinetics"] == 1 and stats["derive"] == 4 * 2
    assert stats["prepare_annotations"] == 2  # the pickle read once per dataset, not once per modality
    assert stats["train"] == stats["test"] == 4 * splits
    assert stats["fuse"] == 2 * splits and stats["fuse_search"] == stats["fuse_ensemble"] == splits
    assert stats["model_zoo_table"] == 1 and stats["plot_per_class"] == splits and stats["plot_curves"] == splits
    assert "import_pyskl" not in stats and "download_checkpoint" not in stats


def make_inputs(root, config_file):
    """Empty stand-ins for the data a config names (a pickle, a raw folder), so that a dry run
    plans its DAG; returns the config's datasets."""
    datasets = yaml.safe_load((root / config_file).read_text())["datasets"]
    for ds in datasets.values():
        location = root / ds["path"]
        if ds["source"] == "pyskl":
            location.parent.mkdir(parents=True, exist_ok=True)
            location.write_bytes(b"")
        elif ds["source"] in ("ntu_raw", "kinetics_json"):
            location.mkdir(parents=True, exist_ok=True)
    return datasets


def recipe_of(dataset):
    """The training recipe a shipped dataset's annotation starts from."""
    return "msg3d-kinetics" if dataset.get("annotation") == "openpose" else "pyskl"


SHIPPED_CONFIGS = ["config/config.yaml",
                   *(f"config/examples/{p.name}" for p in sorted((REPO / "config" / "examples").glob("*.yaml")))]


@pytest.mark.slow
@pytest.mark.parametrize("config_file", SHIPPED_CONFIGS)
def test_shipped_real_data_configs_plan_real_runs(tmp_path, config_file):
    """config/config.yaml and each example are real-data runs: they parse, plan every dataset and
    split with no demo stage, leave the device to msg3d (CUDA when available: no --device) and
    train with the recipe as it is (PYSKL's; MS-G3D's for Kinetics)."""
    assert len(SHIPPED_CONFIGS) >= 4
    root = copy_repo(tmp_path / "repo")
    datasets = make_inputs(root, config_file)
    proc = snakemake(root, "-n", "-p", configfile=config_file)
    stats = job_stats(proc.stdout)
    assert stats and not {"make_demo", "make_kinetics_demo"} & set(stats)
    assert "device is cpu" not in proc.stdout + proc.stderr
    outputs = planned_outputs(proc.stdout)
    assert not [p for p in outputs if "demo" in p]
    assert {f"results/plots/{n}/{s}/per_class.svg" for n, ds in datasets.items() for s in ds["splits"]} <= outputs
    parsed = [msg3d_args(c) for c in shell_commands(proc.stdout) if c.startswith("python -m msg3d ")]
    assert all(args.device is None for name, args in parsed if name in ("train", "test"))
    trains = [args for name, args in parsed if name == "train"]
    for args in trains:
        dataset = datasets[Path(args.data).parts[2]]  # results/stores/<dataset>/<modality>
        recipe = json.loads(json.dumps(resolve_hparams({}, recipe_of(dataset)).to_dict()))
        assert json.loads(args.hparams_json) == recipe
    if config_file.endswith("pyskl_checkpoints.yaml"):
        assert not trains and stats["download_checkpoint"] == 8
    else:
        assert len(trains) == stats["train"] > 0


@pytest.mark.slow
def test_a_config_file_is_the_whole_config(tmp_path):
    """`--configfile FILE` runs what FILE says: the demo config plans nothing of config/config.yaml
    (a real NTU60 dataset), though the default profile names config/config.yaml for calls that name
    no config (a command-line --configfile replaces the profile's, it is not merged with it)."""
    root = copy_repo(tmp_path / "repo")
    make_inputs(root, "config/config.yaml")
    demo = planned_outputs(snakemake(root, "-n", configfile="config/demo.yaml").stdout)
    assert "results/model_zoo.md" in demo and not [p for p in demo if "/ntu60/" in p]
    real = planned_outputs(snakemake(root, "-n", configfile="config/config.yaml").stdout)
    assert "results/stores/ntu60/j" in real and not [p for p in real if "demo" in p]
    # no --configfile: the profile's config/config.yaml, the real-data one
    assert planned_outputs(snakemake(root, "-n", configfile=None).stdout) == real
    # two files merge in the order given: the demo's datasets and settings over the real one's
    both = planned_outputs(snakemake(root, "-n", "--configfile", "config/config.yaml", "config/demo.yaml",
                                     configfile=None).stdout)
    assert "results/stores/ntu60/j" in both and "results/stores/demo/j" in both


@pytest.mark.slow
def test_no_config_file_says_which_to_pass(tmp_path):
    """Without the default profile (`--workflow-profile none`) and without --configfile, no config."""
    proc = snakemake(copy_repo(tmp_path / "repo"), "-n", "--workflow-profile", "none", configfile=None, check=False)
    assert proc.returncode != 0
    assert ("config: no datasets: name a config file with --configfile (the default profile names"
            " config/config.yaml), e.g. `snakemake --cores 8 --configfile config/demo.yaml` for the demo, or"
            " your copy of config/config.yaml" in proc.stdout + proc.stderr)


def train_hparams(output):
    """{(dataset, split): --hparams-json text} of the train jobs of a `-n -p` run."""
    commands = [msg3d_args(c) for c in shell_commands(output) if c.startswith("python -m msg3d ")]
    return {(Path(args.data).parts[2], args.split): args.hparams_json for name, args in commands if name == "train"}


@pytest.mark.slow
def test_config_overrides_of_nested_keys_arrive_typed(tmp_path):
    """`snakemake --config 'train={lr: 0.05, ...}'`: Snakemake hands the values inside over as
    strings (SNAKEMAKE.md §1.2); the workflow reads them as YAML, so they pass the schema, merge key
    by key over the config file and reach msg3d train as the numbers a config file gives (the same
    params: no rerun from the way a value was given)."""
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
    overrides = ["train={lr: 0.05, batch_size: 4, model: {base_channels: 12}}",
                 "datasets={demo: {splits: [xview]}}", "fusion_search={enabled: false}"]
    out = snakemake(root, "-n", "-p", "--config", *overrides).stdout
    hparams = train_hparams(out)
    assert {key[0] for key in hparams} == {"demo", "kinetics"}
    assert {split for dataset, split in hparams if dataset == "demo"} == {"xview"}
    demo = json.loads(hparams["demo", "xview"])
    assert (demo["lr"], demo["batch_size"], demo["model"]["base_channels"]) == (0.05, 4, 12)
    assert type(demo["lr"]) is float and type(demo["batch_size"]) is int
    assert (demo["epochs"], demo["clip_len"], demo["model"]["num_gcn_scales"]) == (1, 16, 2)  # the file's
    assert "fuse_search" not in job_stats(out)

    def as_file(config):
        config["train"].update(lr=0.05, batch_size=4)
        config["train"]["model"]["base_channels"] = 12
        config["datasets"]["demo"]["splits"] = ["xview"]
        config["fusion_search"]["enabled"] = False

    edit_config(root, as_file)
    assert train_hparams(snakemake(root, "-n", "-p").stdout) == hparams


@pytest.mark.slow
def test_cpu_with_a_full_width_model_or_granted_gpus_warns_once(tmp_path):
    """`device: cpu` is the demo's: a full-width model to train on it, or GPUs granted to its jobs
    (the slurm profile's set-resources), is a config that left the demo half way; said once, when
    the config is read."""
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")

    def warnings(*args):
        proc = snakemake(root, "-n", *args)
        return [line for line in (proc.stdout + proc.stderr).splitlines() if "config: device is cpu, but" in line]

    assert warnings() == []
    full = warnings("--config", "train={model: {base_channels: 96}}")
    assert len(full) == 1 and "demo, kinetics train(s) the full-width model (train.model.base_channels >= 96)" in full[0]
    granted = warnings("--set-resources", "train:gpu=8", "test:gpu=1")
    assert len(granted) == 1 and "grants GPUs to each job (train 8, test 1;" in granted[0]
    assert warnings("--config", "device=null", "--set-resources", "train:gpu=8") == []


def launched_gpus(output):
    """{rule name: [the --gpus of each of its jobs]} of the msg3d launch jobs of a `-n -p` run."""
    gpus = {}
    for name, args in (msg3d_args(c) for c in shell_commands(output) if c.startswith("python -m msg3d launch ")):
        gpus.setdefault(name, []).append(args.gpus)
    return gpus


@pytest.mark.slow
def test_train_jobs_take_every_local_gpu_and_test_jobs_one(tmp_path, monkeypatch):
    """A faked machine (CUDA_VISIBLE_DEVICES): `train_gpus: all` (the default) trains with DDP over
    its 4 GPUs, `train_gpus: 1` one GPU per training, a test job takes one; `device: cpu` claims
    none."""
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")

    def plan(*config):
        return launched_gpus(snakemake(root, "-n", "-p", "--config", "datasets={demo: {splits: [xsub]}}",
                                       *config).stdout)

    assert plan("device=null") == {"train": [4] * 8, "test": [1] * 8}
    # memory: per process (4 for a 4-GPU DDP training), the host side of a GPU process
    out = snakemake(root, "-n", "--config", "device=null", "datasets={demo: {splits: [xsub]}}").stdout
    memory = {rule: set(re.findall(r"mem_mb=(\d+)", block)) for rule, block in
              re.findall(r"rule (train|test):\n((?:    .*\n)+)", out)}
    assert memory == {"train": {"12000"}, "test": {"3000"}}, memory
    assert plan("device=cuda", "train_gpus=1") == {"train": [1] * 8, "test": [1] * 8}
    assert plan("device=null", "train_gpus=2") == {"train": [2] * 8, "test": [1] * 8}
    assert plan("device=cpu") == {"train": [0] * 8, "test": [0] * 8}
    # no GPU: one slot, as before (one job at a time; msg3d launch then claims nothing: the CPU)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert plan("device=null") == {"train": [1] * 8, "test": [1] * 8}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    proc = snakemake(root, "-n", "--config", "train_gpus=two", check=False)
    assert proc.returncode != 0 and "train_gpus" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_two_trainings_run_side_by_side_on_two_gpus(tmp_path, monkeypatch):
    """`snakemake --cores 2` on a machine with two (fake) GPUs and `train_gpus: 1` runs the two
    trainings at once, each on a card of its own: the second job to start finds GPU 0 claimed and
    takes GPU 1 (jobs one after another would both have taken GPU 0)."""
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("MSG3D_GPU_LOCK_DIR", str(tmp_path / "locks"))

    def small(config):
        del config["datasets"]["kinetics"]
        config.update(device=None, train_gpus=1, modalities=["j", "b"], fusion={"2s": {"j": 1, "b": 1}},
                      fusion_search={"enabled": False})

    edit_config(root, small)
    snakemake(root, "results/model_zoo.md")
    claimed = {m: re.findall(r"msg3d launch: GPU\(s\) (\S+) claimed", (root / f"logs/train/demo/xsub/{m}.log").read_text())
               for m in ("j", "b")}
    assert sorted(claimed.values()) == [["0"], ["1"]], claimed
    assert (root / "results" / "model_zoo.md").exists()


@pytest.mark.slow
def test_given_checkpoints_are_tested_instead_of_trained(tmp_path):
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
    (root / "resources").mkdir()
    (root / "resources" / "b.pth").write_bytes(b"")
    url = "http://download.openmmlab.com/mmaction/pyskl/ckpt/msg3d/msg3d_pyskl_ntu60_xsub_3dkp/j.pth"
    edit_config(root, lambda c: c["datasets"]["demo"].update(checkpoints={"xsub": {"j": url, "b": "resources/b.pth"}}))
    out = snakemake(root, "-n", "all").stdout
    stats = job_stats(out)
    # demo: 2 of 4 trained, 4 tested; the e2e config's Kinetics dataset: 4 and 4
    assert stats["download_checkpoint"] == 1 and stats["train"] == 2 + 4 and stats["test"] == 4 + 4
    outputs = planned_outputs(out)
    assert "resources/checkpoints/demo/xsub/j.pth" in outputs
    assert not [p for p in outputs if re.match(r"results/train/demo/xsub/(j|b)/", p)], outputs
    assert {"results/train/demo/xsub/jm/best.pth", "results/train/demo/xsub/jm/epochs.csv"} <= outputs


@pytest.mark.slow
def test_a_pickle_of_its_own_names_its_splits(tmp_path):
    """PYSKL's K400 and custom-data pickles name their splits train / val: `split_names` gives each
    benchmark its pair, the import skips the NTU release check, and train/test get the names."""
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
    (root / "resources").mkdir()
    (root / "resources" / "k400_hrnet.pkl").write_bytes(b"")
    custom = {"source": "pyskl", "path": "resources/k400_hrnet.pkl", "annotation": "hrnet", "splits": ["val"],
              "split_names": {"val": ["train", "val"]}}
    edit_config(root, lambda c: c["datasets"].update(custom=custom))
    commands = shell_commands(snakemake(root, "-n", "-p", "--forceall", "--", "results/model_zoo.md").stdout)
    by_command = {}
    for command in commands:
        if command.startswith("python -m msg3d") and "custom" in command:
            name, args = msg3d_args(command)
            by_command[name] = args
    assert by_command["import-pyskl"].dataset is None
    assert (by_command["train"].train_split, by_command["train"].val_split) == ("train", "val")
    assert by_command["test"].split == "val"
    edit_config(root, lambda c: c["datasets"]["custom"].update(splits=["xsub"]))
    proc = snakemake(root, "-n", "all", check=False)
    assert ("config: datasets.custom.splits: ['xsub'] not defined in config: datasets.custom.split_names "
            "(use ['val'])") in proc.stdout + proc.stderr
    edit_config(root, lambda c: c["datasets"]["demo"].update(split_names={"xsub": ["a", "b"]}))
    edit_config(root, lambda c: c["datasets"]["custom"].update(splits=["val"]))
    proc = snakemake(root, "-n", "all", check=False)
    assert "config: datasets.demo.split_names: only for a PYSKL pickle of your own (source pyskl)" in (
        proc.stdout + proc.stderr)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.slow
def test_download_job_keeps_only_the_configured_sha256(tmp_path):
    """download_checkpoint run for real against a local server: the file with the configured hash
    is kept; another hash fails the job with one line naming the URL in its log, and keeps nothing."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "j.pth").write_bytes(body := b"the bytes of a checkpoint")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
        url, target = f"http://127.0.0.1:{server.server_address[1]}/j.pth", "resources/checkpoints/demo/xsub/j.pth"

        def expect(sha256):
            edit_config(root, lambda c: c["datasets"]["demo"].update(checkpoints={"xsub": {"j": {"url": url,
                                                                                                 "sha256": sha256}}}))

        expect(hashlib.sha256(body).hexdigest().upper())
        snakemake(root, target)
        assert (root / target).read_bytes() == body
        (root / target).unlink()
        expect("0" * 64)
        assert snakemake(root, target, check=False).returncode != 0
    finally:
        server.shutdown()
        server.server_close()
    assert not [p for p in (root / "resources").rglob("*") if p.is_file()]  # neither the file nor a temporary
    log = (root / "logs" / "download_checkpoint" / "demo" / "xsub" / "j.log").read_text()
    assert log == (f"msg3d download: error: {url}: the download's sha256 is {hashlib.sha256(body).hexdigest()},"
                   f" not the expected {'0' * 64}; nothing was written\n")


def checkpoint_of_an_unused_modality(config):
    config.update(modalities=["j", "b"])
    config["datasets"]["demo"]["checkpoints"] = {"xsub": {"jm": "resources/jm.pth"}}


@pytest.mark.slow
@pytest.mark.parametrize(
    "update, message",
    [
        (lambda c: c["train"].update(lr_typo=1), "('lr_typo' was unexpected)"),
        (lambda c: c["train"].update(lr=0), "config: train: hyper-parameter 'lr' must be > 0"),
        (lambda c: c["train"]["model"].update(base_channels=8.5), "8.5 is not of type 'integer'"),
        (
            lambda c: c.update(modalities=["j", "b"], fusion={"x": {"j": 1, "bm": 1}}),
            "fusion.x: modalities ['bm'] are not in modalities ['j', 'b']",
        ),
        (lambda c: c["datasets"]["demo"].update(splits=["xset"]), "demo.splits: ['xset'] not defined for ntu60"),
        (checkpoint_of_an_unused_modality, "demo.checkpoints.xsub: modalities ['jm'] are not in modalities ['j', 'b']"),
        # values that would pass `snakemake -n` and fail only when their job runs
        (lambda c: c["fusion"]["2s"].update(j=float("inf")), "config: fusion.2s.j: the weight must be a finite number"),
        (lambda c: c["fusion"]["4s"].update(bm=float("nan")), "config: fusion.4s.bm: the weight must be a finite"),
        (lambda c: c["fusion_search"].update(grid=[0]), "config: fusion_search.grid: needs a positive weight"),
        (lambda c: c["train"].update(lr=float("inf")), "config: train: hyper-parameter 'lr' must be finite"),
        (lambda c: c["train"].update(weight_decay=float("nan")), "config: train: hyper-parameter 'weight_decay'"),
        (lambda c: c["train"].update(nesterov=True, momentum=0), "config: train: hyper-parameter 'nesterov' needs a"),
        (lambda c: c["train"]["model"].update(base_channels=4), "config: train: hyper-parameter 'model.base_channels'"),
        (lambda c: c.update(seed=2**32), "4294967296 is greater than the maximum of 4294967295"),
        (lambda c: c["train"].update(test_clips=2.0), "config: train.test_clips: 2.0 is not of type 'integer'"),
        (lambda c: c.setdefault("test", {}).update(num_clips=10), "config: test.num_clips is now train.test_clips"),
        (lambda c: c["train"].update(lr_steps=[4]), "hyper-parameter 'lr_steps' is used by lr_schedule 'multistep'"),
        (lambda c: c["datasets"]["demo"].update(train={"epochs": 0}),
         "config: train: hyper-parameter 'epochs' must be >= 1, got 0 (dataset demo, over its own datasets.demo.train)"),
        (lambda c: c["datasets"]["demo"].update(annotation="openpose", splits=["xsub"]),
         "config: datasets.demo.splits: ['xsub'] not defined for kinetics400 (use ['val'])"),
        (lambda c: c["datasets"]["demo"].update(source="kinetics_json", path="msg3d"),
         "config: datasets.demo: the ST-GCN Kinetics-skeleton release (source kinetics_json) is OpenPose data"),
        (lambda c: c["datasets"]["demo"].update(source="kinetics_json", annotation="openpose", splits=["val"],
                                                path="environment.yml"),
         "config: datasets.demo.path: 'environment.yml' is not a folder"),
        (lambda c: c.update(modalities=["j", "jm"], fusion={"x": {"j": 1}}),
         "config: ensemble: modalities ['b'] are not in modalities ['j', 'jm']"),
        (lambda c: c.update(ensemble={"j": 0}), "config: ensemble: all weights are zero"),
        (lambda c: c.update(fusion={"ensemble": {"j": 1}}), "On instance['fusion']:\n    'ensemble'"),
        (lambda c: c["fusion_search"].update(grid=[0, 1.0]), "config: fusion_search.grid.1: 1.0 is not of type"),
        (lambda c: c["datasets"].update({"my data": c["datasets"]["demo"]}), "'my data' does not match"),
        (lambda c: c["datasets"]["demo"].update(source="pyskl", path="msg3d"),
         "config: datasets.demo.path: 'msg3d' is not a file"),
        (lambda c: c["datasets"]["demo"].update(source="ntu_raw", path="environment.yml"),
         "config: datasets.demo.path: 'environment.yml' is not a folder"),
        (lambda c: c["datasets"]["demo"].update(source="pyskl", path="x{y}.pkl"),
         "config: datasets.demo.path: 'x{y}.pkl': Snakemake reads braces in an input path as wildcards"),
        (lambda c: c["datasets"]["demo"].update(checkpoints={"xsub": {"j": "workflow"}}),
         "config: datasets.demo.checkpoints.xsub.j: 'workflow' is not a file"),
        (lambda c: c["datasets"]["demo"].update(checkpoints={"xsub": {"j": {"url": "https://a.org/j.pth",
                                                                            "sha256": "ab" * 31}}}),
         f"'{'ab' * 31}' does not match"),
        (lambda c: c["datasets"]["demo"].update(checkpoints={"xsub": {"j": {"url": "resources/j.pth",
                                                                            "sha256": "ab" * 32}}}),
         "'resources/j.pth' does not match '^https?://'"),
    ],
)
def test_config_errors_are_caught_at_parse_time(tmp_path, update, message):
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
    edit_config(root, update)
    proc = snakemake(root, "-n", "all", check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- code digests


def train_rule_code_digest(root):
    """The `code` param of the train rule, as a dry run prints it in the shell command."""
    out = snakemake(root, "-n", "-p", "--forcerun", "train", "--", "results/train/demo/xsub/j/best.pth").stdout
    digests = set(re.findall(r"--expect-code-digest (\w+)", out))
    assert len(digests) == 1, out
    return digests.pop()


@pytest.mark.slow
def test_train_rule_tracks_the_engines_code_digest(tmp_path):
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
    assert train_rule_code_digest(root) == code_digest("msg3d.engine.train")


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_demo(tmp_path):
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
    snakemake(root, "all")
    results = root / "results"
    table = (results / "model_zoo.md").read_text()
    assert "| demo | xsub | 3D skeleton |" in table
    csv_text = (results / "model_zoo.csv").read_text()
    assert csv_text.count("\ndemo,xsub,3dkp,") == 8  # 4 modalities, 2s, 4s, search, ensemble
    # the Kinetics row: MS-G3D's published numbers beside ours, MS-G3D's ensemble of the logits
    assert re.search(r"\| kinetics \| val \| OpenPose 2D \| [0-9.]+ / 35.8 \(.*\) \| [0-9.]+ / 35.4 .*"
                     r"\| [0-9.]+ / 38.0 \([-+][0-9.]+, n=\d+\) \|", table), table
    assert csv_text.count("\nkinetics,val,openpose,") == 8
    ensemble = json.loads((results / "fusion" / "kinetics" / "val" / "ensemble.json").read_text())
    assert ensemble["method"] == "weighted sum of clip-averaged logits (MS-G3D's ensemble)"
    kinetics_j = json.loads((results / "test" / "kinetics" / "val" / "j" / "metrics.json").read_text())
    assert kinetics_j["num_clips"] == 1 and kinetics_j["split"] == "val"  # MS-G3D's one clip at test
    assert kinetics_j["store_meta"]["features"] == "msg3d-kinetics" and kinetics_j["store_meta"]["layout"] == "openpose"
    plots = results / "plots" / "demo" / "xsub"
    for name in ("curves", "per_class", "confusion_j", "confusion_4s"):
        assert (plots / f"{name}.svg").stat().st_size > 1000
    first = {p: (results / p).read_bytes() for p in ("model_zoo.md", "model_zoo.csv", "plots/demo/xsub/per_class.svg")}

    # nothing is stale after a run
    assert "Nothing to be done" in snakemake(root, "-n", "all").stdout

    # a training hyper-parameter reruns training and what follows, not the data stages
    config = (root / RUN_CONFIG).read_text()
    edit_config(root, lambda c: c["train"].update(lr=0.05))
    stats = job_stats(snakemake(root, "-n", "all").stdout)
    assert {r: stats.get(r) for r in ("train", "test", "fuse", "fuse_search", "fuse_ensemble", "model_zoo_table")} == {
        "train": 8, "test": 8, "fuse": 4, "fuse_search": 2, "fuse_ensemble": 2, "model_zoo_table": 1
    }
    assert not {"make_demo", "convert_ntu", "make_kinetics_demo", "convert_kinetics", "derive"} & set(stats)
    (root / RUN_CONFIG).write_text(config)

    # an edit to the bone code reruns the bone modalities (b, bm) and what depends on them only
    bone = root / "msg3d" / "data" / "bone.py"
    source = bone.read_text()
    bone.write_text(re.sub(r"(\ndef joint_to_bone\(.*\):\n)", r"\1    # edited\n", source, count=1))
    planned = planned_outputs(snakemake(root, "-n", "all").stdout)
    assert {"results/stores/demo/b", "results/stores/demo/bm", "results/train/demo/xsub/bm/epochs.csv"} <= planned
    assert not {p for p in planned if re.search(r"/(j|jm)(/|\.pkl$|$)|confusion_(j|jm)\.svg", p)}, planned
    assert "results/fusion/demo/xsub/2s.json" in planned and "results/model_zoo.md" in planned
    bone.write_text(source)

    # an edit to the table code reruns the table only
    table_code = root / "msg3d" / "report" / "table.py"
    code = table_code.read_text()
    table_code.write_text(code + "\n# edited\n")
    assert set(job_stats(snakemake(root, "-n", "all").stdout)) == {"model_zoo_table", "all"}
    table_code.write_text(code)
    assert "Nothing to be done" in snakemake(root, "-n", "all").stdout

    # one HTML page with the table and the plots
    snakemake(root, "--report", "report.html")
    report = (root / "report.html").read_text()
    assert len(report) > 10000 and "model_zoo.md" in report and "per_class.svg" in report
    assert "model_zoo.html" in report

    # Rerun training as rerun-incomplete does after a kill: Snakemake deletes the declared outputs
    # (best.pth, epochs.csv) but not latest.pth, so a run with the same config resumes from it (here
    # at its end: nothing is trained again, the outputs are rebuilt), and one without it starts over.
    # The same config and seed give the same table and plots, byte for byte.
    for modality in ("jm", "bm"):
        (results / "train" / "demo" / "xsub" / modality / "latest.pth").unlink()
    snakemake(root, "--forcerun", "train", "--", "all")
    logs = root / "logs" / "train" / "demo" / "xsub"
    for modality in ("j", "b"):
        assert "--auto-resume: " in (log := (logs / f"{modality}.log").read_text())
        assert "has the same config; resuming" in log and re.search(r"at iteration (\d+)/\1 \(", log), log
    for modality in ("jm", "bm"):
        assert "no checkpoint" in (log := (logs / f"{modality}.log").read_text()) and "starting fresh" in log, log
    for path, content in first.items():
        assert (results / path).read_bytes() == content, path
    # the digest the engine records is the one Snakemake tracks for the train rule
    config = json.loads((results / "train" / "demo" / "xsub" / "j" / "config.json").read_text())
    assert config["code_digest"] == train_rule_code_digest(root)
