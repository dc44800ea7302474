"""Class names of NTU RGB+D 60/120 and Kinetics-400 (msg3d.class_names, msg3d/data/class_names/)."""

import json
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO, shared_file
from msg3d.class_names import class_names, label_text, names_for_num_classes

DATA_DIR = REPO / "msg3d" / "data" / "class_names"


@pytest.mark.parametrize("dataset, count", [("ntu60", 60), ("ntu120", 120), ("kinetics400", 400)])
def test_counts_and_clean_names(dataset, count):
    names = class_names(dataset)
    assert isinstance(names, tuple) and len(names) == count
    assert len(set(names)) == count
    for name in names:
        assert name and name == name.strip() and not name.startswith("#")
        assert not name.endswith("."), name  # the source list ends its entries with "."
        assert name.isascii(), name


def test_ntu_names_at_known_actions():
    # shahroudy/NTURGB-D README, "Action Classes": label k is action A(k+1).
    ntu120 = class_names("ntu120")
    assert ntu120[0] == "drink water"  # A001
    assert ntu120[8] == "standing up (from sitting position)"  # A009
    assert ntu120[24] == "put something inside pocket / take out something from pocket"  # A025
    assert ntu120[56] == "touch other person's pocket"  # A057
    assert ntu120[59] == "walking apart from each other"  # A060
    assert ntu120[60] == "put on headphone"  # A061
    assert ntu120[66] == "hush (quite)"  # A067, the source's spelling
    assert ntu120[108] == "grab other person's stuff"  # A109, typographic apostrophe made ASCII
    assert ntu120[118] == "support somebody with one's hand (someone is sick, help him to walk)"  # A119
    assert ntu120[119] == "finger-guessing game (playing rock-paper-scissors)"  # A120
    assert class_names("ntu60") == ntu120[:60]


def test_kinetics_names_alphabetical():
    names = class_names("kinetics400")
    assert names[:5] == ("abseiling", "air drumming", "answering questions", "applauding", "applying cream")
    assert names[399] == "zumba"
    assert names[names.index("passing American football (in game)") + 1] == "passing American football (not in game)"
    # The release's label_index is alphabetical (ST-GCN label_name.txt order).
    assert list(names) == sorted(names)


def test_kinetics_matches_release_label_index():
    ref = shared_file(FIXTURES / "msg3d_kinetics_ref.pt")
    torch = pytest.importorskip("torch")
    files = torch.load(ref, weights_only=True)["files"]
    entries = json.loads(files["kinetics_train_label.json"]).values()
    pairs = {(e["label_index"], e["label"]) for e in entries}
    assert {i for i, _ in pairs} == {0, 1, 2, 3, 4}
    names = class_names("kinetics400")
    for index, label in pairs:
        assert names[index] == label


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'ntu' .*ntu60, ntu120, kinetics400"):
        class_names("ntu")


def test_names_for_num_classes():
    assert names_for_num_classes(60) == class_names("ntu60")
    assert names_for_num_classes(120) == class_names("ntu120")
    assert names_for_num_classes(400) == class_names("kinetics400")
    for other in (0, 10, 59, 600):
        assert names_for_num_classes(other) is None


def test_label_text():
    ntu60, ntu120 = class_names("ntu60"), class_names("ntu120")
    assert label_text(0, ntu60) == "A001 drink water"
    assert label_text(59, ntu60) == "A060 walking apart from each other"
    assert label_text(119, ntu120) == "A120 finger-guessing game (playing rock-paper-scissors)"
    assert label_text(0, class_names("kinetics400")) == "abseiling"
    assert label_text(399, names_for_num_classes(400)) == "zumba"
    assert label_text(7, None) == "7"
    assert label_text(7, names_for_num_classes(10)) == "7"
    # Anything that is a plain name list, not NTU's, gets no action code.
    assert label_text(1, ("a", "b")) == "b"


@pytest.mark.parametrize("label", [-1, 60, 1000])
def test_label_text_out_of_range(label):
    with pytest.raises(ValueError, match=rf"label {label} is outside 0\.\.59 \(60 classes\)"):
        label_text(label, class_names("ntu60"))


def test_label_text_refuses_non_integer_labels():
    with pytest.raises(TypeError):
        label_text(1.0, class_names("ntu60"))


def test_files_ship_in_the_wheel():
    """pyproject's package-data globs, resolved as setuptools does (glob relative to the package), cover the files."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["msg3d"]
    package = REPO / "msg3d"
    shipped = {path for pattern in patterns for path in package.glob(pattern)}
    files = set(DATA_DIR.glob("*.txt"))
    assert {p.name for p in files} == {"ntu120.txt", "kinetics400.txt"}
    assert files <= shipped, sorted(str(p) for p in files - shipped)


def test_source_comments_lead_each_file():
    for path in sorted(DATA_DIR.glob("*.txt")):
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# ") and any("Source:" in line for line in lines if line.startswith("#")), path
        first_name = next(i for i, line in enumerate(lines) if not line.startswith("#"))
        assert all(not line.startswith("#") for line in lines[first_name:]), path
