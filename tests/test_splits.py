"""NTU names, official splits and the missing-skeleton list (msg3d.data.splits)."""

import pytest

from msg3d.data.splits import (
    SPLIT_NAMES,
    XSUB_TRAIN_SUBJECTS,
    NtuName,
    in_dataset,
    ntu_split,
    official_missing,
    parse_ntu_name,
)


def test_parse_ntu_name():
    assert parse_ntu_name("S017C003P020R002A120") == NtuName(17, 3, 20, 2, 120)
    for bad in ["S017C003P020R002A12", "s017c003p020r002a120", "S017C003P020R002A120.skeleton", "x"]:
        with pytest.raises(ValueError, match="not an NTU sample name"):
            parse_ntu_name(bad)


def test_xsub_subjects():
    assert len(XSUB_TRAIN_SUBJECTS) == 53
    ntu60_train = [1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38]  # fmt: skip
    assert sorted(s for s in XSUB_TRAIN_SUBJECTS if s <= 40) == ntu60_train
    names = ["S001C001P001R001A001", "S001C001P003R001A001", "S018C001P103R001A061", "S018C001P104R001A061"]
    split = ntu_split(names, "ntu120")
    assert split["xsub_train"] == [names[0], names[2]]
    assert split["xsub_val"] == [names[1], names[3]]


def test_xview_by_camera():
    names = ["S001C002P001R001A001", "S001C001P001R001A001", "S001C003P001R001A001", "S002C001P007R002A060"]
    split = ntu_split(names, "ntu60")
    assert list(split) == list(SPLIT_NAMES["ntu60"])
    assert split["xview_train"] == [names[0], names[2]]
    assert split["xview_val"] == [names[1], names[3]]


def test_xset_by_setup_parity():
    names = ["S001C001P001R001A001", "S002C001P001R001A001", "S031C002P099R001A120", "S032C003P099R001A120"]
    split = ntu_split(names, "ntu120")
    assert list(split) == list(SPLIT_NAMES["ntu120"])
    assert split["xset_train"] == [names[1], names[3]]
    assert split["xset_val"] == [names[0], names[2]]


def test_ntu60_keeps_actions_up_to_60():
    names = ["S001C001P001R001A060", "S001C001P001R001A061", "S001C001P001R001A120"]
    split = ntu_split(names, "ntu60")
    assert split["xsub_train"] + split["xsub_val"] == ["S001C001P001R001A060"]
    assert split["xview_train"] + split["xview_val"] == ["S001C001P001R001A060"]
    assert sum(map(len, ntu_split(names, "ntu120").values())) == 6
    assert [in_dataset(n, "ntu60") for n in names] == [True, False, False]


def test_bad_input():
    with pytest.raises(ValueError, match="unknown NTU dataset 'ntu90'"):
        ntu_split([], "ntu90")
    with pytest.raises(ValueError, match="'S001C001' is not an NTU sample name"):
        ntu_split(["S001C001"], "ntu60")


def test_official_missing_lists():
    ntu120, ntu60 = official_missing("ntu120"), official_missing("ntu60")
    assert len(ntu120) == 535 and len(ntu60) == 302
    assert ntu60 == {n for n in ntu120 if parse_ntu_name(n).action <= 60}
    assert "S001C002P005R002A008" in ntu60  # first of the official lists
    assert "S032C003P067R002A077" in ntu120 - ntu60  # last of the NTU120 list


@pytest.mark.parametrize(
    "dataset, counts",
    [  # REFERENCE §8.4: missing samples per split, from the official lists
        ("ntu60", {"xsub_train": 229, "xsub_val": 73, "xview_train": 274, "xview_val": 28}),
        ("ntu120", {"xsub_train": 334, "xsub_val": 201, "xset_train": 252, "xset_val": 283}),
    ],
)
def test_missing_samples_per_split(dataset, counts):
    split = ntu_split(sorted(official_missing(dataset)), dataset)
    assert {name: len(names) for name, names in split.items()} == counts
