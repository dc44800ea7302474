"""The embedded demo: deterministic, real-format files that cover both NTU60 splits and the
converter's denoising and skip paths."""

import collections
import pickle

import pytest

from msg3d.cli import main
from msg3d.data.demo import EMPTY_NAME, MISSING_NAME, make_demo
from msg3d.data.ntu_raw import convert_ntu, parse_skeleton
from msg3d.data.splits import official_missing

SMALL = dict(train_subjects=1, val_subjects=1, min_frames=16, max_frames=24)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "skeletons"
    names = make_demo(out, seed=0, **SMALL)
    return out, names


def test_same_seed_same_bytes_other_seed_other_bytes(demo, tmp_path):
    out, names = demo
    again = tmp_path / "again"
    assert make_demo(again, seed=0, **SMALL) == names
    for name in names:
        assert (again / f"{name}.skeleton").read_bytes() == (out / f"{name}.skeleton").read_bytes()
    other = tmp_path / "other"
    make_demo(other, seed=1, **SMALL)
    first = f"{names[0]}.skeleton"
    assert (other / first).read_bytes() != (out / first).read_bytes()


def test_names_cover_both_splits_and_the_skip_cases(demo):
    _, names = demo
    # 2 performers x 5 actions x 3 cameras, plus the missing-list name and the empty recording
    assert len(names) == 32
    assert MISSING_NAME in names and MISSING_NAME in official_missing("ntu60")
    assert EMPTY_NAME in names
    performers = {n[8:12] for n in names if n not in (MISSING_NAME, EMPTY_NAME)}
    assert performers == {"P001", "P003"}  # xsub: P001 trains, P003 validates
    assert {n[4:8] for n in names} == {"C001", "C002", "C003"}  # xview: C001 validates


def test_real_format_with_spurious_tracks(demo):
    out, names = demo
    text = (out / f"{names[0]}.skeleton").read_text()
    lines = text.splitlines()
    assert int(lines[2].split()[0]) > 2**56  # a 64-bit Kinect tracking id
    assert lines[3] == "25" and len(lines[4].split()) == 12
    track_lengths = collections.Counter()
    for name in names:
        for body in parse_skeleton((out / f"{name}.skeleton").read_bytes()):
            track_lengths["short" if len(body.keypoint) <= 11 else "long"] += 1
    # ghosts of <= 11 frames for the length filter; more long tracks than real people (furniture)
    assert track_lengths["short"] >= 3
    real_people = 2 * 6 + 1 * 24 + 1  # A005 has two, 24 single-person files and the missing one
    assert track_lengths["long"] > real_people


def test_converter_keeps_the_people_and_skips_the_rest(demo, tmp_path):
    out, names = demo
    convert_ntu(out, tmp_path / "ann.pkl", "ntu60", jobs=1, log=None)
    with open(tmp_path / "ann.pkl", "rb") as f:
        data = pickle.load(f)
    persons = {a["frame_dir"]: a["keypoint"].shape[0] for a in data["annotations"]}
    assert len(persons) == 30
    assert all(m == (2 if name.endswith("A005") else 1) for name, m in persons.items())
    labels = {a["frame_dir"]: a["label"] for a in data["annotations"]}
    for split, members in data["split"].items():
        assert sorted({labels[n] for n in members}) == [0, 1, 2, 3, 4], split
    skipped = (tmp_path / "skipped.tsv").read_text()
    assert f"{MISSING_NAME}.skeleton\tofficial-missing" in skipped
    assert f"{EMPTY_NAME}.skeleton\tno-bodies" in skipped


def test_cli_checks_its_arguments(tmp_path, capsys):
    assert main(["make-demo", str(tmp_path / "x"), "--min-frames", "50", "--max-frames", "40"]) == 2
    assert "min_frames <= max_frames" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
