# Config validation, the artefact paths, the code digests, and the get_* helpers that turn the
# config into inputs, params and targets. Functions only: the linter wants them apart from rules.

import json
import math
import os
import re
import shlex

import jsonschema
import yaml
from snakemake.utils import validate

if "streams" in config:
    raise ValueError(
        "config: the key 'streams' is now 'modalities' (the j/b/jm/bm list); rename it"
    )
validate(config, "../schemas/config.schema.yaml")


def _check_integers(schema_file):
    """JSON Schema counts 2.0 as an integer, so `num_clips: 2.0` passes validate() and then fails
    in its job (msg3d's integer options do not take "2.0"); check again with integers strict.
    """
    with open(schema_file, encoding="utf-8") as f:
        schema = yaml.safe_load(f)
    base = jsonschema.Draft202012Validator
    strict = jsonschema.validators.extend(
        base,
        type_checker=base.TYPE_CHECKER.redefine(
            "integer", lambda _, value: type(value) is int
        ),
    )
    error = jsonschema.exceptions.best_match(strict(schema).iter_errors(config))
    if error is not None:
        key = ".".join(str(part) for part in error.absolute_path)
        raise ValueError(f"config: {key}: {error.message}")


_check_integers(os.path.join(workflow.basedir, "schemas", "config.schema.yaml"))

# --------------------------------------------------------------------------- names (from msg3d)

# the skeleton layout of each annotation kind
ANNOTATION_LAYOUTS = {"3dkp": NTU_RGBD.name, "hrnet": COCO.name}
# the benchmarks of each NTU release: the X of its X_train / X_val split names
NTU_BENCHMARKS = {
    ntu: [name.removesuffix("_train") for name in names if name.endswith("_train")]
    for ntu, names in SPLIT_NAMES.items()
}
BENCHMARKS = list(dict.fromkeys(b for names in NTU_BENCHMARKS.values() for b in names))

# --------------------------------------------------------------------------- the config

DATASETS = config["datasets"]
CONFIG_MODALITIES = config["modalities"]
SCHEMES = config["fusion"]
SEARCH = "search"  # scheme name of the weight search (fusion_search)
# everything with a scores pickle: the modalities and the fixed-weight fusion schemes
ENTRIES = [*CONFIG_MODALITIES, *SCHEMES]
# Train and test jobs. On a GPU (device null or cuda): one GPU slot each (the profile caps the
# slots) and up to 8 torch threads, but never more than the machine has, so `--cores 8` on a
# 2-core laptop does not oversubscribe it (Snakemake exports OMP_NUM_THREADS={threads}).
# With device cpu: no GPU slot and one thread each, so Snakemake runs as many at once as --cores
# allows: the fastest way to train many small models on a CPU, and one busy thread per core also
# holds up on a shared machine, where torch's spinning thread pool slows down many times over
# (raise it with --set-threads train=N for one large CPU training).
ON_CPU = config["device"] == "cpu"
GPUS_PER_JOB = 0 if ON_CPU else 1
TORCH_THREADS = 1 if ON_CPU else min(8, os.cpu_count() or 1)


def is_url(location):
    return location.startswith(("http://", "https://"))


def _check_path(key, location, folder):
    """Check the path given at ``key`` (e.g. "config: datasets.x.path"): usable as a Snakemake
    input, and a folder (``folder``) or a file. A missing one is left to Snakemake, which names it
    as a missing input; the wrong kind would pass a dry run and fail only when its job runs.
    """
    if "{" in location or "}" in location:
        # Snakemake fills wildcards into every input path, with no escape for a literal brace
        raise ValueError(
            f"{key}: {location!r}: Snakemake reads braces in an input path as wildcards;"
            " rename the file or link it under another name"
        )
    if os.path.exists(location) and os.path.isdir(location) != folder:
        kind = "a folder" if folder else "a file"
        raise ValueError(f"{key}: {location!r} is not {kind}")


def _check_config():
    """Cross-key checks the schema cannot express, and values that would pass a dry run but fail
    only when their job runs: a clear error at parse time, naming the key."""
    for name, ds in DATASETS.items():
        where = f"config: datasets.{name}"
        benchmarks = NTU_BENCHMARKS[ds["ntu"]]
        bad = [s for s in ds["splits"] if s not in benchmarks]
        if bad:
            raise ValueError(
                f"{where}.splits: {bad} not defined for {ds['ntu']} (use {benchmarks})"
            )
        if ds["source"] != "demo":
            if not ds["path"]:
                raise ValueError(f"{where}.path: required for source {ds['source']}")
            _check_path(f"{where}.path", ds["path"], folder=ds["source"] == "ntu_raw")
        if ds["source"] == "demo" and (
            ds["ntu"] != "ntu60" or ds["annotation"] != "3dkp"
        ):
            raise ValueError(
                f"{where}: the demo is NTU60-style 3D data (ntu: ntu60, annotation: 3dkp)"
            )
        if ds["source"] == "ntu_raw" and ds["annotation"] != "3dkp":
            raise ValueError(
                f"{where}.annotation: raw .skeleton files hold 3D joints (3dkp)"
            )
        for split, modalities in ds["checkpoints"].items():
            if split not in ds["splits"]:
                raise ValueError(
                    f"{where}.checkpoints.{split}: not one of the dataset's splits {ds['splits']}"
                )
            bad = [m for m in modalities if m not in CONFIG_MODALITIES]
            if bad:
                raise ValueError(
                    f"{where}.checkpoints.{split}: modalities {bad} are not in modalities {CONFIG_MODALITIES}"
                )
            for modality, location in modalities.items():
                if not is_url(location):
                    _check_path(
                        f"{where}.checkpoints.{split}.{modality}",
                        location,
                        folder=False,
                    )
    for scheme, weights in SCHEMES.items():
        bad = [m for m in weights if m not in CONFIG_MODALITIES]
        if bad:
            raise ValueError(
                f"config: fusion.{scheme}: modalities {bad} are not in modalities {CONFIG_MODALITIES}"
            )
        # the schema's minimum lets YAML's .inf and .nan through (nan < 0 is false)
        for modality, weight in weights.items():
            if not math.isfinite(weight):
                raise ValueError(
                    f"config: fusion.{scheme}.{modality}: the weight must be a finite number, got {weight}"
                )
        if not any(weights.values()):
            raise ValueError(f"config: fusion.{scheme}: all weights are zero")
    if not any(config["fusion_search"]["grid"]):
        raise ValueError(
            "config: fusion_search.grid: needs a positive weight (all-zero weights fuse nothing)"
        )
    if config["demo"]["min_frames"] > config["demo"]["max_frames"]:
        raise ValueError("config: demo.min_frames is larger than demo.max_frames")


_check_config()


def canonical(obj):
    """Canonical JSON: the same content gives the same params, whatever the key order."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def choice(names):
    """Regex matching exactly one of ``names`` (none: a regex that never matches)."""
    return "|".join(sorted(names, key=len, reverse=True)) or "(?!)"


# --------------------------------------------------------------------------- shell words

# Every placeholder in a shell command is quoted (`{input.x:q}`, `{params.seed:q}`), so a path or
# name with a space or a shell character stays one word; the only exceptions are the params that
# are already several shell words, each quoted when built here (launcher, device, reference,
# scores, runs). tests/test_workflow.py checks both rules. A path from the config also goes through
# command_path, so that a leading "-" is not read as an option.


def command_path(location):
    """A path from the config as a command line may take it: a relative path that starts with "-"
    gets "./" in front, which names the same file, or argparse would read it as an option (msg3d's
    positional RAW_DIR or ANNOTATIONS, or --checkpoint's value). Quoting is `:q`'s job.
    """
    return os.path.join(os.curdir, location) if location.startswith("-") else location


def quoted_pairs(pairs):
    """``name=path`` shell words for msg3d's ``--scores``/``--runs`` options, each quoted."""
    return " ".join(shlex.quote(f"{name}={file}") for name, file in pairs)


# --------------------------------------------------------------------------- artefact paths

# The path pattern of every artefact, each written once. Rules name their outputs `path("scores")`
# (the wildcards stay); helpers fill them in, `path("scores", **wildcards)`. The files beside a
# scores pickle (<stem>_samples.csv, ...) are msg3d.scores' to name (see `sibling`). Logs and
# benchmarks are written only where they are made, in their one rule each.
PATHS = {
    "skeletons": "results/demo/{dataset}/skeletons",
    "annotations": "results/annotations/{dataset}/annotations.pkl",
    "skipped": "results/annotations/{dataset}/skipped.tsv",
    "store": "results/stores/{dataset}/{modality}",
    # a training run's folder: latest.pth is written there but is no declared output
    "run": "results/train/{dataset}/{split}/{modality}",
    "downloaded": "resources/checkpoints/{dataset}/{split}/{modality}.pth",
    "scores": "results/test/{dataset}/{split}/{modality}/scores.pkl",
    "metrics": "results/test/{dataset}/{split}/{modality}/metrics.json",
    "fused_metrics": "results/fusion/{dataset}/{split}/{scheme}.json",
    "fused_scores": "results/fusion/{dataset}/{split}/{scheme}.pkl",
    "table_md": "results/model_zoo.md",
    "table_csv": "results/model_zoo.csv",
    "curves": "results/plots/{dataset}/{split}/curves.svg",
    "confusion": "results/plots/{dataset}/{split}/confusion_{entry}.svg",
    "per_class": "results/plots/{dataset}/{split}/per_class.svg",
}


# the files of a run folder; {checkpoint} is latest or best
PATHS["checkpoint"] = os.path.join(PATHS["run"], "{checkpoint}.pth")
PATHS["epochs"] = os.path.join(PATHS["run"], "epochs.csv")


def path(name, **wildcards):
    """PATHS[name] with the given wildcards filled in and the others left as they are; names the
    pattern lacks are ignored, so any job's `**wildcards` may be passed."""
    return re.sub(r"{(\w+)}", lambda m: str(wildcards.get(m[1], m[0])), PATHS[name])


def sibling(scores, kind):
    """The ``kind`` file (samples, per_class, confusion_csv, ...) that msg3d.scores puts beside the
    scores pickle ``scores`` (a path or a pattern)."""
    return str(getattr(sibling_paths(scores), kind))


def with_samples(scores):
    """The scores pickles ``scores``, then their sample lists: what `msg3d fuse` and `msg3d plot`
    read of a scores file."""
    return [*scores, *(sibling(s, "samples") for s in scores)]


# --------------------------------------------------------------------------- code digests


def get_code(command, modality=None):
    """Digest of the msg3d code that `msg3d COMMAND` runs (msg3d.provenance), for `params: code=`;
    the train job passes it on, and the engine records the same value in config.json."""
    return code_digest(COMMANDS[command][0], modality)


# --------------------------------------------------------------------------- data


# datasets read from .skeleton files (converted) and from PYSKL pickles (imported)
SKELETON_DATASETS = [
    n for n, d in DATASETS.items() if d["source"] in ("demo", "ntu_raw")
]
PYSKL_DATASETS = [n for n, d in DATASETS.items() if d["source"] == "pyskl"]


def get_skeletons(wildcards):
    """convert_ntu's input: the demo folder, or the raw folder (ancient: adding files does not rerun)."""
    ds = DATASETS[wildcards.dataset]
    if ds["source"] == "demo":
        return path("skeletons", **wildcards)
    return ancient(command_path(ds["path"]))


def get_pyskl_annotations(wildcards):
    """import_pyskl's input: the dataset's PYSKL annotation pickle."""
    return command_path(DATASETS[wildcards.dataset]["path"])


# --------------------------------------------------------------------------- train / test

# The config's train: overrides resolved by msg3d (its defaults and bounds): a bad value fails here.
try:
    HPARAMS = resolve_hparams(config["train"])
except ValueError as exc:
    raise ValueError(f"config: train: {exc}") from None
TRAIN_HPARAMS = canonical(HPARAMS.to_dict())
DEVICE_ARG = f"--device {shlex.quote(config['device'])}" if config["device"] else ""


def get_launcher(wildcards, resources):
    """How the train job starts Python: with more than one GPU granted (e.g. set-resources in a
    cluster profile), torchrun runs DDP inside the one job. A cap below the request scales the
    grant down, to 0 under `--resources gpu=0`: that is plain python."""
    gpus = int(resources.gpu)
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node {gpus}"
    return "python"


def given_checkpoint(wildcards):
    """The checkpoint the config names for this dataset/split/modality (a URL, or a path ready for
    the command line), or None (train it)."""
    given = (
        DATASETS[wildcards.dataset]["checkpoints"]
        .get(wildcards.split, {})
        .get(wildcards.modality)
    )
    return given if given is None or is_url(given) else command_path(given)


def get_test_weights(wildcards):
    """The test's checkpoint input: the train job's outputs, a local .pth, or a downloaded one."""
    given = given_checkpoint(wildcards)
    if given is None:
        # with `checkpoint: latest` they stand for latest.pth, which the job writes but cannot declare
        return [
            path("checkpoint", checkpoint="best", **wildcards),
            path("epochs", **wildcards),
        ]
    if is_url(given):
        return path("downloaded", **wildcards)
    return given


def get_test_checkpoint(wildcards):
    """The .pth file that `msg3d test` loads (inside the run folder when trained here)."""
    if given_checkpoint(wildcards) is None:
        return path("checkpoint", checkpoint=config["test"]["checkpoint"], **wildcards)
    return get_test_weights(wildcards)


def get_checkpoint_url(wildcards):
    given = given_checkpoint(wildcards)
    if given is None or not is_url(given):
        raise ValueError(
            f"no checkpoint URL configured for {wildcards.dataset} {wildcards.split} {wildcards.modality}"
        )
    return given


# --------------------------------------------------------------------------- fusion


def fused_modalities(scheme):
    """The modalities a scheme fuses: its weights' keys, or all of them for the search."""
    return sorted(CONFIG_MODALITIES) if scheme == SEARCH else sorted(SCHEMES[scheme])


def fused_score_files(wildcards):
    """(modality, scores pickle) of the modalities the job's scheme fuses (fuse_search jobs have
    no {scheme} wildcard: theirs is the search)."""
    return [
        (m, path("scores", modality=m, **wildcards))
        for m in fused_modalities(wildcards.get("scheme", SEARCH))
    ]


def get_fusion_inputs(wildcards):
    """Scores and sample lists of the modalities the scheme fuses."""
    return with_samples([scores for _, scores in fused_score_files(wildcards)])


def get_fusion_scores(wildcards):
    return quoted_pairs(fused_score_files(wildcards))


SEARCH_GRID = ",".join(str(g) for g in sorted(set(config["fusion_search"]["grid"])))


# --------------------------------------------------------------------------- table and plots


def fused_schemes():
    return [*SCHEMES, *([SEARCH] if config["fusion_search"]["enabled"] else [])]


def table_rows():
    """The table spec (msg3d.report.table): one row per dataset and split, in config order."""
    rows = []
    for name, ds in DATASETS.items():
        for split in ds["splits"]:
            at = dict(dataset=name, split=split)
            results = {}
            for modality in CONFIG_MODALITIES:
                results[modality] = {
                    "metrics": path("metrics", modality=modality, **at),
                    "source": (
                        "pretrained"
                        if modality in ds["checkpoints"].get(split, {})
                        else "trained"
                    ),
                }
            for scheme in fused_schemes():
                results[scheme] = {
                    "metrics": path("fused_metrics", scheme=scheme, **at),
                    "source": "fusion",
                }
            reference = (
                f"{ds['ntu']}_{split}_{ds['annotation']}" if ds["reference"] else None
            )
            rows.append(
                {
                    "dataset": name,
                    "split": split,
                    "annotation": ds["annotation"],
                    "reference": reference,
                    "results": results,
                }
            )
    return rows


TABLE_SPEC = canonical(table_rows())
REFERENCE_TABLE = "config/model_zoo_reference.yaml"
USES_REFERENCE = any(ds["reference"] for ds in DATASETS.values())


def get_table_inputs(wildcards):
    files = [
        item["metrics"] for row in table_rows() for item in row["results"].values()
    ]
    return [*files, *([REFERENCE_TABLE] if USES_REFERENCE else [])]


REFERENCE_ARG = f"--reference {shlex.quote(REFERENCE_TABLE)}" if USES_REFERENCE else ""


def trained_modalities(dataset, split):
    checkpoints = DATASETS[dataset]["checkpoints"].get(split, {})
    return [m for m in CONFIG_MODALITIES if m not in checkpoints]


def trained_epochs(wildcards):
    """(modality, epochs.csv) of each modality trained here."""
    return [
        (m, path("epochs", modality=m, **wildcards))
        for m in trained_modalities(wildcards.dataset, wildcards.split)
    ]


def get_curve_inputs(wildcards):
    return [epochs for _, epochs in trained_epochs(wildcards)]


def get_curve_runs(wildcards):
    return quoted_pairs(trained_epochs(wildcards))


def scores_file(wildcards, entry):
    """The scores pickle of a modality or a fixed-weight fusion scheme."""
    if entry in SCHEMES:
        return path("fused_scores", scheme=entry, **wildcards)
    return path("scores", modality=entry, **wildcards)


def get_confusion_inputs(wildcards):
    return with_samples([scores_file(wildcards, wildcards.entry)])


def get_per_class_inputs(wildcards):
    return with_samples([scores_file(wildcards, e) for e in ENTRIES])


def get_per_class_scores(wildcards):
    return quoted_pairs((e, scores_file(wildcards, e)) for e in ENTRIES)


def get_final_output():
    """The targets of the default target: the table and, per dataset and split, the plots."""
    targets = [path("table_md"), path("table_csv")]
    for name, ds in DATASETS.items():
        for split in ds["splits"]:
            at = dict(dataset=name, split=split)
            if trained_modalities(name, split):
                targets.append(path("curves", **at))
            targets.append(path("per_class", **at))
            targets += [path("confusion", entry=e, **at) for e in ENTRIES]
    return targets
