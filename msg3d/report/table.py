"""`msg3d table`: the model-zoo table (markdown) and every metric (CSV).

The markdown follows PYSKL's MS-G3D model-zoo layout: one row per dataset + split + annotation,
columns Joint, Bone, Joint Motion, Bone-Motion, Two-Stream and Four-Stream top-1. Each cell shows
our number, PYSKL's published number beside it and the difference; a missing number is ``—``.
The CSV has one line per (row, stream or fusion scheme) with top-1, top-5 and mean-class accuracy.

What to tabulate comes as a JSON *spec* (the workflow builds it from its config)::

    [{"dataset": "ntu60", "split": "xsub", "annotation": "3dkp", "reference": "ntu60_xsub_3dkp",
      "results": {"j": {"metrics": "results/test/ntu60/xsub/j/metrics.json", "source": "trained"},
                  "2s": {"metrics": "results/fusion/ntu60/xsub/2s.json", "source": "fusion"}}}]

``reference`` is a key of the published-numbers YAML (``config/model_zoo_reference.yaml``) or null.
Metrics files hold ``top1``, ``top5``, ``mean_class_accuracy`` (fractions) and ``num_samples``;
fusion files also hold ``weights``. Nothing time-dependent is written: the same inputs give the
same bytes.
"""

import json
from pathlib import Path

import yaml

from msg3d.fileio import write_csv_atomic, write_text_atomic

# entry key -> column title, in the published table's order
COLUMNS = {
    "j": "Joint",
    "b": "Bone",
    "jm": "Joint Motion",
    "bm": "Bone-Motion",
    "2s": "Two-Stream",
    "4s": "Four-Stream",
}
ANNOTATIONS = {"3dkp": "3D skeleton", "hrnet": "HRNet 2D skeleton"}
MISSING = "—"
CSV_FIELDS = (
    "dataset", "split", "annotation", "entry", "title", "source", "weights", "num_samples",
    "top1", "top5", "mean_class_accuracy", "pyskl_top1", "diff_top1", "metrics_file",
)


def load_reference(path):
    """Read the published-numbers YAML: ``{"source": str, "results": {key: {entry: top1 %}}}``."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        try:
            ref = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("results"), dict):
        raise ValueError(f"{path}: expected a mapping with a 'results' mapping of published numbers")
    for key, cells in ref["results"].items():
        if not isinstance(cells, dict):
            raise ValueError(f"{path}: results.{key}: expected a mapping of entry -> top-1 (%)")
        for entry, value in cells.items():
            if entry not in COLUMNS or not isinstance(value, (int, float)):
                raise ValueError(f"{path}: results.{key}.{entry}: expected one of {list(COLUMNS)} with a number")
    return ref


def _load_metrics(path):
    """Read a metrics file; its accuracies must be numbers in [0, 1] (a NaN one comes from
    non-finite scores: an accuracy computed from them means nothing) and num_samples an integer."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: metrics file not found")
    with open(path, encoding="utf-8") as f:
        try:
            m = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(m, dict):
        raise ValueError(f"{path}: expected a JSON object of metrics, got {type(m).__name__}")
    for key in ("top1", "top5", "mean_class_accuracy", "num_samples"):
        if key not in m:
            raise ValueError(f"{path}: metrics file lacks {key!r}")
    num_samples = m["num_samples"]
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
        raise ValueError(f"{path}: num_samples must be a non-negative integer, got {num_samples!r}")
    for key in ("top1", "top5", "mean_class_accuracy"):
        value = m[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ValueError(f"{path}: {key} is {value!r}, not an accuracy in [0, 1] over its {num_samples} "
                             "samples (non-finite scores from a diverged or corrupt checkpoint?); nothing written")
    return m


def _pct(fraction):
    return 100.0 * float(fraction)


def collect(spec, reference):
    """Resolve the spec: a list of rows ``{dataset, split, annotation, reference, published, entries}``.

    ``entries`` maps entry key -> dict with the metrics (top-1 etc. in %), the source, the
    weights (fusion only) and the published top-1 (or None).
    """
    published_all = reference.get("results", {}) if reference else {}
    rows = []
    for i, row in enumerate(spec):
        for key in ("dataset", "split", "annotation", "results"):
            if key not in row:
                raise ValueError(f"table spec row {i}: missing {key!r}")
        ref_key = row.get("reference")
        if ref_key is not None and ref_key not in published_all:
            raise ValueError(
                f"table spec row {i} ({row['dataset']} {row['split']}): no published numbers under {ref_key!r}; "
                f"known keys: {', '.join(sorted(published_all))}"
            )
        published = published_all.get(ref_key, {}) if ref_key is not None else {}
        entries = {}
        for entry, item in sorted(row["results"].items(), key=lambda item: _order(item[0])):
            if "metrics" not in item:
                where = f"{row['dataset']} {row['split']}"
                raise ValueError(f"table spec row {i} ({where}): entry {entry!r} lacks 'metrics'")
            m = _load_metrics(item["metrics"])
            entries[entry] = {
                "top1": _pct(m["top1"]),
                "top5": _pct(m["top5"]),
                "mean_class_accuracy": _pct(m["mean_class_accuracy"]),
                "num_samples": int(m["num_samples"]),
                "source": item.get("source", ""),
                "weights": m.get("weights"),
                "pyskl_top1": published.get(entry),
                "metrics_file": str(item["metrics"]),
            }
        rows.append({
            **{k: row[k] for k in ("dataset", "split", "annotation")},
            "reference": ref_key, "published": published, "entries": entries,
        })
    return rows


def _cell(ours, published):
    """``ours / published (ours - published)``, with ``—`` for a missing number."""
    if ours is None and published is None:
        return MISSING
    if ours is None:
        return f"{MISSING} / {published:.1f}"
    if published is None:
        return f"{ours:.1f} / {MISSING}"
    # the difference of the numbers as shown, so that the cell adds up
    return f"{ours:.1f} / {published:.1f} ({round(ours, 1) - published:+.1f})"


def _order(name):
    """Sort key: the table's column order (j, b, jm, bm, 2s, 4s), other names after them by name."""
    order = list(COLUMNS)
    return (order.index(name) if name in order else len(order), name)


def _ordered(weights):
    return sorted(weights.items(), key=lambda item: _order(item[0]))


def _weights_text(weights):
    """``2 J : 2 B : 1 JM : 1 BM`` (streams with weight 0 left out)."""
    return " : ".join(f"{w:g} {name.upper()}" for name, w in _ordered(weights) if w)


def format_markdown(rows, reference_source=None):
    """The model-zoo markdown (a string)."""
    header = ["Dataset", "Split", "Annotation"] + [f"{title} Top1" for title in COLUMNS.values()]
    lines = [
        "# MS-G3D model zoo",
        "",
        "Top-1 accuracy (%) on each split's val set. Each cell: ours / PYSKL's published number "
        f"(difference, ours - PYSKL); {MISSING} where there is no number.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(":---:" for _ in header) + " |",
    ]
    for row in rows:
        annotation = ANNOTATIONS.get(row["annotation"], row["annotation"])
        cells = [row["dataset"], row["split"], annotation]
        for entry in COLUMNS:
            ours = row["entries"][entry]["top1"] if entry in row["entries"] else None
            cells.append(_cell(ours, row["published"].get(entry)))
        lines.append("| " + " | ".join(cells) + " |")

    notes = []
    fusion_weights = sorted({
        (entry, _weights_text(e["weights"]))
        for row in rows for entry, e in row["entries"].items() if entry in ("2s", "4s") and e["weights"]
    })
    for entry, text in fusion_weights:
        notes.append(f"- {COLUMNS[entry]}: weighted sum of the streams' probabilities, {text}.")
    pretrained = [
        f"{row['dataset']} {row['split']} {COLUMNS.get(entry, entry)}"
        for row in rows for entry, e in row["entries"].items() if e["source"] == "pretrained"
    ]
    if pretrained:
        notes.append(f"- Tested from a given checkpoint instead of trained here: {', '.join(pretrained)}.")
    if reference_source:
        notes.append(f"- PYSKL numbers: {reference_source}.")
    if notes:
        lines += ["", *notes]

    extra = [(row, entry, e) for row in rows for entry, e in row["entries"].items() if entry not in COLUMNS]
    if extra:
        lines += [
            "",
            "## Other fusion schemes",
            "",
            "Not PYSKL numbers. Schemes with searched weights were tuned on half of the val set and are "
            "measured on the other half only (see their JSON).",
            "",
            "| Dataset | Split | Annotation | Scheme | Weights | Samples | Top1 | Top5 | Mean class |",
            "| :---: | :---: | :---: | :---: | :---: | :---: | :---: | :---: | :---: |",
        ]
        for row, entry, e in extra:
            weights = _weights_text(e["weights"]) if e["weights"] else MISSING
            lines.append(
                f"| {row['dataset']} | {row['split']} | {ANNOTATIONS.get(row['annotation'], row['annotation'])} "
                f"| {entry} | {weights} | {e['num_samples']} | {e['top1']:.1f} | {e['top5']:.1f} "
                f"| {e['mean_class_accuracy']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def csv_rows(rows):
    """Every metric, one CSV row (``CSV_FIELDS``) per (row, entry)."""
    for row in rows:
        for entry, e in row["entries"].items():
            pub = e["pyskl_top1"]
            yield [
                row["dataset"], row["split"], row["annotation"], entry, COLUMNS.get(entry, entry), e["source"],
                " ".join(f"{name}:{w:g}" for name, w in _ordered(e["weights"])) if e["weights"] else "",
                e["num_samples"], f"{e['top1']:.2f}", f"{e['top5']:.2f}", f"{e['mean_class_accuracy']:.2f}",
                "" if pub is None else f"{pub:.1f}", "" if pub is None else f"{e['top1'] - pub:+.2f}",
                e["metrics_file"],
            ]


def write_table(spec, reference_path, out_md, out_csv):
    """Write the markdown and CSV tables for ``spec`` (see the module docstring)."""
    reference = load_reference(reference_path) if reference_path else None
    rows = collect(spec, reference)
    write_text_atomic(out_md, format_markdown(rows, reference.get("source") if reference else None))
    write_csv_atomic(out_csv, CSV_FIELDS, csv_rows(rows))
    return rows


def add_arguments(parser):
    parser.add_argument("--spec-json", required=True, metavar="JSON",
                        help="the rows to tabulate as JSON (format in the module docstring; the workflow builds it)")
    parser.add_argument("--reference", type=Path, metavar="YAML",
                        help="PYSKL's published numbers (config/model_zoo_reference.yaml)")
    parser.add_argument("--out-md", required=True, type=Path, help="markdown table to write")
    parser.add_argument("--out-csv", required=True, type=Path, help="CSV with every metric to write")


def run(args):
    import sys

    spec = json.loads(args.spec_json)
    if not isinstance(spec, list):
        raise ValueError("--spec-json must be a JSON list of rows")
    rows = write_table(spec, args.reference, args.out_md, args.out_csv)
    print(f"wrote {args.out_md} and {args.out_csv} ({len(rows)} rows)", file=sys.stderr)
    return 0
