# Config validation, the code digests, and the helpers that turn the config into paths, params and
# targets. No rules here (the linter wants functions and rules apart).

import json
import os
import shlex
from pathlib import Path

from snakemake.utils import validate

validate(config, "../schemas/config.schema.yaml")

# layout of each annotation kind, and the benchmarks each NTU release defines
LAYOUTS = {"3dkp": "nturgb+d", "hrnet": "coco"}
NTU_SPLITS = {"ntu60": ["xsub", "xview"], "ntu120": ["xsub", "xset"]}
DATASETS = config["datasets"]
STREAMS = config["streams"]
SCHEMES = config["fusion"]
SEARCH = "search"  # scheme name of the weight search (fusion_search)
# everything with a scores pickle: the streams and the fixed-weight fusion schemes
ENTRIES = [*STREAMS, *SCHEMES]
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


def _check_config():
    """Cross-key checks the schema cannot express; a clear error at parse time."""
    for name, ds in DATASETS.items():
        where = f"config: datasets.{name}"
        bad = [s for s in ds["splits"] if s not in NTU_SPLITS[ds["ntu"]]]
        if bad:
            raise ValueError(
                f"{where}.splits: {bad} not defined for {ds['ntu']} (use {NTU_SPLITS[ds['ntu']]})"
            )
        if ds["source"] != "demo" and not ds["path"]:
            raise ValueError(f"{where}.path: required for source {ds['source']}")
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
        for split, streams in ds["checkpoints"].items():
            if split not in ds["splits"]:
                raise ValueError(
                    f"{where}.checkpoints.{split}: not one of the dataset's splits {ds['splits']}"
                )
            bad = [s for s in streams if s not in STREAMS]
            if bad:
                raise ValueError(
                    f"{where}.checkpoints.{split}: streams {bad} are not in streams {STREAMS}"
                )
    for scheme, weights in SCHEMES.items():
        bad = [s for s in weights if s not in STREAMS]
        if bad:
            raise ValueError(
                f"config: fusion.{scheme}: streams {bad} are not in streams {STREAMS}"
            )
        if not any(weights.values()):
            raise ValueError(f"config: fusion.{scheme}: all weights are zero")
    if config["demo"]["min_frames"] > config["demo"]["max_frames"]:
        raise ValueError("config: demo.min_frames is larger than demo.max_frames")


_check_config()


def canonical(obj):
    """Canonical JSON: the same content gives the same params, whatever the key order."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def choice(names):
    """Regex matching exactly one of ``names`` (none: a regex that never matches)."""
    return "|".join(sorted(names, key=len, reverse=True)) or "(?!)"


# --------------------------------------------------------------------------- code digests


def get_code(command, modality=None):
    """Digest of the msg3d code that `msg3d COMMAND` runs (msg3d.provenance), for `params: code=`;
    the train job passes it on, and the engine records the same value in config.json."""
    return code_digest(COMMANDS[command][0], modality)


def get_derive_code(wildcards):
    """A derive job's code digest holds only the bone/motion operators its modality runs."""
    return get_code("derive", wildcards.stream)


# --------------------------------------------------------------------------- data


# datasets read from .skeleton files (converted) and from PYSKL pickles (imported)
SKELETON_DATASETS = [
    n for n, d in DATASETS.items() if d["source"] in ("demo", "ntu_raw")
]
PYSKL_DATASETS = [n for n, d in DATASETS.items() if d["source"] == "pyskl"]


def annotation_source(wildcards):
    """convert_ntu's input: the demo folder, or the raw folder (ancient: adding files does not rerun)."""
    ds = DATASETS[wildcards.dataset]
    if ds["source"] == "demo":
        return f"results/demo/{wildcards.dataset}/skeletons"
    return ancient(ds["path"])


def pyskl_source(wildcards):
    return DATASETS[wildcards.dataset]["path"]


def ntu_release(wildcards):
    return DATASETS[wildcards.dataset]["ntu"]


def layout(wildcards):
    return LAYOUTS[DATASETS[wildcards.dataset]["annotation"]]


# --------------------------------------------------------------------------- train / test

TRAIN_HPARAMS = canonical(config["train"])
DEVICE_ARG = f"--device {config['device']}" if config["device"] else ""


def given_checkpoint(wildcards):
    """The checkpoint the config names for this dataset/split/stream, or None (train it)."""
    return (
        DATASETS[wildcards.dataset]["checkpoints"]
        .get(wildcards.split, {})
        .get(wildcards.stream)
    )


def is_url(location):
    return location.startswith(("http://", "https://"))


def run_dir(wildcards, output):
    """The training run folder, which holds the train job's outputs (and latest.pth, not an output)."""
    return str(Path(output.epochs).parent)


def run_file(dataset, split, stream, name):
    return f"results/train/{dataset}/{split}/{stream}/{name}"


def test_weights(wildcards):
    """The test's checkpoint input: the train job's outputs, a local .pth, or a downloaded one."""
    given = given_checkpoint(wildcards)
    if given is None:
        # with `checkpoint: latest` they stand for latest.pth, which the job writes but cannot declare
        return [
            run_file(wildcards.dataset, wildcards.split, wildcards.stream, name)
            for name in ("best.pth", "epochs.csv")
        ]
    if is_url(given):
        return "resources/checkpoints/{dataset}/{split}/{stream}.pth".format(
            **wildcards
        )
    return given


def test_checkpoint(wildcards):
    """The .pth file that `msg3d test` loads (inside the run folder when trained here)."""
    if given_checkpoint(wildcards) is None:
        which = config["test"]["checkpoint"]
        return run_file(
            wildcards.dataset, wildcards.split, wildcards.stream, f"{which}.pth"
        )
    return test_weights(wildcards)


def checkpoint_url(wildcards):
    given = given_checkpoint(wildcards)
    if given is None or not is_url(given):
        raise ValueError(
            f"no checkpoint URL configured for {wildcards.dataset} {wildcards.split} {wildcards.stream}"
        )
    return given


def stream_scores(dataset, split, stream):
    return f"results/test/{dataset}/{split}/{stream}/scores.pkl"


# --------------------------------------------------------------------------- fusion


def scheme_streams(scheme):
    return sorted(config["streams"]) if scheme == SEARCH else sorted(SCHEMES[scheme])


def fusion_inputs(wildcards, scheme=None):
    """Scores and sample lists of the streams a scheme fuses."""
    scheme = scheme or wildcards.scheme
    stems = [
        f"results/test/{wildcards.dataset}/{wildcards.split}/{s}/scores"
        for s in scheme_streams(scheme)
    ]
    return [
        *(f"{stem}.pkl" for stem in stems),
        *(f"{stem}_samples.csv" for stem in stems),
    ]


def search_inputs(wildcards):
    return fusion_inputs(wildcards, SEARCH)


def scores_args(dataset, split, streams):
    return " ".join(
        shlex.quote(f"{s}={stream_scores(dataset, split, s)}") for s in streams
    )


def fusion_scores(wildcards):
    return scores_args(
        wildcards.dataset, wildcards.split, scheme_streams(wildcards.scheme)
    )


def search_scores(wildcards):
    return scores_args(wildcards.dataset, wildcards.split, scheme_streams(SEARCH))


def fusion_weights(wildcards):
    return canonical(SCHEMES[wildcards.scheme])


SEARCH_GRID = ",".join(str(g) for g in sorted(set(config["fusion_search"]["grid"])))


# --------------------------------------------------------------------------- table and plots


def fused_schemes():
    return [*SCHEMES, *([SEARCH] if config["fusion_search"]["enabled"] else [])]


def table_rows():
    """The table spec (msg3d.report.table): one row per dataset and split, in config order."""
    rows = []
    for name, ds in DATASETS.items():
        for split in ds["splits"]:
            results = {}
            for stream in STREAMS:
                results[stream] = {
                    "metrics": f"results/test/{name}/{split}/{stream}/metrics.json",
                    "source": (
                        "pretrained"
                        if stream in ds["checkpoints"].get(split, {})
                        else "trained"
                    ),
                }
            for scheme in fused_schemes():
                results[scheme] = {
                    "metrics": f"results/fusion/{name}/{split}/{scheme}.json",
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


def table_inputs(wildcards):
    files = [
        item["metrics"] for row in table_rows() for item in row["results"].values()
    ]
    if any(ds["reference"] for ds in DATASETS.values()):
        files.append(REFERENCE_TABLE)
    return files


def reference_arg(wildcards):
    return (
        f"--reference {REFERENCE_TABLE}"
        if REFERENCE_TABLE in table_inputs(wildcards)
        else ""
    )


def trained_streams(dataset, split):
    return [
        s for s in STREAMS if s not in DATASETS[dataset]["checkpoints"].get(split, {})
    ]


def curve_inputs(wildcards):
    return [
        run_file(wildcards.dataset, wildcards.split, s, "epochs.csv")
        for s in trained_streams(wildcards.dataset, wildcards.split)
    ]


def curve_runs(wildcards):
    return " ".join(
        shlex.quote(
            f"{s}={run_file(wildcards.dataset, wildcards.split, s, 'epochs.csv')}"
        )
        for s in trained_streams(wildcards.dataset, wildcards.split)
    )


def scores_file(dataset, split, entry):
    """The scores pickle of a stream or a fixed-weight fusion scheme."""
    if entry in SCHEMES:
        return f"results/fusion/{dataset}/{split}/{entry}.pkl"
    return stream_scores(dataset, split, entry)


def confusion_scores(wildcards):
    return scores_file(wildcards.dataset, wildcards.split, wildcards.entry)


def confusion_inputs(wildcards):
    stem = confusion_scores(wildcards)[: -len(".pkl")]
    return [f"{stem}.pkl", f"{stem}_samples.csv"]


def confusion_title(wildcards):
    return f"{wildcards.dataset} {wildcards.split}: {wildcards.entry}"


def per_class_inputs(wildcards):
    stems = [
        scores_file(wildcards.dataset, wildcards.split, e)[: -len(".pkl")]
        for e in ENTRIES
    ]
    return [
        *(f"{stem}.pkl" for stem in stems),
        *(f"{stem}_samples.csv" for stem in stems),
    ]


def per_class_scores(wildcards):
    return " ".join(
        shlex.quote(f"{e}={scores_file(wildcards.dataset, wildcards.split, e)}")
        for e in ENTRIES
    )


def plot_title(wildcards):
    return f"{wildcards.dataset} {wildcards.split}"


def final_outputs():
    """The targets of the default rule: the table and, per dataset and split, the plots."""
    targets = ["results/model_zoo.md", "results/model_zoo.csv"]
    for name, ds in DATASETS.items():
        for split in ds["splits"]:
            plots = f"results/plots/{name}/{split}"
            if trained_streams(name, split):
                targets.append(f"{plots}/curves.svg")
            targets.append(f"{plots}/per_class.svg")
            targets += [f"{plots}/confusion_{entry}.svg" for entry in ENTRIES]
    return targets
