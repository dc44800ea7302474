# Config validation, the artefact paths, the code digests, and the get_* helpers that turn the
# config into inputs, params and targets. Functions only: the linter wants them apart from rules.

import json
import math
import os
import re
import shlex

import jsonschema
import yaml
from snakemake.logging import logger
from snakemake.utils import update_config, validate

# The Snakefile names no config file (the default profile names config/config.yaml, which a
# command-line --configfile replaces), so a run is exactly the files given with --configfile,
# merged in order, and the --config values over them.
if "datasets" not in config:
    raise ValueError(
        "config: no datasets: name a config file with --configfile (the default profile names"
        " config/config.yaml), e.g. `snakemake --cores 8 --configfile config/demo.yaml`"
        " for the demo, or your copy of config/config.yaml (or of config/examples/*.yaml) for"
        " real data; targets go before --configfile or after `--`"
    )


def _typed_command_line_config():
    """The `--config KEY=VALUE` overrides with each VALUE read as YAML, as a config file's would
    be. Snakemake reads a mapping or list VALUE with every leaf a string (`train={lr: 0.05}` gives
    lr "0.05", which the schema refuses; SNAKEMAKE.md §1.2), so read the words as given again; a
    VALUE that is not YAML stays the string Snakemake made of it."""
    typed = {}
    for entry in workflow.config_settings.config_args or ():
        key, _, value = entry.partition("=")
        try:
            typed[key] = yaml.safe_load(value) if value else None
        except yaml.YAMLError:
            pass
    return typed


update_config(config, _typed_command_line_config())

if "streams" in config:
    raise ValueError(
        "config: the key 'streams' is now 'modalities' (the j/b/jm/bm list); rename it"
    )
if "num_clips" in config.get("test", {}):
    raise ValueError(
        "config: test.num_clips is now train.test_clips (recorded in each checkpoint, so that"
        " msg3d test and msg3d predict apply it alike); move it"
    )
validate(config, "../schemas/config.schema.yaml")


def _check_integers(schema_file):
    """JSON Schema counts 2.0 as an integer, so `test_clips: 2.0` passes validate() and then fails
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

# Each annotation kind: its skeleton layout, feature convention (msg3d.data.features) and the
# training recipe its hyper-parameters start from (msg3d.engine.hparams.RECIPES).
ANNOTATIONS = {
    "3dkp": {"layout": NTU_RGBD.name, "features": PYSKL.name, "recipe": "pyskl"},
    "hrnet": {"layout": COCO.name, "features": PYSKL.name, "recipe": "pyskl"},
    "openpose": {
        "layout": OPENPOSE.name,
        "features": MSG3D_KINETICS.name,
        "recipe": "msg3d-kinetics",
    },
}
# The benchmarks of each release -> (train split, val split). NTU: the X of its X_train / X_val
# split names; Kinetics-400 has one, "val" (train on train, test on val: PYSKL's split names).
RELEASE_BENCHMARKS = {
    ntu: {
        name.removesuffix("_train"): (name, name.removesuffix("_train") + "_val")
        for name in names
        if name.endswith("_train")
    }
    for ntu, names in SPLIT_NAMES.items()
}
RELEASE_BENCHMARKS[KINETICS400] = {"val": KINETICS_SPLITS}
BENCHMARKS = list(
    dict.fromkeys(b for names in RELEASE_BENCHMARKS.values() for b in names)
)

# --------------------------------------------------------------------------- the config

DATASETS = config["datasets"]


def release(ds):
    """The release a dataset entry follows: its `ntu` key, or Kinetics-400 for OpenPose data."""
    return KINETICS400 if ds["annotation"] == "openpose" else ds["ntu"]


def dataset_benchmarks(ds):
    """A dataset's benchmarks -> (train split, val split): its own `split_names` (a PYSKL pickle of
    its own, whose splits are e.g. train / val), else its release's."""
    if ds["split_names"]:
        return {name: tuple(pair) for name, pair in ds["split_names"].items()}
    return RELEASE_BENCHMARKS[release(ds)]


CONFIG_MODALITIES = config["modalities"]
SCHEMES = config["fusion"]
SEARCH = "search"  # scheme name of the weight search (fusion_search)
# MS-G3D's ensemble: the streams' logits summed (msg3d fuse --logits); {} leaves it out
ENSEMBLE = "ensemble"
ENSEMBLE_WEIGHTS = config["ensemble"]
# everything with a scores pickle: the modalities and the fixed-weight fusion schemes
ENTRIES = [*CONFIG_MODALITIES, *SCHEMES]
# Train and test jobs. With device cpu: no GPU and one thread each, so Snakemake runs as many at
# once as --cores allows: the fastest way to train many small models on a CPU, and one busy thread
# per core also holds up on a shared machine, where torch's spinning thread pool slows down many
# times over (raise it with --set-threads train=N for one large CPU training).
# On GPUs (device null or cuda): a test job takes one GPU, a train job `train_gpus` (all: every GPU
# of the machine, DDP), each claiming free cards of its own when it starts (msg3d launch: Snakemake
# only counts GPUs). The machine's GPUs are the local cap on the `gpu` resource (LOCAL_GPU_SLOTS;
# one slot on a machine without any, where the jobs then run one at a time on the CPU). Each GPU
# comes with an equal share of --cores, up to 8 torch threads (and data-loading workers' cores), so
# that `--cores N` leaves room for one job per GPU (Snakemake exports OMP_NUM_THREADS={threads}).
ON_CPU = config["device"] == "cpu"
LOCAL_GPUS = [] if ON_CPU else visible_gpus()
LOCAL_GPU_SLOTS = max(1, len(LOCAL_GPUS))
# --cores (None under a cluster executor, which needs none), at most the machine's
CORES = min(
    workflow.global_resources["_cores"].value or os.cpu_count() or 1,
    os.cpu_count() or 1,
)
THREADS_PER_GPU = max(1, min(8, CORES // LOCAL_GPU_SLOTS))
GPUS_PER_JOB = 0 if ON_CPU else 1
ALL_GPUS = config["train_gpus"] == "all"
TRAIN_GPUS = 0 if ON_CPU else LOCAL_GPU_SLOTS if ALL_GPUS else config["train_gpus"]
TORCH_THREADS = 1 if ON_CPU else THREADS_PER_GPU
TRAIN_THREADS = 1 if ON_CPU else THREADS_PER_GPU * max(1, TRAIN_GPUS)


def is_url(location):
    return location.startswith(("http://", "https://"))


def checkpoint_location(entry):
    """The path or URL of a datasets.<name>.checkpoints entry: the entry, or its `url` when it is
    {url, sha256}."""
    return entry["url"] if isinstance(entry, dict) else entry


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
        benchmarks = list(dataset_benchmarks(ds))
        bad = [s for s in ds["splits"] if s not in benchmarks]
        if bad:
            defined = (
                f"in {where}.split_names" if ds["split_names"] else f"for {release(ds)}"
            )
            raise ValueError(
                f"{where}.splits: {bad} not defined {defined} (use {benchmarks})"
            )
        if ds["split_names"] and ds["source"] != "pyskl":
            raise ValueError(
                f"{where}.split_names: only for a PYSKL pickle of your own (source pyskl);"
                f" {ds['source']} data has its release's split names"
            )
        if ds["source"] != "demo":
            if not ds["path"]:
                raise ValueError(f"{where}.path: required for source {ds['source']}")
            _check_path(
                f"{where}.path",
                ds["path"],
                folder=ds["source"] in ("ntu_raw", "kinetics_json"),
            )
        if ds["source"] == "demo" and (
            (ds["ntu"], ds["annotation"]) != ("ntu60", "3dkp")
            and ds["annotation"] != "openpose"
        ):
            raise ValueError(
                f"{where}: the demo is NTU60-style 3D data (ntu: ntu60, annotation: 3dkp)"
                " or Kinetics-style OpenPose data (annotation: openpose)"
            )
        if ds["source"] == "ntu_raw" and ds["annotation"] != "3dkp":
            raise ValueError(
                f"{where}.annotation: raw .skeleton files hold 3D joints (3dkp)"
            )
        if (ds["source"] == "kinetics_json") != (ds["annotation"] == "openpose") and (
            ds["source"] != "demo"
        ):
            raise ValueError(
                f"{where}: the ST-GCN Kinetics-skeleton release (source kinetics_json) is"
                " OpenPose data (annotation: openpose), and only it is"
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
            for modality, entry in modalities.items():
                location = checkpoint_location(entry)
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
    bad = [m for m in ENSEMBLE_WEIGHTS if m not in CONFIG_MODALITIES]
    if bad:
        raise ValueError(
            f"config: ensemble: modalities {bad} are not in modalities {CONFIG_MODALITIES}"
            " (ensemble: {} leaves MS-G3D's ensemble out)"
        )
    if not all(math.isfinite(w) for w in ENSEMBLE_WEIGHTS.values()):
        raise ValueError("config: ensemble: the weights must be finite numbers")
    if ENSEMBLE_WEIGHTS and not any(ENSEMBLE_WEIGHTS.values()):
        raise ValueError(
            "config: ensemble: all weights are zero (ensemble: {} leaves it out)"
        )
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
# are already several shell words, each quoted when built here (device, reference,
# scores, runs, sha256, release). tests/test_workflow.py checks both rules. A path from the config also goes through
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
    # the annotation pickle, checked once and cut into shards that each derive job reads in turn
    "prepared": "results/annotations/{dataset}/prepared",
    "store": "results/stores/{dataset}/{modality}",
    # a training run's folder: latest.pth is written there but is no declared output
    "run": "results/train/{dataset}/{split}/{modality}",
    "downloaded": "resources/checkpoints/{dataset}/{split}/{modality}.pth",
    "scores": "results/test/{dataset}/{split}/{modality}/scores.pkl",
    "metrics": "results/test/{dataset}/{split}/{modality}/metrics.json",
    "logits": "results/test/{dataset}/{split}/{modality}/logits.pkl",
    "fused_metrics": "results/fusion/{dataset}/{split}/{scheme}.json",
    "fused_scores": "results/fusion/{dataset}/{split}/{scheme}.pkl",
    "table_md": "results/model_zoo.md",
    "table_html": "results/model_zoo.html",
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


# datasets read from .skeleton files and from Kinetics JSON clips (converted), and from PYSKL
# pickles (imported); the demo makes either kind of raw data
KINETICS_DATASETS = [n for n, d in DATASETS.items() if release(d) == KINETICS400]
SKELETON_DATASETS = [
    n
    for n, d in DATASETS.items()
    if d["source"] in ("demo", "ntu_raw") and n not in KINETICS_DATASETS
]
PYSKL_DATASETS = [n for n, d in DATASETS.items() if d["source"] == "pyskl"]


def get_skeletons(wildcards):
    """convert_ntu's and convert_kinetics' input: the demo's raw data, or the raw folder
    (ancient: adding files does not rerun)."""
    ds = DATASETS[wildcards.dataset]
    if ds["source"] == "demo":
        return path("skeletons", **wildcards)
    return ancient(command_path(ds["path"]))


def get_annotation(wildcards, key):
    """The layout, feature convention or recipe (``key``) of the dataset's annotation kind."""
    return ANNOTATIONS[DATASETS[wildcards.dataset]["annotation"]][key]


def get_pyskl_annotations(wildcards):
    """import_pyskl's input: the dataset's PYSKL annotation pickle."""
    return command_path(DATASETS[wildcards.dataset]["path"])


# --------------------------------------------------------------------------- train / test


def dataset_hparams(name):
    """A dataset's hyper-parameters: the top-level train: and then the dataset's own train:
    overrides (model key by key) merged over its annotation's recipe by msg3d (its defaults and
    bounds), so a bad value fails when the config is parsed."""
    ds = DATASETS[name]
    own = ds.get("train", {})
    overrides = {
        **config["train"],
        **own,
        "model": {**config["train"].get("model", {}), **own.get("model", {})},
    }
    try:
        return resolve_hparams(overrides, ANNOTATIONS[ds["annotation"]]["recipe"])
    except ValueError as exc:
        own_keys = f", over its own datasets.{name}.train" if own else ""
        raise ValueError(f"config: train: {exc} (dataset {name}{own_keys})") from None


HPARAMS = {name: dataset_hparams(name) for name in DATASETS}


def get_hparams(wildcards):
    """The dataset's resolved hyper-parameters as canonical JSON (msg3d train --hparams-json)."""
    return canonical(HPARAMS[wildcards.dataset].to_dict())


def get_split_names(wildcards):
    """(train split, val split) of the job's benchmark in the dataset's annotation pickle."""
    return dataset_benchmarks(DATASETS[wildcards.dataset])[wildcards.split]


def get_release_check(wildcards):
    """import-pyskl's --dataset: check the pickle against its NTU release, unless the dataset names
    its own splits (a pickle of its own, e.g. PYSKL's K400 or custom data: no release to check).
    """
    ds = DATASETS[wildcards.dataset]
    return "" if ds["split_names"] else f"--dataset {shlex.quote(ds['ntu'])}"


DEVICE_ARG = f"--device {shlex.quote(config['device'])}" if config["device"] else ""


def _granted_gpus(rule):
    """The GPUs a profile or the command line grants each job of ``rule`` (set-resources, else
    default-resources), or 0 a value computed per job counts as 0."""
    settings = workflow.resource_settings
    # Snakemake 9.27 keeps Resource objects (.raw: the value); earlier 9.x, DefaultResources
    # (.parsed: a dict) and plain values
    default = settings.default_resources
    for resources in (
        settings.overwrite_resources.get(rule, {}),
        getattr(default, "parsed", default) or {},
    ):
        if "gpu" in resources:
            value = getattr(resources["gpu"], "raw", resources["gpu"])
            return value if isinstance(value, int) else 0
    return 0


def _warn_cpu_misfits():
    """Warn (once, when the config is read) about a `device: cpu` that a real run would not
    want: a full-width model to train on one CPU thread per job, or jobs granted GPUs they would
    leave idle (a train job granted several would start as many CPU processes)."""
    if not ON_CPU:
        return
    full_width = ModelHParams().base_channels  # PYSKL's model; the demo's are narrower
    trained = [
        name
        for name, ds in DATASETS.items()
        if HPARAMS[name].model.base_channels >= full_width
        and any(
            m not in ds["checkpoints"].get(split, {})
            for split in ds["splits"]
            for m in CONFIG_MODALITIES
        )
    ]
    if trained:
        logger.warning(
            f"config: device is cpu, but {', '.join(trained)} train(s) the full-width model"
            f" (train.model.base_channels >= {full_width}) on one CPU thread per job, which takes"
            " weeks with PYSKL's recipe: set device: null (CUDA when available) to use a GPU, or"
            " train a narrow model for a CPU try-out (config/demo.yaml)"
        )
    granted = {rule: _granted_gpus(rule) for rule in ("train", "test")}
    granted = {rule: gpus for rule, gpus in granted.items() if gpus > 0}
    if granted:
        grants = ", ".join(f"{rule} {gpus}" for rule, gpus in granted.items())
        logger.warning(
            f"config: device is cpu, but the profile or the command line grants GPUs to each job"
            f" ({grants}; set-resources or default-resources gpu): the jobs hold them unused, and a"
            " train job granted several runs torchrun with as many CPU processes; set device: null"
            " or cuda to use them, or gpu: 0 for these rules"
        )


_warn_cpu_misfits()


def _cap_local_gpu_jobs():
    """On a local run, as many GPU jobs at once as the machine has GPUs (each claims its own cards),
    unless `--resources gpu=N` or a profile set a cap; a cluster executor needs no local cap, and a
    job running inside a cluster job (remote exec) is alone. While the Snakefile is read the
    executor plugin is not set yet (local_exec is True even under --executor slurm), but a cluster
    run has `--jobs`, i.e. `_nodes`, set and `--cores` not."""
    capped = "gpu" in workflow.global_resources
    cluster = workflow.nodes is not None
    if workflow.local_exec and not workflow.remote_exec and not cluster and not capped:
        workflow.register_resource("gpu", LOCAL_GPU_SLOTS)


_cap_local_gpu_jobs()


def checkpoint_entry(wildcards):
    """The config's checkpoints entry for this dataset/split/modality, or None (train it)."""
    return (
        DATASETS[wildcards.dataset]["checkpoints"]
        .get(wildcards.split, {})
        .get(wildcards.modality)
    )


def given_checkpoint(wildcards):
    """The checkpoint the config names for this dataset/split/modality (a URL, or a path ready for
    the command line), or None (train it)."""
    entry = checkpoint_entry(wildcards)
    if entry is None:
        return None
    given = checkpoint_location(entry)
    return given if is_url(given) else command_path(given)


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


def get_checkpoint_sha256(wildcards):
    """download_checkpoint's `--sha256 HEX` (quoted) when the entry gives the hash, else nothing."""
    entry = checkpoint_entry(wildcards)
    if not isinstance(entry, dict):
        return ""
    # one case, so that writing the hash in the other one does not rerun the download
    return f"--sha256 {shlex.quote(entry['sha256'].lower())}"


# --------------------------------------------------------------------------- fusion


def fused_modalities(scheme):
    """The modalities a scheme fuses: its weights' keys, or all of them for the search."""
    if scheme == ENSEMBLE:
        return sorted(ENSEMBLE_WEIGHTS)
    return sorted(CONFIG_MODALITIES) if scheme == SEARCH else sorted(SCHEMES[scheme])


def fused_score_files(wildcards, scheme=None):
    """(modality, stream) of the modalities a scheme fuses: their scores pickles, or for MS-G3D's
    ensemble their logits. ``scheme``: the job's {scheme} wildcard unless given (fuse_search and
    fuse_ensemble jobs have none: the search's is the default, the ensemble's rule names it).
    """
    scheme = scheme or wildcards.get("scheme", SEARCH)
    stream = "logits" if scheme == ENSEMBLE else "scores"
    return [
        (m, path(stream, modality=m, **wildcards)) for m in fused_modalities(scheme)
    ]


def get_fusion_inputs(wildcards, scheme=None):
    """Streams and sample lists of the modalities the scheme fuses."""
    return with_samples([stream for _, stream in fused_score_files(wildcards, scheme)])


def get_fusion_scores(wildcards, scheme=None):
    return quoted_pairs(fused_score_files(wildcards, scheme))


SEARCH_GRID = ",".join(str(g) for g in sorted(set(config["fusion_search"]["grid"])))


# --------------------------------------------------------------------------- table and plots


def fused_schemes():
    return [
        *SCHEMES,
        *([SEARCH] if config["fusion_search"]["enabled"] else []),
        *([ENSEMBLE] if ENSEMBLE_WEIGHTS else []),
    ]


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
                f"{release(ds)}_{split}_{ds['annotation']}" if ds["reference"] else None
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


def plot_class_names(wildcards):
    """`msg3d plot --class-names`: the NTU release for NTU-format data, whose labels are its
    actions (A001 = label 0) even when the demo has only the first few; `auto` for the rest, named
    by their class count (Kinetics-400's 400; the Kinetics demo's few by their number).
    """
    ds = DATASETS[wildcards.dataset]
    return "auto" if release(ds) == KINETICS400 else ds["ntu"]


def get_final_output():
    """The targets of the default target: the table and, per dataset and split, the plots."""
    targets = [path("table_md"), path("table_csv"), path("table_html")]
    for name, ds in DATASETS.items():
        for split in ds["splits"]:
            at = dict(dataset=name, split=split)
            if trained_modalities(name, split):
                targets.append(path("curves", **at))
            targets.append(path("per_class", **at))
            targets += [path("confusion", entry=e, **at) for e in ENTRIES]
    return targets


# --------------------------------------------------------------------------- export (optional target)


def export_path(kind, **wildcards):
    """The ONNX model ("onnx") exported from a run's tested checkpoint (test.checkpoint: best or
    latest), beside it as <checkpoint>.onnx, or the JSON `msg3d export-onnx` writes beside that
    ("json"); the given wildcards filled in, the others left as they are."""
    from msg3d.deploy.onnx_export import sidecar_path

    tested = path("checkpoint", checkpoint=config["test"]["checkpoint"], **wildcards)
    model = tested.removesuffix(".pth") + ".onnx"
    return model if kind == "onnx" else str(sidecar_path(model))


def get_export_weights(wildcards):
    """export_onnx's input: the train job's outputs. Only models trained here are exported: a
    checkpoint the config gives (PYSKL's) records nothing of how it is applied."""
    if given_checkpoint(wildcards) is not None:
        raise ValueError(
            f"export: {wildcards.dataset} {wildcards.split} {wildcards.modality} is not trained here"
            " (the config gives its checkpoint); export it with `msg3d export-onnx` and its facts"
        )
    return get_test_weights(wildcards)


def get_export_targets():
    """The `export` target: the ONNX model and its JSON of every modality trained here."""
    return [
        export_path(kind, dataset=name, split=split, modality=modality)
        for name, ds in DATASETS.items()
        for split in ds["splits"]
        for modality in trained_modalities(name, split)
        for kind in ("onnx", "json")
    ]


# --- Memory per job (mem_mb) ---
# Each data job declares `resources: mem_mb`, so that Snakemake runs no more of them at once than
# `--resources mem_mb=N` (or a cluster job) allows. A job's MB: a floor, plus MB per MB of its
# input files, per file in its input folders and per thread (worker process). The factors come
# from the peak resident memory of each job's processes together (benchmarks/data_memory.py;
# Python 3.11, numpy 2.4, x86-64 Linux, ~40 MB per Python process; MB there are MiB, as in
# input.size_mb, 5 % more than Snakemake's MB), with room to spare:
# * import_pyskl, prepare_annotations load the whole annotation pickle: 338 and 335 MB for a 284 MB
#   pickle of 10,000 NTU-shaped samples (M=2, T~100, float16), 1.04 MB per MB above the baseline
#   (declared: 598 MB); 385 and 354 MB for 175 MB of 114,480 tiny ones (M=1, T=10), where the
#   objects around the arrays weigh most (declared: 445 MB).
# * derive reads prepared annotations one shard at a time (msg3d.data.derive.SHARD_BYTES): 103 MB
#   for those 10,000 samples, 152 MB for the 114,480 (NTU120's count: their names and offsets).
#   Each derive job loaded the whole pickle before: 336 and 358 MB.
# * convert_ntu, convert_kinetics stream their pickle, so the arrays are not held; what grows is
#   the list of files: convert-ntu 105 and 111.5 MB for 1,000 and 6,000 .skeleton files (2 jobs;
#   1.3 KB per file; 208 MB for 6,000 before it streamed), convert-kinetics 108 and 119 MB for
#   1,000 and 4,000 clips (3.5 KB per clip).
# * make_demo, make_kinetics_demo: 41 MB.
# rule: (MB, MB per MB of input files, MB per file in input folders, MB per thread)
DATA_MEMORY = {
    "make_demo": (100, 0, 0, 0),
    "make_kinetics_demo": (100, 0, 0, 0),
    "convert_ntu": (60, 0, 0.002, 50),
    "convert_kinetics": (60, 0, 0.005, 50),
    "import_pyskl": (200, 1.4, 0, 0),
    "prepare_annotations": (200, 1.4, 0, 0),
    "derive": (250, 0, 0, 0),
}


def data_mem_mb(rule):
    """`resources: mem_mb` of a data rule: Snakemake calls it per job, with the job's input and
    threads, for DATA_MEMORY[rule]'s estimate in MB. Files are sized only where a factor asks for
    it (a dry run shows <TBD> until they exist); a folder's files are counted, not sized, and a
    folder not made yet (the demo's) counts none."""
    floor, per_mb, per_file, per_thread = DATA_MEMORY[rule]

    def mem_mb(wildcards, input, threads):
        estimate = floor + per_thread * threads
        if per_mb:
            estimate += per_mb * input.size_mb
        if per_file:
            estimate += per_file * sum(
                len(files) for folder in input for _, _, files in os.walk(folder)
            )
        return math.ceil(estimate)

    return mem_mb


# Train and test jobs: each process (one per GPU it trains on, else one) and its data-loading
# workers. Measured on the CPU (torch 2.13, x86-64): a loader worker holds 250 MB; a process ~800
# MB before activations; a full-width training step (base_channels 96, batch 16, T=100) peaks at
# 5.9 GB, about 330 MB per sample, and a full-width test at 1.9 GB for 60 clips, about 22 MB per
# clip; activations scale with samples x clip_len x base_channels. On a GPU they live on the card,
# and the process is allowed 3000 MB of host memory (torch, the CUDA context, pinned batches; an
# allowance, not a measurement: no GPU was at hand). A cluster profile's mem_mb replaces this.
MB_PER_WORKER = 250
MB_PER_PROCESS = 800
MB_PER_GPU_PROCESS = 3000
MB_PER_TRAIN_SAMPLE = 330  # at clip_len 100, base_channels 96
MB_PER_TEST_CLIP = 22  # at clip_len 100, base_channels 96


def job_mem_mb(command):
    """`resources: mem_mb` of the jobs of msg3d `command` (train or test) (see above)."""

    def mem_mb(wildcards):
        hp = HPARAMS[wildcards.dataset]
        on_gpu = bool(LOCAL_GPUS)  # none with device cpu
        processes = max(1, TRAIN_GPUS) if command == "train" and on_gpu else 1
        if on_gpu:
            process = MB_PER_GPU_PROCESS
        else:
            scale = hp.clip_len / 100 * hp.model.base_channels / 96
            if command == "train":
                activations = MB_PER_TRAIN_SAMPLE * hp.batch_size * scale
            else:
                activations = MB_PER_TEST_CLIP * hp.batch_size * hp.test_clips * scale
            process = MB_PER_PROCESS + activations
        return math.ceil(processes * (process + MB_PER_WORKER * hp.num_workers))

    return mem_mb
