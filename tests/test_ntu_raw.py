"""Raw NTU conversion (msg3d.data.ntu_raw) against hand-derived arrays and PYSKL's output."""

import collections
import importlib.util
import io
import pickle
import subprocess
import sys
import weakref

import numpy as np
import pytest
from conftest import FIXTURES, REALDATA, REPO, shared_file
from skeleton_text import BODY_ID, UPRIGHT, WIDE, body, expected, skeleton_bytes

import msg3d.fileio
from msg3d.data import ntu_raw
from msg3d.data.ntu_raw import NoBodiesError, SkeletonFormatError
from msg3d.data.pyskl_io import load_annotations

ZERO = np.zeros((1, 25, 3))
MOVING = (0.05, 0.0, 0.0)  # adds 0.0025 * var(t) to the motion of UPRIGHT (0.156)


def convert_bytes(data, tmp_path, name="S001C001P001R001A001"):
    path = tmp_path / f"{name}.skeleton"
    path.write_bytes(data)
    return ntu_raw.convert_file(path)


def assert_same_bodies(a, b):
    assert [(x.body_id, x.start) for x in a] == [(y.body_id, y.start) for y in b]
    for x, y in zip(a, b):
        assert x.keypoint.dtype == y.keypoint.dtype == np.float32
        np.testing.assert_array_equal(x.keypoint, y.keypoint)


# ---------------------------------------------------------------------------------------------
# selection, on hand-written files


def test_one_body(tmp_path):
    joints = body(3, step=(0.01, -0.02, 0.003))
    out = convert_bytes(skeleton_bytes(3, (BODY_ID, [0, 1, 2], joints)), tmp_path)
    assert out.dtype == np.float16 and out.shape == (1, 3, 25, 3)
    np.testing.assert_array_equal(out, expected(joints))


def test_two_bodies_sorted_by_motion(tmp_path):
    still, moving = body(13), body(13, step=MOVING)  # motion 0.156 < 0.191; still comes first
    data = skeleton_bytes(13, (BODY_ID, range(13), still), (BODY_ID + 1, range(13), moving))
    np.testing.assert_array_equal(convert_bytes(data, tmp_path), expected(moving, still))


def test_crlf(tmp_path):
    still, moving = body(13), body(13, step=MOVING)
    data = skeleton_bytes(13, (BODY_ID, range(13), still), (BODY_ID + 1, range(13), moving), crlf=True)
    assert data.count(b"\r\n") == data.count(b"\n") == 1 + 13 * (1 + 2 * 27)
    np.testing.assert_array_equal(convert_bytes(data, tmp_path), expected(moving, still))


def test_noisy_short_and_spread_invalid_bodies_are_dropped(tmp_path):
    a, b = body(13, step=MOVING), body(12)  # 12 frames: just long enough
    short = body(11, step=(0.5, 0.5, 0.0))  # large motion, but 11 frames: length noise
    wide = body(13, shape=WIDE)  # largest motion, x-range > 0.8 y-range in every frame
    data = skeleton_bytes(
        13,
        (BODY_ID + 3, range(13), wide),
        (BODY_ID + 2, range(11), short),
        (BODY_ID + 1, range(12), b),
        (BODY_ID, range(13), a),
    )
    np.testing.assert_array_equal(convert_bytes(data, tmp_path), expected(a, np.concatenate([b, ZERO])))


def test_partly_implausible_body_ranks_by_its_plausible_frames(tmp_path):
    # 4 of 13 frames implausible (30.8 % < 69.754 %): kept, motion = min(0.31, 0.156 over the
    # plausible frames), so it drops below the moving body (0.191) that it would otherwise lead.
    partly = np.concatenate([body(9), body(4, shape=WIDE)])
    moving = body(13, step=MOVING)
    data = skeleton_bytes(13, (BODY_ID, range(13), partly), (BODY_ID + 1, range(13), moving))
    np.testing.assert_array_equal(convert_bytes(data, tmp_path), expected(moving, partly))


def test_motion_ties_after_spread_denoising_keep_the_first_ranking(tmp_path):
    # Same plausible frames, so the same reduced motion; the re-sort is stable, so the body with
    # more motion before denoising (y, wider implausible frames) stays first although x comes
    # first in the file and has the larger ID.
    x = np.concatenate([body(9), body(4, shape=WIDE)])
    y = np.concatenate([body(9), body(4, shape=WIDE * [1.5, 1, 1])])
    data = skeleton_bytes(13, (BODY_ID + 1, range(13), x), (BODY_ID, range(13), y))
    np.testing.assert_array_equal(convert_bytes(data, tmp_path), expected(y, x))


# implausible share 9/13 = 69.2 % and 30/43 = 69.77 %, either side of 69.754 %
@pytest.mark.parametrize("n, n_wide, kept", [(13, 9, True), (43, 30, False)])
def test_spread_noise_threshold(tmp_path, n, n_wide, kept):
    noisy = np.concatenate([body(n - n_wide), body(n_wide, shape=WIDE)])
    clean = body(n, step=MOVING)
    data = skeleton_bytes(n, (BODY_ID, range(n), noisy), (BODY_ID + 1, range(n), clean))
    out = convert_bytes(data, tmp_path)
    # kept: its motion drops to that of its plausible frames (0.156), below clean's 0.191
    want = expected(clean, noisy) if kept else expected(clean)
    np.testing.assert_array_equal(out, want)


def test_frames_without_bodies_are_skipped(tmp_path):
    a = body(2, step=MOVING)
    data = skeleton_bytes(4, (BODY_ID, [1, 3], a))  # frames 0 and 2 hold no body
    np.testing.assert_array_equal(convert_bytes(data, tmp_path), expected(a))

    # Two bodies that never overlap both go on track 0; B starts right after A because the
    # empty frame 14 between them does not count.
    a, b = body(13, step=MOVING), body(13)
    data = skeleton_bytes(28, (BODY_ID, range(1, 14), a), (BODY_ID + 1, range(15, 28), b))
    out = convert_bytes(data, tmp_path, "S001C001P001R001A002")
    np.testing.assert_array_equal(out, expected(np.concatenate([a, b]), np.zeros((26, 25, 3))))


def test_second_track_span_starts_at_frame_0(tmp_path):
    # PYSKL's track 1 span starts as [0, 0): after B (frames 20-39) it covers [0, 40), so C
    # (frames 0-14, least motion) overlaps both tracks and is dropped.
    a = body(40, step=MOVING)
    b = body(20, step=(0.0, 0.02, 0.0))
    c = body(15)
    data = skeleton_bytes(40, (BODY_ID, range(40), a), (BODY_ID + 1, range(20, 40), b), (BODY_ID + 2, range(15), c))
    np.testing.assert_array_equal(
        convert_bytes(data, tmp_path), expected(a, np.concatenate([np.zeros((20, 25, 3)), b]))
    )


def test_trailing_frames_trimmed_and_tracks_swapped(tmp_path):
    a = body(14, step=MOVING)  # most motion: track 0, frames 3-16
    b = body(14)  # track 1, frames 0-13
    c = body(20, shape=0.5 * UPRIGHT)  # least motion, frames 5-24, overlaps both: dropped
    data = skeleton_bytes(25, (BODY_ID, range(3, 17), a), (BODY_ID + 1, range(14), b), (BODY_ID + 2, range(5, 25), c))
    # frames 17-24 are empty on both tracks (only C was there): trimmed; track 0 lacks joint 1 in
    # frame 0 but track 1 has it: swapped
    track_a = np.concatenate([np.zeros((3, 25, 3)), a])
    track_b = np.concatenate([b, np.zeros((3, 25, 3))])
    np.testing.assert_array_equal(convert_bytes(data, tmp_path), expected(track_b, track_a))


def test_leading_empty_frames_trimmed(tmp_path):
    a = np.concatenate([np.zeros((2, 25, 3)), body(12, step=MOVING)])  # all-zero joints in frames 0-1
    b = body(14)
    data = skeleton_bytes(16, (BODY_ID, range(14), a), (BODY_ID + 1, range(2, 16), b))
    out = convert_bytes(data, tmp_path)
    np.testing.assert_array_equal(out, expected(np.concatenate([a[2:], np.zeros((2, 25, 3))]), b))


def test_body_ids_that_collide_as_float64_stay_apart(tmp_path):
    assert float(BODY_ID) == float(BODY_ID + 1)
    a, b = body(13, step=MOVING), body(13)
    data = skeleton_bytes(13, (BODY_ID, range(13), a), (BODY_ID + 1, range(13), b))
    assert convert_bytes(data, tmp_path).shape == (2, 13, 25, 3)


def test_body_that_leaves_and_returns_is_stacked_without_the_gap(tmp_path):
    a = body(18, step=MOVING)
    other = body(3)  # 3 frames: length noise
    frames_a = [*range(6), *range(9, 21)]
    data = skeleton_bytes(21, (BODY_ID, frames_a, a), (BODY_ID + 1, [6, 7, 8], other))
    np.testing.assert_array_equal(convert_bytes(data, tmp_path), expected(a))


def test_single_short_body_is_kept(tmp_path):
    a = body(3)  # the length filter only applies when there are several bodies
    np.testing.assert_array_equal(convert_bytes(skeleton_bytes(3, (BODY_ID, range(3), a)), tmp_path), expected(a))


def _random_tracks(rng, num_frames):
    """Up to 6 bodies that exercise every branch of PYSKL's selection (see the test below)."""
    tracks = []
    ids = BODY_ID + rng.permutation(8)  # first appearance does not follow the ID order
    for b in range(int(rng.integers(1, 7))):
        length = int(rng.choice([rng.integers(1, num_frames + 1), min(num_frames, 11), min(num_frames, 12)]))
        start = int(rng.integers(0, num_frames - length + 1))
        present = np.arange(start, start + length)
        if length > 2 and rng.random() < 0.3:  # leaves and comes back
            present = np.sort(rng.choice(present, size=int(rng.integers(1, length)), replace=False))
        shape = (UPRIGHT, WIDE)[int(rng.random() < 0.3)] * rng.uniform(0.5, 1.5, 3)
        joints = body(len(present), step=rng.normal(0, 0.02, 3), offset=rng.normal(0, 0.5, 3), shape=shape)
        implausible = rng.random(len(present)) < rng.uniform(0, 0.9)  # some frames smeared sideways
        joints[implausible] = body(1, shape=1.3 * WIDE)
        joints[rng.random(len(present)) < 0.05] = 0  # all joints at 0
        joints[rng.random(len(present)) < 0.05, 1] = 0  # joint 1 missing (the swap test)
        tracks.append((ids[b], present, joints))
    if rng.random() < 0.3:  # body 0 mirrored in x: exactly the same motion, so the order of ties shows
        _, present, joints = tracks[0]
        tracks.insert(int(rng.integers(len(tracks) + 1)), (ids[-1], present, joints * [-1, 1, 1]))
    return tracks


def test_random_files_match_a_port_of_pyskl(tmp_path):
    # benchmarks/convert_speed.py holds a straightforward port of PYSKL's ntu_preproc.py (its
    # speed baseline); on files built to hit every selection branch (length and spread noise,
    # ties, gaps, two tracks, trimming, swaps) both give the same array or both fail.
    spec = importlib.util.spec_from_file_location("convert_speed", REPO / "benchmarks" / "convert_speed.py")
    port = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(port)
    rng = np.random.default_rng(0)
    outcomes = collections.Counter()
    for i in range(150):
        num_frames = int(rng.integers(1, 40))
        path = tmp_path / f"S001C001P001R001A{i % 120 + 1:03d}.skeleton"
        path.write_bytes(skeleton_bytes(num_frames, *_random_tracks(rng, num_frames)))
        try:
            want = port.port_convert(path)
        except (AssertionError, IndexError):  # where PYSKL's script would crash
            with pytest.raises(NoBodiesError):
                ntu_raw.convert_file(path)
            outcomes["no body"] += 1
            continue
        got = ntu_raw.convert_file(path)
        assert got.dtype == np.float16 and got.shape == want.shape, i
        np.testing.assert_array_equal(got, want, err_msg=str(i))
        outcomes[f"M={len(got)}"] += 1
    assert min(outcomes.values()) >= 20 and len(outcomes) == 3, outcomes  # every outcome is exercised


def test_coordinates_beyond_float16_are_an_error(tmp_path):
    joints = body(3)
    joints[1, 4, 2] = 70000.0  # float16 overflows to inf from 65520 on
    with pytest.raises(SkeletonFormatError, match=r"A001\.skeleton: .* coordinate of 70000, beyond float16"):
        convert_bytes(skeleton_bytes(3, (BODY_ID, range(3), joints)), tmp_path)
    joints[1, 4, 2] = 65504.0  # the largest float16 is fine
    assert convert_bytes(skeleton_bytes(3, (BODY_ID, range(3), joints)), tmp_path)[0, 1, 4, 2] == 65504


@pytest.mark.parametrize(
    "tracks, message",
    [
        ([], "no body in any frame"),
        ([(BODY_ID, range(5), body(5)), (BODY_ID + 1, range(5), body(5, step=MOVING))], "11 frames or fewer"),
        ([(BODY_ID, range(13), body(13, shape=WIDE)), (BODY_ID + 1, range(13), body(13, shape=WIDE))], "spread noise"),
    ],
)
def test_no_surviving_body(tmp_path, tracks, message):
    with pytest.raises(NoBodiesError, match=message):
        convert_bytes(skeleton_bytes(13, *tracks), tmp_path)


# ---------------------------------------------------------------------------------------------
# parsing: bad input, unusual but valid text, the writer


def _lines(data):
    return data.decode().split("\n")


def _replace_line(data, number, text):
    lines = _lines(data)
    lines[number - 1] = text
    return "\n".join(lines).encode()


def _base():
    return skeleton_bytes(2, (BODY_ID, [0, 1], body(2, step=MOVING)))  # 57 lines: 1 + 2 * (1 + 1 + 1 + 25)


def _field_line(number, field, value):
    def mutate(data):
        fields = _lines(data)[number - 1].split()
        fields[field] = value
        return _replace_line(data, number, " ".join(fields))

    return mutate


BAD_INPUTS = {
    "truncated": (
        lambda d: "\n".join(_lines(d)[:40]).encode(),
        41,
        "file ends in frame 2 of 2 where a joint line was expected",
    ),
    "truncated mid-line": (
        lambda d: "\n".join(_lines(d)[:39] + [" ".join(_lines(d)[39].split()[:5])]).encode(),
        40,
        "joint line has 5 fields, expected 12",
    ),
    "wrong joint count": (lambda d: _replace_line(d, 4, "24"), 4, "joint count is 24, expected 25"),
    "non-numeric x": (_field_line(6, 0, "abc"), 6, "joint x 'abc' is not a finite number"),
    "nan z": (_field_line(7, 2, "nan"), 7, "joint z 'nan' is not a finite number"),
    "11 joint fields": (
        lambda d: _replace_line(d, 8, " ".join(_lines(d)[7].split()[:11])),
        8,
        "joint line has 11 fields",
    ),
    "9 body-info fields": (
        lambda d: _replace_line(d, 31, " ".join(_lines(d)[30].split()[:9])),
        31,
        "body-info line has 9 fields",
    ),
    "float body ID": (_field_line(3, 0, "7.2e16"), 3, "body ID '7.2e16' is not a non-negative integer"),
    "frame count too large": (
        lambda d: _replace_line(d, 1, "3"),
        58,
        "file ends in frame 3 of 3 where a body count line",
    ),
    "frame count too small": (lambda d: _replace_line(d, 1, "1"), 30, "unexpected data after the last of the 1 frames"),
    "frame count not an integer": (
        lambda d: _replace_line(d, 1, "2.0"),
        1,
        "frame count '2.0' is not a non-negative integer",
    ),
    "two counts on a line": (lambda d: _replace_line(d, 2, "1 1"), 2, "body count line has 2 fields, expected 1"),
    "NUL byte": (lambda d: _replace_line(d, 10, _lines(d)[9] + "\x00"), 10, "unexpected control byte 0x00"),
    # a lone \r ends a line for PYSKL's text-mode read (universal newlines)
    "carriage return inside a line": (
        lambda d: _replace_line(d, 9, _lines(d)[8].replace(" ", "\r", 1)),
        9,
        "joint line has 1 field, expected 12",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_names_file_and_line(tmp_path, case):
    mutate, line, message = BAD_INPUTS[case]
    data = mutate(_base())
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_bytes(data)
    with pytest.raises(SkeletonFormatError) as err:
        ntu_raw.convert_file(path)
    assert str(err.value).startswith(f"{path}: line {line}: ")
    assert message in str(err.value)


@pytest.mark.parametrize("data", [b"", b"\n  \r\n\t\n"])
def test_empty_file(tmp_path, data):
    with pytest.raises(SkeletonFormatError, match="S001C001P001R001A001.skeleton: empty file"):
        convert_bytes(data, tmp_path)


def test_unusual_spellings_parse_like_plain_text():
    """Whitespace-tolerant parsing: such files take the line reader and give the same bodies."""
    plain = skeleton_bytes(13, (BODY_ID, range(13), body(13, step=MOVING)), (BODY_ID + 1, range(3, 13), body(10)))
    lines = _lines(plain)
    x = lines[5].split()
    variants = {
        "tabs and runs of spaces": plain.replace(b" ", b" \t  "),
        "leading and trailing blanks": b"\n".join(b"  " + line + b" \t" for line in plain.split(b"\n")),
        "blank lines": plain.replace(b"\n25\n", b"\n\n25\n\n"),
        "no final newline": plain.rstrip(b"\n"),
        "old Mac line ends": plain.replace(b"\n", b"\r"),
        "exponent and sign spellings": _replace_line(
            plain, 6, " ".join([f"{float(x[0]):.3E}", x[1], "+" + x[2], *x[3:]])
        ),
        "joint count 025": _replace_line(plain, 4, "025"),
        "unparsed fields are only counted": _replace_line(plain, 6, " ".join([*x[:3], "NaN", "-Infinity", *x[5:]])),
    }
    reference = ntu_raw.parse_skeleton(plain)
    assert_same_bodies(reference, ntu_raw._parse_lines(plain, "plain"))
    for name, data in variants.items():
        assert_same_bodies(ntu_raw.parse_skeleton(data, name), reference)


def test_token_reader_matches_line_reader_on_random_files():
    rng = np.random.default_rng(0)
    for _ in range(10):
        tracks = []
        num_frames = int(rng.integers(1, 40))
        for b in range(int(rng.integers(1, 5))):
            present = np.flatnonzero(rng.random(num_frames) < 0.7)
            joints = np.round(
                rng.normal(0, 1, (len(present), 25, 3)) * 10.0 ** rng.integers(-6, 1, (len(present), 25, 3)), 6
            )
            tracks.append((BODY_ID + b, present, joints))
        data = skeleton_bytes(num_frames, *tracks, crlf=bool(rng.integers(2)))
        fast = ntu_raw._parse_tokens(data)
        assert_same_bodies(fast, ntu_raw._parse_lines(data, "random"))
        for body_id, present, joints in tracks:
            if len(present):
                got = next(b for b in fast if b.body_id == body_id)
                np.testing.assert_array_equal(got.keypoint, joints.astype(np.float32))


def test_writer_round_trip():
    joints = body(2, step=(0.1234, -0.0567, 0.0009))
    text = ntu_raw.format_skeleton_file([[(BODY_ID, joints[0])], [], [(BODY_ID, joints[1])]])
    lines = text.split("\n")
    assert lines[:4] == ["3", "1", f"{BODY_ID} 0 1 1 1 1 0 0 0 2", "25"]
    assert all(len(line.split()) == 12 for line in lines[4:29])
    (parsed,) = ntu_raw.parse_skeleton(text.encode())
    assert parsed.body_id == BODY_ID and parsed.start == 0
    np.testing.assert_array_equal(parsed.keypoint, joints.astype(np.float32))
    noisy = ntu_raw.format_skeleton_file([[(BODY_ID, joints[0])]], rng=np.random.default_rng(0))
    assert noisy.split("\n")[2].split()[7] != "0" and noisy.split("\n")[4].split()[7:11] != ["1", "0", "0", "0"]
    np.testing.assert_array_equal(ntu_raw.parse_skeleton(noisy.encode())[0].keypoint, joints[:1].astype(np.float32))
    with pytest.raises(ValueError, match=r"shape \(25, 3\)"):
        ntu_raw.format_skeleton_file([[(1, np.zeros((24, 3)))]])


# ---------------------------------------------------------------------------------------------
# converting a folder


def _write(folder, name, data):
    (folder / name).write_bytes(data)


def _raw_folder(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    one = skeleton_bytes(3, (BODY_ID, range(3), body(3)))
    two = skeleton_bytes(13, (BODY_ID, range(13), body(13)), (BODY_ID + 1, range(13), body(13, step=MOVING)))
    _write(raw, "S001C001P001R001A001.skeleton", one)  # xsub train (P001), xview val (C001)
    _write(raw, "S001C002P003R002A002.skeleton", two)  # xsub val (P003), xview train
    _write(raw, "S002C003P008R001A059.skeleton", one)  # xsub train (P008), xview train
    _write(raw, "S001C002P005R002A008.skeleton", one)  # on the official missing list
    _write(raw, "S003C001P002R001A010.skeleton", b"2\n0\n0\n")  # no bodies
    _write(raw, "S003C001P002R001A011.skeleton", b"\n".join(one.split(b"\n")[:50]))  # truncated
    _write(raw, "S003C001P002R001A061.skeleton", one)  # NTU120 only
    _write(raw, "foo.skeleton", one)  # not an NTU name
    _write(raw, "README.txt", b"not a skeleton")  # ignored
    return raw


def _read_tsv(path):
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert rows[0] == ["file", "reason", "detail"]
    return rows[1:]


def test_convert_folder(tmp_path):
    raw = _raw_folder(tmp_path)
    out = tmp_path / "out" / "ntu60.pkl"
    summary = ntu_raw.convert_ntu(raw, out, "ntu60", jobs=1)
    ann = pickle.loads(out.read_bytes())
    assert list(ann) == ["annotations", "split"]
    assert load_annotations(out, dataset="ntu60")["split"] == ann["split"]  # what import-pyskl and derive read
    names = [a["frame_dir"] for a in ann["annotations"]]
    assert names == ["S001C001P001R001A001", "S001C002P003R002A002", "S002C003P008R001A059"]
    assert [a["label"] for a in ann["annotations"]] == [0, 1, 58]
    for a in ann["annotations"]:
        assert list(a) == ["frame_dir", "label", "keypoint", "total_frames"]
        assert a["keypoint"].dtype == np.float16 and a["total_frames"] == a["keypoint"].shape[1]
        np.testing.assert_array_equal(a["keypoint"], ntu_raw.convert_file(raw / f"{a['frame_dir']}.skeleton"))
    assert ann["split"] == {
        "xsub_train": ["S001C001P001R001A001", "S002C003P008R001A059"],
        "xsub_val": ["S001C002P003R002A002"],
        "xview_train": ["S001C002P003R002A002", "S002C003P008R001A059"],
        "xview_val": ["S001C001P001R001A001"],
    }
    rows = _read_tsv(out.parent / "skipped.tsv")
    assert [r[:2] for r in rows] == [
        ["S001C002P005R002A008.skeleton", "official-missing"],
        ["S003C001P002R001A010.skeleton", "no-bodies"],
        ["S003C001P002R001A011.skeleton", "unreadable"],
        ["foo.skeleton", "unreadable"],
    ]
    assert f"{raw / 'S003C001P002R001A011.skeleton'}: line " in rows[2][2] and "truncated" in rows[2][2]
    assert "SsssCcccPpppRrrrAaaa" in rows[3][2]
    assert summary["converted"] == 3 and summary["other_actions"] == 1
    assert summary["skipped"] == {"official-missing": 1, "no-bodies": 1, "unreadable": 2}

    ntu_raw.convert_ntu(raw, tmp_path / "120" / "ntu120.pkl", "ntu120", jobs=1)
    ntu120 = pickle.loads((tmp_path / "120" / "ntu120.pkl").read_bytes())
    assert [a["frame_dir"] for a in ntu120["annotations"]][-1] == "S003C001P002R001A061"
    assert set(ntu120["split"]) == {"xsub_train", "xsub_val", "xset_train", "xset_val"}


def test_strict_fails_on_a_malformed_file(tmp_path):
    raw = _raw_folder(tmp_path)
    (raw / "foo.skeleton").unlink()
    out = tmp_path / "out" / "ntu60.pkl"
    with pytest.raises(SkeletonFormatError, match=r"S003C001P002R001A011\.skeleton: line \d+: file ends"):
        ntu_raw.convert_ntu(raw, out, "ntu60", jobs=1, strict=True)
    assert not out.exists()
    (raw / "S003C001P002R001A011.skeleton").unlink()
    (raw / "bar.skeleton").write_bytes(b"1\n0\n")
    with pytest.raises(SkeletonFormatError, match=r"bar\.skeleton: file name is not"):
        ntu_raw.convert_ntu(raw, out, "ntu60", jobs=1, strict=True)
    (raw / "bar.skeleton").unlink()
    ntu_raw.convert_ntu(raw, out, "ntu60", jobs=1, strict=True)  # missing-list and empty files are no error
    assert out.exists()


def test_jobs_do_not_change_the_output(tmp_path):
    raw = _raw_folder(tmp_path)
    for i in range(6):  # enough files for several chunks
        data = skeleton_bytes(
            13, (BODY_ID, range(13), body(13, step=(0.01 * i, 0, 0))), (BODY_ID + 1, range(2, 13), body(11))
        )
        _write(raw, f"S005C002P0{10 + i}R001A0{20 + i}.skeleton", data)
    one, two = tmp_path / "j1" / "ntu120.pkl", tmp_path / "j2" / "ntu120.pkl"
    ntu_raw.convert_ntu(raw, one, "ntu120", jobs=1)
    ntu_raw.convert_ntu(raw, two, "ntu120", jobs=2)
    assert one.read_bytes() == two.read_bytes()
    assert (one.parent / "skipped.tsv").read_bytes() == (two.parent / "skipped.tsv").read_bytes()


def test_interrupted_write_leaves_no_output(tmp_path, monkeypatch):
    """A write that fails half way (a full disk) leaves the previous pickle and no temporary."""
    raw = _raw_folder(tmp_path)
    out = tmp_path / "out" / "ntu60.pkl"
    out.parent.mkdir()
    out.write_bytes(b"previous")

    class FailingFile(io.FileIO):
        def write(self, data):
            if self.tell() + len(data) > 1000:
                raise OSError("disk full")
            return super().write(data)

    monkeypatch.setattr(msg3d.fileio, "open", lambda path, mode: FailingFile(path, "w"), raising=False)
    with pytest.raises(OSError, match="disk full"):
        ntu_raw.convert_ntu(raw, out, "ntu60", jobs=1)
    assert [p.name for p in out.parent.iterdir()] == ["ntu60.pkl"] and out.read_bytes() == b"previous"


def test_arrays_are_written_as_they_come(tmp_path, monkeypatch):
    """Each array is pickled to disk as soon as it is converted: while a file converts, at most two
    earlier arrays are alive (the last one, still referenced by the loop's iterators, and the one
    before it), however many files there are; a converter that kept them all would hold 9."""
    raw = _raw_folder(tmp_path)
    for i in range(6):
        _write(raw, f"S005C002P0{10 + i}R001A0{20 + i}.skeleton", skeleton_bytes(3, (BODY_ID, range(3), body(3))))
    alive, most = [], []
    real = ntu_raw.convert_file

    def tracked(path):
        most.append(sum(ref() is not None for ref in alive))
        keypoint = real(path)
        alive.append(weakref.ref(keypoint))
        return keypoint

    monkeypatch.setattr(ntu_raw, "convert_file", tracked)
    summary = ntu_raw.convert_ntu(raw, tmp_path / "out" / "ntu120.pkl", "ntu120", jobs=1)
    assert summary["converted"] == 10 and len(most) == 12 and max(most) <= 2


def test_interrupted_conversion_leaves_no_output(tmp_path, monkeypatch):
    raw = _raw_folder(tmp_path)
    out = tmp_path / "out" / "ntu60.pkl"
    calls = []
    real = ntu_raw.convert_file

    def convert_then_interrupt(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(ntu_raw, "convert_file", convert_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        ntu_raw.convert_ntu(raw, out, "ntu60", jobs=1)
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_progress_lines(tmp_path, monkeypatch):
    raw = _raw_folder(tmp_path)
    monkeypatch.setattr(ntu_raw, "PROGRESS_SECONDS", 0.0)
    log = io.StringIO()
    ntu_raw.convert_ntu(raw, tmp_path / "out" / "ntu60.pkl", "ntu60", jobs=1, log=log)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("convert-ntu: 1/5 files, ") and "files/s" in lines[0]
    assert lines[-1].startswith(f"convert-ntu: wrote {tmp_path / 'out' / 'ntu60.pkl'}: 3 samples of ntu60")


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        ntu_raw.convert_ntu(tmp_path / "nope", tmp_path / "a.pkl", "ntu60")
    with pytest.raises(FileNotFoundError, match="no .skeleton files"):
        ntu_raw.convert_ntu(tmp_path, tmp_path / "a.pkl", "ntu60")
    with pytest.raises(ValueError, match="unknown dataset"):
        ntu_raw.convert_ntu(tmp_path, tmp_path / "a.pkl", "ntu90")
    _write(tmp_path, "S001C001P001R001A070.skeleton", b"1\n0\n")
    with pytest.raises(ValueError, match="no sample of ntu60 converted"):
        ntu_raw.convert_ntu(tmp_path, tmp_path / "out" / "a.pkl", "ntu60")


def test_ntu120_refused_for_a_folder_of_ntu60_files(tmp_path):
    raw = _raw_folder(tmp_path)
    (raw / "S003C001P002R001A061.skeleton").unlink()  # NTU60's files only, ...
    _write(raw, "S019C001P046R001A075.skeleton", b"1\n0\n")  # ... and one of NTU120 on the missing list
    out = tmp_path / "out" / "ntu120.pkl"
    with pytest.raises(ValueError) as info:
        ntu_raw.convert_ntu(raw, out, "ntu120", jobs=1)
    assert str(info.value) == (
        f"{raw}: NTU RGB+D 120 skeleton files not detected (no file of action > 60 outside the missing list; "
        "found 5 usable .skeleton file(s), setups S001-S003, actions A001-A059 (NTU RGB+D 60)), so it cannot be "
        "converted as ntu120, as in PYSKL's ntu_preproc.py; use --dataset ntu60, or add NTU120's files "
        "(setups S018-S032, actions A061-A120)"
    )
    assert not out.parent.exists()  # nothing written, not even skipped.tsv
    ntu_raw.convert_ntu(raw, tmp_path / "60" / "ntu60.pkl", "ntu60", jobs=1)  # the same folder as ntu60 is fine
    done = _cli(raw, out, "--dataset", "ntu120")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"msg3d convert-ntu: error: {raw}: NTU RGB+D 120 skeleton files not detected")
    assert not out.parent.exists()


# ---------------------------------------------------------------------------------------------
# command line


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "msg3d", "convert-ntu", *map(str, args)], capture_output=True, text=True, cwd=REPO
    )


def test_cli(tmp_path):
    raw = _raw_folder(tmp_path)
    (raw / "foo.skeleton").unlink()
    out = tmp_path / "out" / "ntu60.pkl"
    done = _cli(raw, out, "--dataset", "ntu60", "--jobs", "1")
    assert done.returncode == 0, done.stderr
    assert "3 samples of ntu60" in done.stderr and out.exists()
    failed = _cli(raw, tmp_path / "strict" / "ntu60.pkl", "--dataset", "ntu60", "--strict")
    assert failed.returncode == 2
    assert (
        failed.stderr.startswith("msg3d convert-ntu: error: ")
        and "S003C001P002R001A011.skeleton: line " in failed.stderr
    )
    assert not (tmp_path / "strict" / "ntu60.pkl").exists()
    assert _cli(raw, out, "--dataset", "ntu60", "--jobs", "0").returncode == 2


def test_no_heavy_imports():
    code = "import sys, msg3d.data.ntu_raw; print(sorted(m for m in ('torch', 'pandas', 'matplotlib') if m in sys.modules))"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
    )


# ---------------------------------------------------------------------------------------------
# real Kinect recordings vs PYSKL's conversion


def test_real_files_match_pyskl(tmp_path):
    torch = pytest.importorskip("torch")
    ref = torch.load(shared_file(FIXTURES / "pyskl_ntu_real_ref.pt"), weights_only=True)["expected"]
    raw = shared_file(REALDATA)  # NTU60 recordings: ntu120 would be refused
    out = tmp_path / "ntu60.pkl"
    ntu_raw.convert_ntu(raw, out, "ntu60", jobs=1)
    ann = pickle.loads(out.read_bytes())
    got = {a["frame_dir"]: a for a in ann["annotations"]}
    assert sorted(got) == sorted(ref) and len(ref) == 10
    for name, want in ref.items():
        assert got[name]["label"] == want["label"]
        assert got[name]["total_frames"] == want["total_frames"]
        np.testing.assert_array_equal(got[name]["keypoint"], want["keypoint_float16"].numpy())
        data = (raw / f"{name}.skeleton").read_bytes()
        assert_same_bodies(ntu_raw._parse_tokens(data), ntu_raw._parse_lines(data, name))
    assert _read_tsv(tmp_path / "skipped.tsv") == []
