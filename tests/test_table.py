"""Model-zoo table: PYSKL's layout, published numbers beside ours, missing cells, stable bytes."""

import json
from pathlib import Path

import pytest

from msg3d.cli import main
from msg3d.report.table import load_reference, write_table

REPO = Path(__file__).resolve().parents[1]
HEADER = (
    "| Dataset | Split | Annotation | Joint Top1 | Bone Top1 | Joint Motion Top1 | Bone-Motion Top1 "
    "| Two-Stream Top1 | Four-Stream Top1 |"
)


def metrics_file(folder, name, top1, top5=1.0, mca=None, weights=None):
    content = {"top1": top1, "top5": top5, "mean_class_accuracy": top1 if mca is None else mca, "num_samples": 10}
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
    # ours / PYSKL (ours - PYSKL); no jm/bm/4s here -> only the published number
    assert (
        "| ntu60 | xsub | 3D skeleton | 90.0 / 89.6 (+0.4) | 88.8 / 89.3 (-0.5) | — / 87.7 | — / 86.7 "
        "| 91.2 / 91.0 (+0.2) | — / 91.7 |"
    ) in lines
    # no published numbers for the demo: our number only, the rest missing
    assert "| demo | xview | 3D skeleton | — | — | 70.0 / — | — | — | — |" in lines
    assert "- Two-Stream: weighted sum of the streams' probabilities, 1 J : 1 B." in lines
    assert "- Tested from a given checkpoint instead of trained here: ntu60 xsub Joint." in lines
    assert "| ntu60 | xsub | 3D skeleton | tuned | 1 J : 2 B | 10 | 50.0 | 100.0 | 50.0 |" in lines

    rows = csv.read_text().splitlines()
    assert rows[0] == (
        "dataset,split,annotation,entry,title,source,weights,num_samples,top1,top5,mean_class_accuracy,"
        "pyskl_top1,diff_top1,metrics_file"
    )
    # CSV lines in the table's order whatever the spec's order
    assert [r.split(",")[3] for r in rows[1:]] == ["j", "b", "2s", "tuned", "jm"]
    assert rows[1].startswith("ntu60,xsub,3dkp,j,Joint,pretrained,,10,90.00,100.00,90.00,89.6,+0.40,")
    assert rows[3].startswith("ntu60,xsub,3dkp,2s,Two-Stream,fusion,j:1 b:1,10,91.20,100.00,91.20,91.0,+0.20,")
    assert rows[4].startswith("ntu60,xsub,3dkp,tuned,tuned,fusion,j:1 b:2 bm:0,10,50.00,100.00,50.00,,,")
    assert rows[5].startswith("demo,xview,3dkp,jm,Joint Motion,trained,,10,70.00,100.00,70.00,,,")
    assert len(rows) == 6


def test_same_inputs_same_bytes(tmp_path):
    spec = make_spec(tmp_path)
    ref = REPO / "config" / "model_zoo_reference.yaml"
    write_table(spec, ref, tmp_path / "a.md", tmp_path / "a.csv")
    write_table(spec, ref, tmp_path / "b.md", tmp_path / "b.csv")
    assert (tmp_path / "a.md").read_bytes() == (tmp_path / "b.md").read_bytes()
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()


def test_published_reference_is_pyskls_table():
    ref = load_reference(REPO / "config" / "model_zoo_reference.yaml")
    assert len(ref["results"]) == 8
    assert ref["results"]["ntu60_xsub_3dkp"] == {"j": 89.6, "b": 89.3, "jm": 87.7, "bm": 86.7, "2s": 91.0, "4s": 91.7}
    assert ref["results"]["ntu120_xset_hrnet"]["4s"] == 90.9


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
    assert (f"msg3d table: error: {path}: {key} is {shown}, not an accuracy in [0, 1] over its 10 samples "
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
