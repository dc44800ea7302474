"""`msg3d table`: the model-zoo table (markdown and HTML) and every metric (CSV).

The markdown follows PYSKL's MS-G3D model-zoo layout: one row per dataset + split + annotation,
columns Joint, Bone, Joint Motion, Bone-Motion, Two-Stream and Four-Stream top-1, and MS-G3D's own
ensemble (the joint and bone logits summed, as its published Kinetics number is). Each cell shows
our number, the published number beside it (PYSKL's for NTU, MS-G3D's for Kinetics-400) and the
difference; a missing number is ``—``. A number measured on fewer than ``SMALL_SAMPLE`` samples
carries its sample count, e.g. ``0.0 / 89.6 (-89.6, n=2)``. The HTML page (``--out-html``) holds
the same content, self-contained (no script, no external file), for ``snakemake --report``, whose
viewer shows HTML inline but markdown and CSV only as downloads.
The CSV has one line per (row, stream or fusion scheme) with top-1, top-5 and mean-class accuracy.

What to tabulate comes as a JSON *spec* (the workflow builds it from its config)::

    [{"dataset": "ntu60", "split": "xsub", "annotation": "3dkp", "reference": "ntu60_xsub_3dkp",
      "results": {"j": {"metrics": "results/test/ntu60/xsub/j/metrics.json", "source": "trained"},
                  "2s": {"metrics": "results/fusion/ntu60/xsub/2s.json", "source": "fusion"}}}]

``reference`` is a key of the published-numbers YAML (``config/model_zoo_reference.yaml``:
``sources`` name -> citation, ``results`` key -> ``{source: name, entry: top-1 %, ...}``) or null.
Metrics files hold ``top1``, ``top5``, ``mean_class_accuracy`` (fractions) and ``num_samples``;
fusion files also hold ``weights``. A weight search that could not run (``msg3d fuse --search`` on
a val set too small to halve) writes ``skipped`` (the reason) and ``num_samples`` instead of the
accuracies: its cells read ``skipped`` and a note gives the reason. Nothing time-dependent is
written: the same inputs give the same bytes.
"""

import html
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
    "ensemble": "MS-G3D Ensemble",
}
ANNOTATIONS = {"3dkp": "3D skeleton", "hrnet": "HRNet 2D skeleton", "openpose": "OpenPose 2D"}
SOURCE_NAMES = {"pyskl": "PYSKL", "msg3d": "MS-G3D"}
MISSING = "—"
SKIPPED = "skipped"
# Below this many samples a cell shows its count. One sample then moves top-1 by more than the
# 0.1 the table prints, and every real val split is far larger (NTU-60 xsub: 16,487 samples; the
# smallest, Kinetics-400 val: 19,796; REFERENCE §4, §14), so only demo-sized sets are marked.
SMALL_SAMPLE = 1000
CSV_FIELDS = (
    "dataset", "split", "annotation", "entry", "title", "source", "weights", "num_samples",
    "top1", "top5", "mean_class_accuracy", "published_top1", "published_by", "diff_top1", "metrics_file",
    "skipped",
)


def load_reference(path):
    """Read the published-numbers YAML: ``{"sources": {name: citation}, "results": {key: {"source":
    name, entry: top1 %}}}``; ValueError naming the file and key when it is not that."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        try:
            ref = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("results"), dict) or not isinstance(
            ref.get("sources"), dict):
        raise ValueError(f"{path}: expected a mapping with 'sources' (name -> citation) and a 'results' mapping "
                         "of published numbers")
    for key, cells in ref["results"].items():
        if not isinstance(cells, dict):
            raise ValueError(f"{path}: results.{key}: expected a mapping of entry -> top-1 (%)")
        if cells.get("source") not in ref["sources"]:
            raise ValueError(f"{path}: results.{key}: 'source' must be one of the sources "
                             f"({', '.join(ref['sources'])}), got {cells.get('source')!r}")
        for entry, value in cells.items():
            if entry == "source":
                continue
            if entry not in COLUMNS or not isinstance(value, (int, float)):
                raise ValueError(f"{path}: results.{key}.{entry}: expected one of {list(COLUMNS)} with a number")
    return ref


def _load_metrics(path):
    """Read a metrics file; its accuracies must be numbers in [0, 1] (a NaN one comes from
    non-finite scores: an accuracy computed from them means nothing) and num_samples an integer.
    A skipped search's file (``skipped``: a non-empty reason) needs only ``num_samples``."""
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
    skipped = "skipped" in m
    if skipped and (not isinstance(m["skipped"], str) or not m["skipped"]):
        raise ValueError(f"{path}: 'skipped' must be the reason as a non-empty string, got {m['skipped']!r}")
    accuracies = () if skipped else ("top1", "top5", "mean_class_accuracy")
    for key in (*accuracies, "num_samples"):
        if key not in m:
            raise ValueError(f"{path}: metrics file lacks {key!r}")
    num_samples = m["num_samples"]
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 0:
        raise ValueError(f"{path}: num_samples must be a non-negative integer, got {num_samples!r}")
    for key in accuracies:
        value = m[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1:
            raise ValueError(f"{path}: {key} is {value!r}, not an accuracy in [0, 1] over its {num_samples} "
                             "samples (non-finite scores from a diverged or corrupt checkpoint?); nothing written")
    return m


def _pct(m, key):
    """``m[key]`` in %, or None for a skipped search's file."""
    return None if "skipped" in m else 100.0 * float(m[key])


def collect(spec, reference):
    """Resolve the spec: a list of rows ``{dataset, split, annotation, reference, published, entries}``.

    ``entries`` maps entry key -> dict with the metrics (top-1 etc. in %; None when skipped), the
    source, the weights (fusion only), the published top-1 (or None) and ``skipped`` (the reason
    a weight search did not run, or None).
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
        published = dict(published_all.get(ref_key, {})) if ref_key is not None else {}
        published_by = published.pop("source", None)
        entries = {}
        for entry, item in sorted(row["results"].items(), key=lambda item: _order(item[0])):
            if "metrics" not in item:
                where = f"{row['dataset']} {row['split']}"
                raise ValueError(f"table spec row {i} ({where}): entry {entry!r} lacks 'metrics'")
            m = _load_metrics(item["metrics"])
            entries[entry] = {
                "top1": _pct(m, "top1"),
                "top5": _pct(m, "top5"),
                "mean_class_accuracy": _pct(m, "mean_class_accuracy"),
                "num_samples": int(m["num_samples"]),
                "skipped": m.get("skipped"),
                "source": item.get("source", ""),
                "weights": m.get("weights"),
                "published_top1": published.get(entry),
                "published_by": published_by if entry in published else None,
                "metrics_file": str(item["metrics"]),
            }
        rows.append({
            **{k: row[k] for k in ("dataset", "split", "annotation")},
            "reference": ref_key, "published": published, "published_by": published_by, "entries": entries,
        })
    return rows


def _cell(entry, published):
    """``ours / published (ours - published)``, with ``—`` for a missing number, ``skipped`` for a
    search that did not run, and the sample count where it is below ``SMALL_SAMPLE``.

    ``entry``: the ``collect`` entry or None; ``published``: top-1 (%) or None.
    """
    if entry is None:
        return MISSING if published is None else f"{MISSING} / {published:.1f}"
    if entry["skipped"] is not None:
        return SKIPPED if published is None else f"{SKIPPED} / {published:.1f}"
    ours = entry["top1"]
    notes = []
    if published is not None:
        # the difference of the numbers as shown, so that the cell adds up
        notes.append(f"{round(ours, 1) - published:+.1f}")
    if entry["num_samples"] < SMALL_SAMPLE:
        notes.append(f"n={entry['num_samples']}")
    shown = f"{ours:.1f} / {MISSING if published is None else f'{published:.1f}'}"
    return f"{shown} ({', '.join(notes)})" if notes else shown


def _order(name):
    """Sort key: the table's column order (j, b, jm, bm, 2s, 4s, ensemble), other names after them by name."""
    order = list(COLUMNS)
    return (order.index(name) if name in order else len(order), name)


def _ordered(weights):
    return sorted(weights.items(), key=lambda item: _order(item[0]))


def _weights_text(weights):
    """``2 J : 2 B : 1 JM : 1 BM`` (streams with weight 0 left out)."""
    return " : ".join(f"{w:g} {name.upper()}" for name, w in _ordered(weights) if w)


def _accuracy_text(entry, key):
    return SKIPPED if entry["skipped"] is not None else f"{entry[key]:.1f}"


def _notes(rows, sources):
    """The notes under the main table: fusion weights, given checkpoints, small samples, skipped
    searches, citations (a list of str)."""
    notes = []
    fusion_weights = sorted({
        (entry, _weights_text(e["weights"]))
        for row in rows for entry, e in row["entries"].items() if entry in ("2s", "4s", "ensemble") and e["weights"]
    })
    for entry, text in fusion_weights:
        summed = "logits (MS-G3D's ensemble.py)" if entry == "ensemble" else "probabilities"
        notes.append(f"{COLUMNS[entry]}: weighted sum of the streams' {summed}, {text}.")
    pretrained = [
        f"{row['dataset']} {row['split']} {COLUMNS.get(entry, entry)}"
        for row in rows for entry, e in row["entries"].items() if e["source"] == "pretrained"
    ]
    if pretrained:
        notes.append(f"Tested from a given checkpoint instead of trained here: {', '.join(pretrained)}.")
    if any(e["skipped"] is None and e["num_samples"] < SMALL_SAMPLE
           for row in rows for entry, e in row["entries"].items() if entry in COLUMNS):
        notes.append(f"n=N: measured on only N (< {SMALL_SAMPLE}) samples, where one sample moves top-1 by more "
                     "than the 0.1 shown: its difference to the published number says little.")
    for row in rows:
        for entry, e in row["entries"].items():
            if e["skipped"] is not None:
                notes.append(f"{COLUMNS.get(entry, entry)} of {row['dataset']} {row['split']} skipped: "
                             f"{e['skipped']}")
    for name, citation in (sources or {}).items():
        cited = [f"{row['dataset']} {row['split']}" for row in rows if row["published_by"] == name]
        if cited:
            notes.append(f"Published numbers of {', '.join(cited)}: {SOURCE_NAMES.get(name, name)}, {citation}.")
    return notes


def document(rows, sources=None):
    """The table as a list of blocks that ``format_markdown`` and ``format_html`` render alike:
    ``("h1" | "h2" | "p", text)``, ``("table", header, rows of cells)``, ``("ul", items)``; all str.

    ``rows``: ``collect``'s result; ``sources``: the reference YAML's name -> citation.
    """
    header = ["Dataset", "Split", "Annotation"] + [f"{title} Top1" for title in COLUMNS.values()]
    body = []
    for row in rows:
        cells = [row["dataset"], row["split"], ANNOTATIONS.get(row["annotation"], row["annotation"])]
        cells += [_cell(row["entries"].get(entry), row["published"].get(entry)) for entry in COLUMNS]
        body.append(cells)
    blocks = [
        ("h1", "MS-G3D model zoo"),
        ("p", "Top-1 accuracy (%) on each split's val set. Each cell: ours / the published number "
              f"(difference, ours - published; n=N where N < {SMALL_SAMPLE} samples); {MISSING} where there "
              "is no number."),
        ("table", header, body),
    ]
    notes = _notes(rows, sources)
    if notes:
        blocks.append(("ul", notes))

    extra = [(row, entry, e) for row in rows for entry, e in row["entries"].items() if entry not in COLUMNS]
    if extra:
        blocks += [
            ("h2", "Other fusion schemes"),
            ("p", "No published numbers. Schemes with searched weights were tuned on half of the val set and are "
                  "measured on the other half only (see their JSON)."),
            ("table", ["Dataset", "Split", "Annotation", "Scheme", "Weights", "Samples", "Top1", "Top5",
                       "Mean class"],
             [[row["dataset"], row["split"], ANNOTATIONS.get(row["annotation"], row["annotation"]), entry,
               _weights_text(e["weights"]) if e["weights"] else MISSING, str(e["num_samples"]),
               *(_accuracy_text(e, key) for key in ("top1", "top5", "mean_class_accuracy"))]
              for row, entry, e in extra]),
        ]
    return blocks


def format_markdown(rows, sources=None):
    """The model-zoo markdown (a string): ``document(rows, sources)`` as GitHub markdown."""
    lines = []
    for kind, *content in document(rows, sources):
        if lines:
            lines.append("")
        if kind == "h1":
            lines.append(f"# {content[0]}")
        elif kind == "h2":
            lines.append(f"## {content[0]}")
        elif kind == "p":
            lines.append(content[0])
        elif kind == "ul":
            lines += [f"- {item}" for item in content[0]]
        else:
            header, body = content
            lines.append("| " + " | ".join(header) + " |")
            lines.append("| " + " | ".join(":---:" for _ in header) + " |")
            lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


# Inline style only: the page is one self-contained file (Snakemake's report embeds it as is).
HTML_STYLE = """\
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: center; white-space: nowrap; }
th { background: #eef1f5; }
tbody tr:nth-child(even) { background: #f8f9fb; }
li { margin: 0.2em 0; }
"""


def format_html(rows, sources=None):
    """The model-zoo table as one self-contained HTML page (a string): ``document(rows, sources)``
    with every text HTML-escaped, an inline style and nothing fetched from elsewhere."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>MS-G3D model zoo</title>", f"<style>\n{HTML_STYLE}</style>", "</head>", "<body>"]
    for kind, *content in document(rows, sources):
        if kind in ("h1", "h2", "p"):
            parts.append(f"<{kind}>{esc(content[0])}</{kind}>")
        elif kind == "ul":
            parts += ["<ul>", *(f"<li>{esc(item)}</li>" for item in content[0]), "</ul>"]
        else:
            header, body = content
            parts += ["<table>", "<thead>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>",
                      "</thead>", "<tbody>"]
            parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in body]
            parts += ["</tbody>", "</table>"]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def csv_rows(rows):
    """Every metric, one CSV row (``CSV_FIELDS``) per (row, entry)."""
    for row in rows:
        for entry, e in row["entries"].items():
            pub = e["published_top1"]
            ran = e["skipped"] is None
            yield [
                row["dataset"], row["split"], row["annotation"], entry, COLUMNS.get(entry, entry), e["source"],
                " ".join(f"{name}:{w:g}" for name, w in _ordered(e["weights"])) if e["weights"] else "",
                e["num_samples"],
                *(f"{e[key]:.2f}" if ran else "" for key in ("top1", "top5", "mean_class_accuracy")),
                "" if pub is None else f"{pub:.1f}", e["published_by"] or "",
                "" if pub is None or not ran else f"{e['top1'] - pub:+.2f}",
                e["metrics_file"], e["skipped"] or "",
            ]


def write_table(spec, reference_path, out_md, out_csv, out_html=None):
    """Write the markdown, CSV and (with ``out_html``) HTML tables for ``spec`` (see the module
    docstring); every input is read and checked before the first file is written."""
    reference = load_reference(reference_path) if reference_path else None
    rows = collect(spec, reference)
    sources = reference["sources"] if reference else None
    write_text_atomic(out_md, format_markdown(rows, sources))
    write_csv_atomic(out_csv, CSV_FIELDS, csv_rows(rows))
    if out_html is not None:
        write_text_atomic(out_html, format_html(rows, sources))
    return rows


def add_arguments(parser):
    parser.add_argument("--spec-json", required=True, metavar="JSON",
                        help="the rows to tabulate as JSON (format in the module docstring; the workflow builds it)")
    parser.add_argument("--reference", type=Path, metavar="YAML",
                        help="the published numbers (config/model_zoo_reference.yaml)")
    parser.add_argument("--out-md", required=True, type=Path, help="markdown table to write")
    parser.add_argument("--out-csv", required=True, type=Path, help="CSV with every metric to write")
    parser.add_argument("--out-html", type=Path,
                        help="also write the table as one self-contained HTML page (for `snakemake --report`)")


def run(args):
    import sys

    spec = json.loads(args.spec_json)
    if not isinstance(spec, list):
        raise ValueError("--spec-json must be a JSON list of rows")
    rows = write_table(spec, args.reference, args.out_md, args.out_csv, args.out_html)
    written = [args.out_md, args.out_csv, *([args.out_html] if args.out_html else [])]
    print(f"wrote {', '.join(map(str, written))} ({len(rows)} rows)", file=sys.stderr)
    return 0
