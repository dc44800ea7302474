"""Model-zoo table: PYSKL's layout, published numbers beside ours, missing cells, small-sample
counts, skipped searches, the HTML page for the report, stable bytes."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from msg3d.cli import main
from msg3d.report.table import SMALL_SAMPLE, load_reference, write_table

REPO = Path(__file__).resolve().parents[1]
HEADER = (
    "| Dataset | Split | Annotation | Joint Top1 | Bone Top1 | Joint Motion Top1 | Bone-Motion Top1 "
    "| Two-Stream Top1 | Four-Stream Top1 | MS-G3D Ensemble Top1 |"
)


def metrics_file(folder, name, top1, top5=1.0, mca=None, weights=None, num_samples=16487):
    """A metrics file; by default of NTU-60 xsub's val size (no sample count in the cell)."""
    content = {"top1": top1, "top5": top5, "mean_class_accuracy": top1 if mca is None else mca,
               "num_samples": num_samples}
    if weights:
        content["weights"] = weights
    path = folder / f"{name}.json"
    path.write_text(json.dumps(content))
    return str(path)


def make_spec(folder):
    return [
        {
            "dataset": "ntu60", "split": "xsub", "annotation": "3dkp", "reference": "ntu60_xsub_3dkp",
            "results": {
                "2s": {"metrics": metrics_file(folder, "2s", 0.912, weights={"b": 1, "j": 1}), "source": "fusion"},
                "b": {"metrics": metrics_file(folder, "b", 0.8875), "source": "trained"},
                "j": {"metrics": metrics_file(folder, "j", 0.9), "source": "pretrained"},
                "tuned": {"metrics": metrics_file(folder, "t", 0.5, weights={"b": 2, "j": 1, "bm": 0}),
                          "source": "fusion"},
            },
        },
        {"dataset": "demo", "split": "xview", "annotation": "3dkp", "reference": None,
         "results": {"jm": {"metrics": metrics_file(folder, "jm", 0.7), "source": "trained"}}},
    ]


def test_layout_published_numbers_and_missing_cells(tmp_path):
    md, csv = tmp_path / "model_zoo.md", tmp_path / "model_zoo.csv"
    write_table(make_spec(tmp_path), REPO / "config" / "model_zoo_reference.yaml", md, csv)
    lines = md.read_text().splitlines()
    assert HEADER in lines
    # ours / published (ours - published); no jm/bm/4s here -> only the published number
    assert (
        "| ntu60 | xsub | 3D skeleton | 90.0 / 89.6 (+0.4) | 88.8 / 89.3 (-0.5) | — / 87.7 | — / 86.7 "
        "| 91.2 / 91.0 (+0.2) | — / 91.7 | — |"
    ) in lines
    # no published numbers for the demo: our number only, the rest missing
    assert "| demo | xview | 3D skeleton | — | — | 70.0 / — | — | — | — | — |" in lines
    assert "- Two-Stream: weighted sum of the streams' probabilities, 1 J : 1 B." in lines
    assert "- Tested from a given checkpoint instead of trained here: ntu60 xsub Joint." in lines
    assert "| ntu60 | xsub | 3D skeleton | tuned | 1 J : 2 B | 16487 | 50.0 | 100.0 | 50.0 |" in lines
    # every number is on a full-size val set: no sample count in a cell, no note about them
    assert not any("n=" in line for line in lines if line.startswith(("|", "- ")))

    rows = csv.read_text().splitlines()
    assert rows[0] == (
        "dataset,split,annotation,entry,title,source,weights,num_samples,top1,top5,mean_class_accuracy,"
        "published_top1,published_by,diff_top1,metrics_file,skipped"
    )
    # CSV lines in the table's order whatever the spec's order
    assert [r.split(",")[3] for r in rows[1:]] == ["j", "b", "2s", "tuned", "jm"]
    assert rows[1].startswith("ntu60,xsub,3dkp,j,Joint,pretrained,,16487,90.00,100.00,90.00,89.6,pyskl,+0.40,")
    assert rows[3].startswith(
        "ntu60,xsub,3dkp,2s,Two-Stream,fusion,j:1 b:1,16487,91.20,100.00,91.20,91.0,pyskl,+0.20,")
    assert rows[4].startswith("ntu60,xsub,3dkp,tuned,tuned,fusion,j:1 b:2 bm:0,16487,50.00,100.00,50.00,,,,")
    assert rows[5].startswith("demo,xview,3dkp,jm,Joint Motion,trained,,16487,70.00,100.00,70.00,,,,")
    assert all(row.endswith(".json,") for row in rows[1:])  # nothing skipped
    assert len(rows) == 6


def test_same_inputs_same_bytes(tmp_path):
    spec = make_spec(tmp_path)
    ref = REPO / "config" / "model_zoo_reference.yaml"
    write_table(spec, ref, tmp_path / "a.md", tmp_path / "a.csv")
    write_table(spec, ref, tmp_path / "b.md", tmp_path / "b.csv")
    assert (tmp_path / "a.md").read_bytes() == (tmp_path / "b.md").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_published_reference_is_pyskls_table_and_msg3ds_kinetics():
    ref = load_reference(REPO / "config" / "model_zoo_reference.yaml")
    assert len(ref["results"]) == 9
    assert ref["results"]["ntu60_xsub_3dkp"] == {"source": "pyskl", "j": 89.6, "b": 89.3, "jm": 87.7, "bm": 86.7,
                                                 "2s": 91.0, "4s": 91.7}
    assert ref["results"]["ntu120_xset_hrnet"]["4s"] == 90.9
    # REFERENCE §14: MS-G3D's published Kinetics-Skeleton 400 numbers
    assert ref["results"]["kinetics400_val_openpose"] == {"source": "msg3d", "j": 35.8, "b": 35.4, "ensemble": 38.0}
    assert set(ref["sources"]) == {"pyskl", "msg3d"}


def test_kinetics_row_cites_msg3d(tmp_path):
    folder = tmp_path / "k"
    folder.mkdir()
    spec = [{"dataset": "k400", "split": "val", "annotation": "openpose", "reference": "kinetics400_val_openpose",
             "results": {"j": {"metrics": metrics_file(folder, "j", 0.36), "source": "trained"},
                         "ensemble": {"metrics": metrics_file(folder, "ensemble", 0.39, weights={"j": 1, "b": 1}),
                                      "source": "fusion"}}}]
    md = tmp_path / "t.md"
    write_table(spec, REPO / "config" / "model_zoo_reference.yaml", md, tmp_path / "t.csv")
    lines = md.read_text().splitlines()
    assert "| k400 | val | OpenPose 2D | 36.0 / 35.8 (+0.2) | — / 35.4 | — | — | — | — | 39.0 / 38.0 (+1.0) |" in lines
    assert "- MS-G3D Ensemble: weighted sum of the streams' logits (MS-G3D's ensemble.py), 1 J : 1 B." in lines
    assert any(line.startswith("- Published numbers of k400 val: MS-G3D, kenziyuliu/MS-G3D") for line in lines)
    assert ",35.8,msg3d,+0.20," in (tmp_path / "t.csv").read_text()


def test_a_reference_without_its_source_is_refused(tmp_path):
    bad = tmp_path / "ref.yaml"
    bad.write_text("sources: {pyskl: x}\nresults:\n  k: {source: other, j: 1.0}\n")
    with pytest.raises(ValueError, match=r"results.k: 'source' must be one of the sources \(pyskl\), got 'other'"):
        load_reference(bad)


def test_errors_name_the_problem(tmp_path, capsys):
    spec = make_spec(tmp_path)
    ref = REPO / "config" / "model_zoo_reference.yaml"
    spec[1]["reference"] = "ntu60_xsub_kinect"
    with pytest.raises(ValueError, match="no published numbers under 'ntu60_xsub_kinect'"):
        write_table(spec, ref, tmp_path / "a.md", tmp_path / "a.csv")
    spec = make_spec(tmp_path)
    Path(spec[0]["results"]["b"]["metrics"]).write_text('{"top1": 0.5}')
    code = main(["table", "--spec-json", json.dumps(spec), "--reference", str(ref),
                 "--out-md", str(tmp_path / "a.md"), "--out-csv", str(tmp_path / "a.csv")])
    assert code == 2
    assert "b.json: metrics file lacks 'top5'" in capsys.readouterr().err
    assert not (tmp_path / "a.md").exists()
    Path(spec[0]["results"]["b"]["metrics"]).write_text('{"skipped": "", "num_samples": 3}')
    with pytest.raises(ValueError, match="b.json: 'skipped' must be the reason as a non-empty string, got ''"):
        write_table(spec, ref, tmp_path / "a.md", tmp_path / "a.csv")


@pytest.mark.parametrize("key, value, shown", [
    ("top1", float("nan"), "nan"), ("top5", float("inf"), "inf"), ("mean_class_accuracy", -0.5, "-0.5"),
    ("top1", "0.9", "'0.9'"), ("top1", 90.0, "90.0"),
])
def test_non_finite_or_impossible_accuracies_are_refused(tmp_path, capsys, key, value, shown):
    """A NaN accuracy (JSON's NaN, as json.dumps writes it) comes from non-finite scores."""
    spec = make_spec(tmp_path)
    path = Path(spec[0]["results"]["j"]["metrics"])
    metrics = json.loads(path.read_text())
    metrics[key] = value
    path.write_text(json.dumps(metrics))
    ref = REPO / "config" / "model_zoo_reference.yaml"
    code = main(["table", "--spec-json", json.dumps(spec), "--reference", str(ref),
                 "--out-md", str(tmp_path / "a.md"), "--out-csv", str(tmp_path / "a.csv")])
    assert code == 2
    assert (f"msg3d table: error: {path}: {key} is {shown}, not an accuracy in [0, 1] over its 16487 samples "
            "(non-finite scores from a diverged or corrupt checkpoint?); nothing written") in capsys.readouterr().err
    assert not (tmp_path / "a.md").exists() and not (tmp_path / "a.csv").exists()


def test_unreadable_metrics_files_are_named(tmp_path, capsys):
    spec = make_spec(tmp_path)
    path = Path(spec[0]["results"]["j"]["metrics"])
    for text, message in (('{"top1": 0.5', "not valid JSON"), ("[0.5]", "expected a JSON object of metrics, got list"),
                          ('{"top1": 0.5, "top5": 1, "mean_class_accuracy": 0.5, "num_samples": 2.5}',
                           "num_samples must be a non-negative integer, got 2.5")):
        path.write_text(text)
        with pytest.raises(ValueError, match=f"{path.name}: {message}"):
            write_table(spec, REPO / "config" / "model_zoo_reference.yaml", tmp_path / "a.md", tmp_path / "a.csv")
    assert not (tmp_path / "a.md").exists()


def small_spec(folder):
    """Demo-sized numbers: 2 and 999 samples are marked, SMALL_SAMPLE samples are not."""
    return [{"dataset": "ntu60", "split": "xsub", "annotation": "3dkp", "reference": "ntu60_xsub_3dkp",
             "results": {"j": {"metrics": metrics_file(folder, "j", 0.0, num_samples=2), "source": "trained"},
                         "b": {"metrics": metrics_file(folder, "b", 0.5, num_samples=999), "source": "trained"},
                         "jm": {"metrics": metrics_file(folder, "jm", 0.5, num_samples=SMALL_SAMPLE),
                                "source": "trained"}}},
            {"dataset": "demo", "split": "xsub", "annotation": "3dkp", "reference": None,
             "results": {"j": {"metrics": metrics_file(folder, "dj", 0.25, num_samples=4), "source": "trained"}}}]


def test_small_sample_counts_are_shown(tmp_path):
    assert SMALL_SAMPLE == 1000
    md = tmp_path / "t.md"
    write_table(small_spec(tmp_path), REPO / "config" / "model_zoo_reference.yaml", md, tmp_path / "t.csv")
    lines = md.read_text().splitlines()
    assert ("| ntu60 | xsub | 3D skeleton | 0.0 / 89.6 (-89.6, n=2) | 50.0 / 89.3 (-39.3, n=999) "
            "| 50.0 / 87.7 (-37.7) | — / 86.7 | — / 91.0 | — / 91.7 | — |") in lines
    assert "| demo | xsub | 3D skeleton | 25.0 / — (n=4) | — | — | — | — | — | — |" in lines
    assert ("- n=N: measured on only N (< 1000) samples, where one sample moves top-1 by more than the 0.1 shown: "
            "its difference to the published number says little.") in lines


def skipped_spec(folder):
    reason = "3 of the 5 classes among the 7 samples have a single sample (first: class 0); ..."
    search = folder / "search.json"
    search.write_text(json.dumps({"scheme": "search", "skipped": reason, "num_samples": 7, "grid": [0, 1]}))
    spec = make_spec(folder)
    spec[0]["results"]["search"] = {"metrics": str(search), "source": "fusion"}
    return spec, reason


def test_a_skipped_search_is_shown_with_its_reason(tmp_path):
    spec, reason = skipped_spec(tmp_path)
    md, csv = tmp_path / "t.md", tmp_path / "t.csv"
    write_table(spec, REPO / "config" / "model_zoo_reference.yaml", md, csv)
    lines = md.read_text().splitlines()
    assert "| ntu60 | xsub | 3D skeleton | search | — | 7 | skipped | skipped | skipped |" in lines
    assert f"- search of ntu60 xsub skipped: {reason}" in lines
    assert "| ntu60 | xsub | 3D skeleton | tuned | 1 J : 2 B | 16487 | 50.0 | 100.0 | 50.0 |" in lines
    search_row = [row for row in csv.read_text().splitlines() if ",search," in row]
    assert search_row == [f"ntu60,xsub,3dkp,search,search,fusion,,7,,,,,,,{tmp_path / 'search.json'},{reason}"]


class TableText(HTMLParser):
    """The text of an HTML page's cells ([table][row][cell]), list items and other elements."""

    def __init__(self):
        super().__init__()
        self.tables, self.items, self.texts, self.tags = [], [], [], []
        self._text = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        if tag in ("td", "th", "li", "h1", "h2", "p", "title"):
            self._text = ""

    def handle_data(self, data):
        if self._text is not None:
            self._text += data

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._text)
        elif tag == "li":
            self.items.append(self._text)
        elif tag in ("h1", "h2", "p", "title"):
            self.texts.append(self._text)
        if tag in ("td", "th", "li", "h1", "h2", "p", "title"):
            self._text = None


def markdown_tables(text):
    """[table][row][cell] of a markdown page's pipe tables, alignment rows left out."""
    tables, previous = [], False
    for line in text.splitlines():
        is_row = line.startswith("| ")
        if is_row and not previous:
            tables.append([])
        if is_row and not re.fullmatch(r"\|( :---: \|)+", line):
            tables[-1].append(line[2:-2].split(" | "))
        previous = is_row
    return tables


def test_html_page_holds_what_the_markdown_holds(tmp_path, capsys):
    spec, reason = skipped_spec(tmp_path)
    (tmp_path / "small").mkdir()
    spec += small_spec(tmp_path / "small")
    spec[-1]["dataset"] = 'demo <b>&"x"'  # escaped, not markup
    ref = REPO / "config" / "model_zoo_reference.yaml"
    out = {suffix: tmp_path / f"model_zoo.{suffix}" for suffix in ("md", "csv", "html")}
    assert main(["table", "--spec-json", json.dumps(spec), "--reference", str(ref), "--out-md", str(out["md"]),
                 "--out-csv", str(out["csv"]), "--out-html", str(out["html"])]) == 0
    assert f"wrote {out['md']}, {out['csv']}, {out['html']} (4 rows)" in capsys.readouterr().err
    markdown, page = out["md"].read_text(), out["html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    parsed = TableText()
    parsed.feed(page)
    # the same cells, notes and headings as the markdown: the numbers, counts, skips and citations
    assert parsed.tables == markdown_tables(markdown)
    assert parsed.tables[0][1][3:6] == ["90.0 / 89.6 (+0.4)", "88.8 / 89.3 (-0.5)", "— / 87.7"]
    assert parsed.tables[0][3][3] == "0.0 / 89.6 (-89.6, n=2)"
    assert parsed.tables[1][1] == ["ntu60", "xsub", "3D skeleton", "search", "—", "7", "skipped", "skipped",
                                   "skipped"]
    assert parsed.items == [line[2:] for line in markdown.splitlines() if line.startswith("- ")]
    assert f"search of ntu60 xsub skipped: {reason}" in parsed.items
    assert parsed.texts[0] == "MS-G3D model zoo" and "MS-G3D model zoo" in parsed.texts[1:3]
    assert parsed.tables[0][4][0] == 'demo <b>&"x"' and "demo &lt;b&gt;&amp;&quot;x&quot;" in page
    # self-contained: nothing fetched, nothing run
    assert {tag for tag, _ in parsed.tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p",
                                              "ul", "li", "table", "thead", "tbody", "tr", "th", "td"}
    assert not any("src" in attrs or "href" in attrs for _, attrs in parsed.tags)

    again = tmp_path / "again.html"
    write_table(spec, ref, tmp_path / "a.md", tmp_path / "a.csv", again)
    assert again.read_bytes() == out["html"].read_bytes()


def test_the_report_shows_the_html_table():
    """Snakemake's report viewer shows HTML inline (markdown only as a download): the table rule
    writes the page and marks it for the report, with a caption that exists."""
    rules = (REPO / "workflow" / "rules" / "report.smk").read_text()
    rule = rules[rules.index("rule model_zoo_table:"):rules.index("rule plot_curves:")]
    marked = re.search(r'html=report\(\s*path\("table_html"\),\s*caption="([^"]+)",\s*category="Model zoo"', rule)
    assert marked, rule
    caption = (REPO / "workflow" / "rules" / marked[1]).resolve()
    assert caption.exists() and "HTML" in caption.read_text()
    assert '" --out-md {output.md:q} --out-csv {output.csv:q} --out-html {output.html:q} > {log:q} 2>&1"' in rule
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert '"table_html": "results/model_zoo.html",' in common
    assert 'targets = [path("table_md"), path("table_csv"), path("table_html")]' in common
