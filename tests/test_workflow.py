"""The Snakemake workflow: lint, the DAG the config asks for, honest code digests, and one
end-to-end run of the small demo (tests/e2e/config) in a temporary copy of the repository."""

import argparse
import ast
import dataclasses
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from msg3d.cli import COMMANDS
from msg3d.data.modality import MODALITIES
from msg3d.data.splits import SPLIT_NAMES
from msg3d.engine.hparams import HParams, ModelHParams, hparams_help
from msg3d.provenance import code_digest

REPO = Path(__file__).resolve().parents[1]


def run_env(root):
    """Rules call `python -m msg3d`: the venv's python first on PATH, msg3d from ``root``."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env["PYTHONPATH"] = str(root)
    return env


def snakemake(root, *args, check=True):
    """Run snakemake in ``root`` (a copy of the repository: its own msg3d, workflow and config)."""
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=root, env=run_env(root), capture_output=True, text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_repo(dest, config=REPO / "config" / "config.yaml"):
    """The parts of the repository a run needs, with ``config`` as config/config.yaml."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("msg3d", "workflow"):
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    shutil.copy(REPO / "environment.yml", dest)
    (dest / "config").mkdir()
    shutil.copy(REPO / "config" / "model_zoo_reference.yaml", dest / "config")
    shutil.copy(config, dest / "config" / "config.yaml")
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
    path = root / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    update(config)
    path.write_text(yaml.safe_dump(config))


def shell_commands(output):
    """The shell commands a `snakemake -n -p` run prints, one per job."""
    return [line.removeprefix("Shell command: ") for line in output.splitlines() if line.startswith("Shell command: ")]


def msg3d_args(command):
    """The arguments msg3d's own parser makes of a rule's `python -m msg3d NAME ...` command (the
    words the shell passes, up to the log redirection)."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "msg3d"], command
    name, rest = words[3], words[4:words.index(">")]
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
WORD_LIST_PARAMS = {"params.launcher", "params.device", "params.reference", "params.scores", "params.runs"}


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
    checkpoints = {"xsub": {"j": f"{DASHED}.pth", "b": str(local), "jm": url}}

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
                      "results/train/pkl/xsub/bm/latest.pth"}
    downloads = [shlex.split(c) for c in commands if c.startswith("python -c ")]
    assert [words[3] for words in downloads] == [url]


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
    modalities, and the NTU benchmarks (the X of the X_train split names), in msg3d's order."""
    defs = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["$defs"]
    benchmarks = [n.removesuffix("_train") for names in SPLIT_NAMES.values() for n in names if n.endswith("_train")]
    assert defs["modality"]["enum"] == list(MODALITIES)
    assert defs["split"]["enum"] == list(dict.fromkeys(benchmarks))


def test_schema_train_section_has_the_hparams_names_and_types():
    """The schema's train: section keeps HParams' names and types (typos fail at parse time); the
    defaults, bounds and meanings stay in HParams alone."""
    train = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]["train"]
    json_type = {"int": "integer", "float": "number", "bool": "boolean"}

    def types(cls):
        return {f.name: json_type[f.type.__name__] for f in dataclasses.fields(cls) if f.name != "model"}

    assert {k: v["type"] for k, v in train["properties"].items() if k != "model"} == types(HParams)
    model = train["properties"]["model"]["properties"]
    assert {k: v["type"] for k, v in model.items()} == types(ModelHParams)
    assert not [k for k, v in {**train["properties"], **model}.items() if set(v) - {"type", "properties",
                                                                                  "additionalProperties", "default"}]


def test_config_readme_lists_the_hparams_table_of_msg3d_train_help():
    assert f"```\n{hparams_help()}\n```" in (REPO / "config" / "README.md").read_text()


# --------------------------------------------------------------------------- the DAG


@pytest.mark.slow
def test_default_config_runs_the_whole_demo_pipeline(tmp_path):
    root = copy_repo(tmp_path / "repo")
    stats = job_stats(snakemake(root, "-n", "all").stdout)
    splits = len(yaml.safe_load((REPO / "config" / "config.yaml").read_text())["datasets"]["demo"]["splits"])
    assert stats["make_demo"] == 1 and stats["convert_ntu"] == 1 and stats["derive"] == 4
    assert stats["train"] == stats["test"] == 4 * splits
    assert stats["fuse"] == 2 * splits and stats["fuse_search"] == splits
    assert stats["model_zoo_table"] == 1 and stats["plot_per_class"] == splits and stats["plot_curves"] == splits
    assert "import_pyskl" not in stats and "download_checkpoint" not in stats


@pytest.mark.slow
def test_given_checkpoints_are_tested_instead_of_trained(tmp_path):
    root = copy_repo(tmp_path / "repo", REPO / "tests" / "e2e" / "config" / "config.yaml")
    (root / "resources").mkdir()
    (root / "resources" / "b.pth").write_bytes(b"")
    url = "http://download.openmmlab.com/mmaction/pyskl/ckpt/msg3d/msg3d_pyskl_ntu60_xsub_3dkp/j.pth"
    edit_config(root, lambda c: c["datasets"]["demo"].update(checkpoints={"xsub": {"j": url, "b": "resources/b.pth"}}))
    out = snakemake(root, "-n", "all").stdout
    stats = job_stats(out)
    assert stats["download_checkpoint"] == 1 and stats["train"] == 2 and stats["test"] == 4
    outputs = planned_outputs(out)
    assert "resources/checkpoints/demo/xsub/j.pth" in outputs
    assert not [p for p in outputs if re.match(r"results/train/demo/xsub/(j|b)/", p)], outputs
    assert {"results/train/demo/xsub/jm/best.pth", "results/train/demo/xsub/jm/epochs.csv"} <= outputs


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
        (lambda c: c["test"].update(num_clips=2.0), "config: test.num_clips: 2.0 is not of type 'integer'"),
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
    assert (results / "model_zoo.csv").read_text().count("\ndemo,xsub,3dkp,") == 7  # 4 modalities, 2s, 4s, search
    plots = results / "plots" / "demo" / "xsub"
    for name in ("curves", "per_class", "confusion_j", "confusion_4s"):
        assert (plots / f"{name}.svg").stat().st_size > 1000
    first = {p: (results / p).read_bytes() for p in ("model_zoo.md", "model_zoo.csv", "plots/demo/xsub/per_class.svg")}

    # nothing is stale after a run
    assert "Nothing to be done" in snakemake(root, "-n", "all").stdout

    # a training hyper-parameter reruns training and what follows, not the data stages
    config = (root / "config" / "config.yaml").read_text()
    edit_config(root, lambda c: c["train"].update(lr=0.05))
    stats = job_stats(snakemake(root, "-n", "all").stdout)
    assert {r: stats.get(r) for r in ("train", "test", "fuse", "fuse_search", "model_zoo_table")} == {
        "train": 4, "test": 4, "fuse": 2, "fuse_search": 1, "model_zoo_table": 1
    }
    assert not {"make_demo", "convert_ntu", "derive"} & set(stats)
    (root / "config" / "config.yaml").write_text(config)

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
