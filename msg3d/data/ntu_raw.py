"""Raw NTU RGB+D ``.skeleton`` files -> PYSKL's 3D annotation pickle.

``python -m msg3d convert-ntu RAW_DIR OUT.pkl --dataset {ntu60,ntu120} [--jobs N] [--strict]``

Each file becomes the array PYSKL's ``tools/data/ntu_preproc.py`` makes from it (REFERENCE §8.2):

1. Parse. Bodies are tracked by their 64-bit body ID (kept as Python ints: as float64, IDs that
   differ in the last digits collide). Frames without a body are skipped, so a body's ``start`` is
   its first frame's index among the frames that hold at least one body, and its frames are
   stacked in order of appearance (a gap in its presence closes up).
2. Select. One body -> ``(1, T, 25, 3)``. Otherwise, bodies sorted by motion (summed per-axis
   variance of all its joint positions, float32) are denoised: bodies of <= 11 frames are dropped;
   then a frame is plausible when the x-range of its joints is <= 0.8 times their y-range, a body
   with >= 69.754 % implausible frames is dropped and the others' motion becomes the smaller of
   it and the variance over their plausible frames; re-sorted. Two or more bodies left are placed
   on two tracks (``(2, T, 25, 3)``), frames empty on both tracks are trimmed at both ends, and the
   tracks are swapped if only the second has joint 1 in the first frame.
3. Cast to float16; ``label`` = action - 1.

Every fact above was read from PYSKL's code; the code here is our own, and it keeps PYSKL's
float32 arithmetic (numpy >= 2 scalar rules) wherever a comparison or a sort depends on it.

The pickle is written as a stream (``msg3d.fileio.write_pickle_streamed``): each array goes to
disk as soon as its file is converted, so memory stays flat however many files the folder holds
(the full NTU120 download gives a 1.8 GB pickle). Its dict is ``{'annotations': [...], 'split':
{...}}``, in that order (the split lists the files converted, known only at the end); the values
are what PYSKL's script writes.

Speed: a file is read as bytes and cut into tokens once with numpy. The per-frame body counts
give the positions of the tokens that matter (counts, body IDs, x y z), and x y z are converted
in bulk (an exact integer-mantissa conversion; unusual spellings go through ``float``). The unused
fields (depth/colour pixels, orientation, states) are counted, not converted. A file that does
not fit that layout is read again line by line (``_parse_lines``), which names the first problem
with its line number, or yields the same bodies for layouts the token path does not expect.
"""

import os
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from msg3d.data.splits import NTU_NAME, NUM_ACTIONS, ntu_split, official_missing, parse_ntu_name
from msg3d.fileio import PickledList, write_pickle_streamed, write_text_atomic
from msg3d.layouts import get_layout

NUM_JOINTS = get_layout("nturgb+d").num_joints  # 25 Kinect v2 joints
# body-info line: bodyID clippedEdges handLeft{Confidence,State} handRight{..} isRestricted leanX leanY trackingState
BODY_INFO_FIELDS = 10
JOINT_FIELDS = 12  # x y z depthX depthY colorX colorY orientationW X Y Z trackingState

# PYSKL's denoising constants (tools/data/ntu_preproc.py)
LENGTH_THRESHOLD = 11  # bodies with this many frames or fewer are noise
WH_RATIO = 0.8  # a frame is plausible if x-range <= WH_RATIO * y-range
SPREAD_NOISE_RATIO = 0.69754  # drop a body with at least this share of implausible frames
EPS = 1e-3  # a frame (or joint) is empty if the sum of its |coordinates| is below this
FLOAT16_OVERFLOW = 65520.0  # the smallest magnitude that rounds to inf in float16

SKIPPED_TSV = "skipped.tsv"
PROGRESS_SECONDS = 2.0

_BODY_TOKENS = BODY_INFO_FIELDS + 1 + NUM_JOINTS * JOINT_FIELDS
_JOINT_COUNT = str(NUM_JOINTS).encode()
# token offsets, from a body's first token: the first token of each of its lines; its x y z
_LINE_OFFSETS = np.concatenate(([0, BODY_INFO_FIELDS], BODY_INFO_FIELDS + 1 + JOINT_FIELDS * np.arange(NUM_JOINTS)))
_XYZ_OFFSETS = (_LINE_OFFSETS[2:, None] + np.arange(3)).ravel()

_POW10 = 10.0 ** np.arange(15)
_DECIMAL = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BAD_CONTROL = re.compile(rb"[\x00-\x08\x0e-\x1f]")


class SkeletonFormatError(ValueError):
    """A ``.skeleton`` file that breaks the format; the message names the file and the line."""


class NoBodiesError(ValueError):
    """A well-formed file from which no body survives (none in any frame, or all are noise)."""


class Body(NamedTuple):
    body_id: int
    start: int  # index of its first frame among the frames that hold a body
    keypoint: np.ndarray  # (n, 25, 3) float32, its frames in order of appearance


class _Irregular(Exception):
    """The token path cannot read this file; the line reader takes over."""


# ----------------------------------------------------------------------------------------------
# parsing


def parse_skeleton(data, source="<bytes>"):
    """Bodies of one ``.skeleton`` file's bytes, in order of first appearance (list of ``Body``).

    Raises ``SkeletonFormatError`` (naming ``source`` and the line) for a malformed file.
    """
    try:
        return _parse_tokens(data)
    except _Irregular:
        return _parse_lines(data, source)


def _group_bodies(body_ids, frame_index, keypoints):
    """Tracks by body ID: ``keypoints[i]`` (25, 3) is body ``body_ids[i]`` in frame ``frame_index[i]``."""
    tracks = {}
    for i, (body_id, frame) in enumerate(zip(body_ids, frame_index)):
        track = tracks.get(body_id)
        if track is None:
            tracks[body_id] = (frame, [i])
        else:
            track[1].append(i)
    return [Body(body_id, start, keypoints[rows]) for body_id, (start, rows) in tracks.items()]


def _parse_tokens(data):
    """Fast path; raises ``_Irregular`` on anything it does not expect."""
    buf = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(buf == 10)
    is_return = buf == 13
    returns = np.count_nonzero(is_return)
    # a lone \r ends a line too (universal newlines, as PYSKL reads text): left to the line reader
    if returns and returns != np.count_nonzero(is_return[:-1] & (buf[1:] == 10)):
        raise _Irregular
    # tokens are separated by b" \t\n\v\f\r"; any other control byte is left to the line reader
    if np.count_nonzero(buf < 32) != len(newlines) + returns and (
        np.count_nonzero(buf < 9) or np.count_nonzero((buf > 13) & (buf < 32))
    ):
        raise _Irregular
    sep = np.empty(len(buf) + 2, bool)  # sep[i + 1]: buf[i] is a separator; True beyond both ends
    sep[0] = sep[-1] = True
    np.less_equal(buf, 32, out=sep[1:-1])
    edges = np.flatnonzero(sep[1:] != sep[:-1])
    starts, ends = edges[0::2], edges[1::2]  # token k is data[starts[k]:ends[k]]
    ntok = len(starts)
    if ntok == 0:
        raise _Irregular
    first, last = memoryview(starts), memoryview(ends)  # fast access to single offsets

    # walk the frames: each is a body count followed by that many blocks of _BODY_TOKENS
    token = data[first[0] : last[0]]
    if not token.isdigit():
        raise _Irregular
    pos = 1
    frame_pos, counts = [], []
    for _ in range(int(token)):
        if pos >= ntok:
            raise _Irregular
        token = data[first[pos] : last[pos]]
        if not token.isdigit():
            raise _Irregular
        frame_pos.append(pos)
        counts.append(int(token))
        pos += 1 + counts[-1] * _BODY_TOKENS
    if pos != ntok:
        raise _Irregular
    frame_pos = np.array(frame_pos, dtype=np.int64)
    counts = np.array(counts, dtype=np.int64)
    nbody = int(counts.sum())
    before = np.cumsum(counts) - counts  # bodies in earlier frames
    body_pos = np.repeat(frame_pos + 1 - before * _BODY_TOKENS, counts) + np.arange(nbody) * _BODY_TOKENS

    # every line must hold exactly the expected tokens: compare the first token of each line
    line_first = np.concatenate(([0], np.searchsorted(starts, newlines)))
    line_first = line_first[(line_first < ntok) & (np.diff(line_first, prepend=-1) != 0)]  # no blank lines
    expected = np.concatenate(([0], frame_pos, (body_pos[:, None] + _LINE_OFFSETS).ravel()))
    expected.sort()
    if not np.array_equal(line_first, expected):
        raise _Irregular
    count_pos = starts[body_pos + BODY_INFO_FIELDS]  # joint counts: b"25" (other spellings: line reader)
    if not (
        (ends[body_pos + BODY_INFO_FIELDS] - count_pos == 2) & (buf[count_pos] == 50) & (buf[count_pos + 1] == 53)
    ).all():
        raise _Irregular

    body_ids = [data[first[k] : last[k]] for k in body_pos.tolist()]
    if not all(map(bytes.isdigit, body_ids)):
        raise _Irregular
    if nbody == 0:
        return []
    xyz_tokens = (body_pos[:, None] + _XYZ_OFFSETS).ravel()
    xyz = _parse_decimals(data, buf, starts[xyz_tokens], ends[xyz_tokens])
    keypoints = xyz.reshape(nbody, NUM_JOINTS, 3).astype(np.float32)
    frame_index = np.repeat(np.cumsum(counts > 0) - 1, counts).tolist()
    return _group_bodies(list(map(int, body_ids)), frame_index, keypoints)


def _parse_decimals(data, buf, starts, ends):
    """float64 values of the tokens ``data[starts[i]:ends[i]]``, exactly as ``float()`` reads them.

    Tokens spelled ``[-]d.f`` with 1 to 14 fraction digits (what the Kinect SDK writes for metres)
    are converted in bulk: the fraction digits are read 8 at a time from 64-bit words (SWAR), so
    mantissa and power of ten are exact doubles and one division rounds correctly, as ``float()``
    does. Other spellings go through ``float()``. Every token must end at offset >= 16 and be
    followed by another token (true of x y z on a joint line).
    """
    negative = buf[starts] == 45  # '-'
    lead = starts + negative  # the digit before the point
    nfrac = ends - lead - 2
    k = np.minimum(np.maximum(nfrac, 1), 14)
    words = np.ndarray((len(buf) - 7,), "<u8", buffer=data, strides=(1,))  # words[i]: bytes i..i+7
    # the last 16 bytes of each token as two words, with the bytes before the fraction set to b"0"
    low = _digit_word(words[ends - 8], 8 * np.maximum(8 - k, 0))
    high = _digit_word(words[ends - 16], np.minimum(8 * (16 - k), 64))
    lead_digit = buf[lead] - np.uint8(48)
    simple = (nfrac == k) & (lead_digit < 10) & (buf[lead + 1] == 46) & _all_digits(low) & _all_digits(high)
    scale = _POW10[k]
    fraction = (_eight_digits(high) * np.uint64(100_000_000) + _eight_digits(low)).astype(np.float64)
    values = (lead_digit * scale + fraction) / scale
    values[negative] *= -1
    for i in np.flatnonzero(~simple).tolist():
        values[i] = _decimal(data[starts[i] : ends[i]])
    if not np.isfinite(values).all():
        raise _Irregular
    return values


_ASCII_ZEROS = np.uint64(0x3030303030303030)


def _digit_word(word, shift):
    """Keep the bytes of little-endian ``word`` from bit ``shift`` on; fill the lower ones with b"0"."""
    keep = np.left_shift(np.uint64(0xFFFFFFFFFFFFFFFF), shift.astype(np.uint64))  # shift 64 gives 0
    return (word & keep) | (_ASCII_ZEROS & ~keep)


def _all_digits(word):
    """Whether all 8 bytes are ASCII digits (Lemire's test)."""
    nibbles = np.uint64(0xF0F0F0F0F0F0F0F0)
    checked = (word & nibbles) | (((word + np.uint64(0x0606060606060606)) & nibbles) >> np.uint64(4))
    return checked == np.uint64(0x3333333333333333)


def _eight_digits(word):
    """Value of 8 ASCII digits in a little-endian word (first byte = most significant digit)."""
    word = word - _ASCII_ZEROS
    word = word * np.uint64(10) + (word >> np.uint64(8))  # 2-digit values in every other byte
    pairs = np.uint64(0x000000FF000000FF)
    low = (word & pairs) * np.uint64(100 + (1_000_000 << 32))
    high = ((word >> np.uint64(16)) & pairs) * np.uint64(1 + (10_000 << 32))
    return (low + high) >> np.uint64(32)


def _decimal(token):
    """float of a decimal token (no underscores, nan or inf); NaN if it is not one."""
    return float(token) if _DECIMAL.fullmatch(token) else float("nan")


def _parse_lines(data, source):
    """Line-by-line reader: the same bodies as ``_parse_tokens``, or the first problem by line."""

    def fail(line, message):
        raise SkeletonFormatError(f"{source}: line {line}: {message}")

    def text(token):
        return repr(token.decode("ascii", errors="replace"))

    bad = _BAD_CONTROL.search(data)
    if bad:
        line = len((data[: bad.start()] + b".").splitlines())
        fail(line, f"unexpected control byte 0x{data[bad.start()]:02x}")
    # lines end at \n, \r\n or \r (universal newlines, as PYSKL reads the file as text)
    rows = [(number, fields) for number, fields in enumerate(map(bytes.split, data.splitlines()), 1) if fields]
    if not rows:
        raise SkeletonFormatError(f"{source}: empty file")
    after_last = rows[-1][0] + 1
    rows = iter(rows)
    where = ""  # the frame being read, for messages

    def take(what, nfields):
        row = next(rows, None)
        if row is None:
            fail(after_last, f"file ends{where} where a {what} was expected (truncated file?)")
        if len(row[1]) != nfields:
            fail(row[0], f"{what} has {len(row[1])} field{'s' * (len(row[1]) != 1)}, expected {nfields}")
        return row

    def count(what):
        number, (token,) = take(f"{what} line", 1)
        if not token.isdigit():
            fail(number, f"{what} {text(token)} is not a non-negative integer")
        return number, int(token)

    count_line, nframes = count("frame count")
    body_ids, frame_index, keypoints = [], [], []
    nonempty = 0  # frames with at least one body so far
    for f in range(nframes):
        where = f" in frame {f + 1} of {nframes}"
        _, nbodies = count("body count")
        for _ in range(nbodies):
            number, fields = take("body-info line", BODY_INFO_FIELDS)
            if not fields[0].isdigit():
                fail(number, f"body ID {text(fields[0])} is not a non-negative integer")
            body_ids.append(int(fields[0]))
            number, joints = count("joint count")
            if joints != NUM_JOINTS:
                fail(number, f"joint count is {joints}, expected {NUM_JOINTS}")
            for _ in range(NUM_JOINTS):
                number, fields = take("joint line", JOINT_FIELDS)
                for axis, token in zip("xyz", fields[:3]):
                    value = _decimal(token)
                    if not np.isfinite(value):
                        fail(number, f"joint {axis} {text(token)} is not a finite number")
                    keypoints.append(value)
            frame_index.append(nonempty)
        nonempty += nbodies > 0
    extra = next(rows, None)
    if extra is not None:
        fail(extra[0], f"unexpected data after the last of the {nframes} frames announced on line {count_line}")
    keypoints = np.array(keypoints, dtype=np.float64).reshape(-1, NUM_JOINTS, 3).astype(np.float32)
    return _group_bodies(body_ids, frame_index, keypoints)


# ----------------------------------------------------------------------------------------------
# body selection (PYSKL's gen_keypoint_array)


def _motion(keypoint):
    """Summed per-axis variance of all joint positions, in float32 like PYSKL."""
    return np.sum(np.var(keypoint.reshape(-1, 3), axis=0))


def _by_motion(ranked):
    return sorted(ranked, key=lambda body_motion: -body_motion[1])  # stable: ties keep their order


def select_bodies(bodies):
    """PYSKL's body selection: float32 ``(M, T, 25, 3)``, M = 1 or 2 (see the module docstring).

    ``bodies`` in order of first appearance, as ``parse_skeleton`` returns them. Raises
    ``NoBodiesError`` where PYSKL would fail: no body at all, or denoising leaves none.
    """
    if not bodies:
        raise NoBodiesError("no body in any frame")
    if len(bodies) == 1:
        return bodies[0].keypoint[None]
    ranked = _by_motion((body, _motion(body.keypoint)) for body in bodies)
    ranked = [(body, motion) for body, motion in ranked if len(body.keypoint) > LENGTH_THRESHOLD]
    if not ranked:
        raise NoBodiesError(f"all {len(bodies)} bodies last {LENGTH_THRESHOLD} frames or fewer")
    if len(ranked) > 1:
        ranked = _spread_denoise(ranked)
        if not ranked:
            raise NoBodiesError(
                f"every body longer than {LENGTH_THRESHOLD} frames is spread noise (x-range > {WH_RATIO} y-range)"
            )
    if len(ranked) == 1:
        return ranked[0][0].keypoint[None]
    return _two_tracks([body for body, _ in ranked])


def _spread_denoise(ranked):
    kept = []
    for body, motion in ranked:
        kp = body.keypoint
        x, y = kp[:, :, 0], kp[:, :, 1]
        plausible = (x.max(axis=1) - x.min(axis=1)) <= WH_RATIO * (y.max(axis=1) - y.min(axis=1))
        n = int(np.count_nonzero(plausible))
        if n < len(kp):
            if 1 - n / len(kp) >= SPREAD_NOISE_RATIO:
                continue
            motion = min(motion, _motion(kp[plausible]))
        kept.append((body, motion))
    return _by_motion(kept)


def _empty(frames):
    return np.sum(np.abs(frames)) < EPS


def _two_tracks(bodies):
    """Place bodies (by decreasing motion) on two tracks; trim empty frames; maybe swap."""
    length = max(body.start + len(body.keypoint) for body in bodies)
    keypoint = np.zeros((2, length, NUM_JOINTS, 3), np.float32)
    # Each track's span grows to cover what it holds. As in PYSKL, track 1's span starts as
    # [0, 0) and so always reaches back to frame 0: a second body for track 1 must start after
    # the end of the first one.
    first = bodies[0]
    spans = [(first.start, first.start + len(first.keypoint)), (0, 0)]
    keypoint[0, spans[0][0] : spans[0][1]] = first.keypoint
    for body in bodies[1:]:
        s, e = body.start, body.start + len(body.keypoint)
        for track, (ts, te) in enumerate(spans):
            if max(ts, s) >= min(te, e):  # no overlap with what the track holds
                keypoint[track, s:e] = body.keypoint
                spans[track] = (min(ts, s), max(te, e))
                break  # a body that overlaps both tracks is dropped
    s, e = 0, length
    while s < e and _empty(keypoint[:, s]):
        s += 1
    if s == e:
        raise NoBodiesError("the selected bodies have all joints at 0")
    while _empty(keypoint[:, e - 1]):
        e -= 1
    keypoint = keypoint[:, s:e]
    if _empty(keypoint[0, 0, 1]) and np.sum(np.abs(keypoint[1, 0, 1])) > EPS:
        keypoint = keypoint[::-1]
    return keypoint


def convert_file(path):
    """One ``.skeleton`` file -> PYSKL's float16 keypoint array ``(M, T, 25, 3)``.

    Raises ``SkeletonFormatError``, ``NoBodiesError`` or ``OSError``.
    """
    path = Path(path)
    keypoint = select_bodies(parse_skeleton(path.read_bytes(), str(path)))
    # PYSKL would store inf here (|x| >= 65520 does not fit float16); metres never get there, so
    # such a file is corrupt, and an inf would make the whole pickle fail validation later.
    largest = np.abs(keypoint).max()
    if largest >= FLOAT16_OVERFLOW:
        raise SkeletonFormatError(f"{path}: a selected body has a coordinate of {largest:.7G}, beyond float16's range")
    return keypoint.astype(np.float16)


# ----------------------------------------------------------------------------------------------
# writing (tests and the demo dataset)


def format_skeleton_file(frames, rng=None):
    """Text of a ``.skeleton`` file; ``frames`` = per frame a list of ``(body_id, joints (25, 3))``.

    Full Kinect v2 lines: 10-field body-info lines and 12-field joint lines; x y z are written
    with 7 significant digits like the Kinect SDK (so a value with 7 or fewer round-trips
    exactly); the pixel coordinates are a pinhole projection; every joint is tracked. The joint
    orientations and the body lean are the identity and 0, or random if a numpy Generator
    ``rng`` is given (lines as long as the Kinect's, for realistic file sizes). Line ends are ``\\n``.
    """
    out = [f"{len(frames)}\n"]
    for bodies in frames:
        out.append(f"{len(bodies)}\n")
        for body_id, joints in bodies:
            joints = np.asarray(joints, dtype=np.float64)
            if joints.shape != (NUM_JOINTS, 3):
                raise ValueError(f"body {body_id}: joints must have shape ({NUM_JOINTS}, 3), got {joints.shape}")
            if rng is None:
                lean, orientation = (0, 0), ["1 0 0 0"] * NUM_JOINTS
            else:
                lean = rng.uniform(-0.1, 0.1, 2)
                quaternions = rng.normal(size=(NUM_JOINTS, 4))
                quaternions /= np.linalg.norm(quaternions, axis=1, keepdims=True)
                orientation = [" ".join(f"{q:.7G}" for q in quaternion) for quaternion in quaternions.tolist()]
            out.append(f"{int(body_id)} 0 1 1 1 1 0 {lean[0]:.7G} {lean[1]:.7G} 2\n{NUM_JOINTS}\n")
            for (x, y, z), rotation in zip(joints.tolist(), orientation):
                u, v = (x / z, y / z) if z else (0.0, 0.0)
                out.append(
                    f"{x:.7G} {y:.7G} {z:.7G} {256 + 365 * u:.7G} {212 - 365 * v:.7G} "
                    f"{960 + 1060 * u:.7G} {540 - 1060 * v:.7G} {rotation} 2\n"
                )
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# the conversion of a folder


def available_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _convert_task(path):
    """``(keypoint, None, None)`` or ``(None, reason, detail)``; runs in worker processes."""
    try:
        return convert_file(path), None, None
    except NoBodiesError as exc:
        return None, "no-bodies", str(exc)
    except (SkeletonFormatError, OSError) as exc:
        return None, "unreadable", str(exc)


def _tsv_field(text):
    return " ".join(str(text).split())  # no tabs or line breaks inside a field


def skipped_table(rows):
    """The text of a converter's ``skipped.tsv``: header ``file, reason, detail``, then ``rows``
    (tuples of those three) as given; tabs and line breaks inside a field become spaces."""
    return "file\treason\tdetail\n" + "".join("\t".join(map(_tsv_field, row)) + "\n" for row in rows)


def convert_ntu(raw_dir, out_path, dataset, jobs=None, strict=False, log=None):
    """Convert the ``*.skeleton`` files of ``raw_dir``; write ``out_path`` and ``skipped.tsv``.

    Writes PYSKL's ``{'annotations': [...], 'split': ...}`` (annotations sorted by frame_dir,
    splits from ``splits.ntu_split``) and, beside it, ``skipped.tsv`` (file, reason, detail) for
    the files not converted: ``official-missing``, ``no-bodies`` and ``unreadable`` (a malformed
    file or file name; the detail names the line). With ``strict``, an unreadable file raises
    ``SkeletonFormatError`` instead. Files of actions outside ``dataset`` are left out. The pickle
    is streamed (module docstring) and appears atomically, last; ``skipped.tsv`` is written just
    before it is complete (also when no file was converted, which raises ValueError). Progress
    lines go to ``log`` (a text stream) if given. Returns a summary dict.

    ``ntu120`` needs NTU120's files: a folder without a usable file of action > 60 raises
    ValueError before anything is written (see ``_check_release``).
    """
    raw_dir, out_path = Path(raw_dir), Path(out_path)
    if dataset not in NUM_ACTIONS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(NUM_ACTIONS)}")
    if not raw_dir.is_dir():
        raise FileNotFoundError(f"raw skeleton folder not found: {raw_dir}")
    started = time.perf_counter()
    with os.scandir(raw_dir) as entries:
        files = sorted(e.name for e in entries if e.name.endswith(".skeleton") and e.is_file())
    if not files:
        raise FileNotFoundError(f"no .skeleton files in {raw_dir}")

    missing = official_missing(dataset)
    skipped = []  # (file, reason, detail)
    names, other_actions = [], 0
    for file in files:
        stem = file[: -len(".skeleton")]
        if NTU_NAME.fullmatch(stem) is None or not 1 <= parse_ntu_name(stem).action <= NUM_ACTIONS["ntu120"]:
            detail = f"{raw_dir / file}: file name is not SsssCcccPpppRrrrAaaa.skeleton with action 001-120"
            if strict:
                raise SkeletonFormatError(detail)
            skipped.append((file, "unreadable", detail))
        elif parse_ntu_name(stem).action > NUM_ACTIONS[dataset]:
            other_actions += 1
        elif stem in missing:
            skipped.append((file, "official-missing", "on the official list of samples with missing skeletons"))
        else:
            names.append(stem)
    _check_release(raw_dir, names, dataset)

    kept = []  # frame_dirs converted, in order
    tsv = out_path.parent / SKIPPED_TSV
    annotations = _converted(raw_dir, names, kept, skipped, jobs, strict, log)

    def pairs():
        yield "annotations", PickledList(annotations)
        skipped.sort()
        write_text_atomic(tsv, skipped_table(skipped))
        if not kept:
            raise ValueError(f"no sample of {dataset} converted from {raw_dir}; see {tsv}")
        yield "split", ntu_split(kept, dataset)

    try:
        write_pickle_streamed(out_path, pairs())
    finally:
        annotations.close()  # stops the worker processes now, also on an error

    reasons = {}
    for _, reason, _ in skipped:
        reasons[reason] = reasons.get(reason, 0) + 1
    summary = {
        "converted": len(kept),
        "skipped": reasons,
        "other_actions": other_actions,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if log is not None:
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        print(
            f"convert-ntu: wrote {out_path}: {len(kept)} samples of {dataset} in {summary['seconds']:.1f} s; "
            f"skipped {len(skipped)}{f' ({counts})' if counts else ''}, listed in {tsv}"
            + (f"; left out {other_actions} files with action > {NUM_ACTIONS[dataset]}" if other_actions else ""),
            file=log,
        )
    return summary


def _check_release(raw_dir, names, dataset):
    """Refuse ``ntu120`` for a folder of NTU60 files (``names``: the usable sample names).

    PYSKL's rule (``tools/data/ntu_preproc.py``): the NTU120 files are detected when a file not on
    the missing list has an action > 60; if none has, it prints "NTURGB+D 120 skeleton files not
    detected" and writes no ``ntu120_3danno.pkl``. Converting anyway would give a 60-class
    "ntu120" pickle (a dataset that is not what the config says).
    """
    parsed = [parse_ntu_name(name) for name in names]
    if dataset != "ntu120" or any(n.action > NUM_ACTIONS["ntu60"] for n in parsed):
        return
    found = f"{len(names)} usable .skeleton file(s)"
    if parsed:
        setups, actions = [n.setup for n in parsed], [n.action for n in parsed]
        found += (f", setups S{min(setups):03d}-S{max(setups):03d}, actions A{min(actions):03d}-A{max(actions):03d} "
                  "(NTU RGB+D 60)")
    raise ValueError(
        f"{raw_dir}: NTU RGB+D 120 skeleton files not detected (no file of action > {NUM_ACTIONS['ntu60']} outside "
        f"the missing list; found {found}), so it cannot be converted as ntu120, as in PYSKL's ntu_preproc.py; "
        "use --dataset ntu60, or add NTU120's files (setups S018-S032, actions A061-A120)"
    )


def _converted(raw_dir, names, kept, skipped, jobs, strict, log):
    """The annotations of ``names``, in order, as they are converted; their frame_dirs are appended
    to ``kept``, the failures to ``skipped``.

    With ``jobs`` > 1 the files are converted by worker processes. ``Pool.imap`` does not wait for
    the consumer, but here the consumer (pickling ~16 KB of float16 per file) is far faster than
    the workers (parsing ~300 KB of text per file), so results do not pile up in memory.
    """
    paths = [str(raw_dir / f"{name}.skeleton") for name in names]
    jobs = max(1, min(jobs or available_cpus(), len(paths)))
    pool = None
    if jobs > 1:
        import multiprocessing  # only here: a single job does not pay for it

        pool = multiprocessing.Pool(jobs)
        results = pool.imap(_convert_task, paths, chunksize=max(1, min(64, len(paths) // (8 * jobs))))
    else:
        results = map(_convert_task, paths)
    last_report = start = time.perf_counter()
    try:
        for done, (name, (keypoint, reason, detail)) in enumerate(zip(names, results), 1):
            if keypoint is None:
                if strict and reason == "unreadable":
                    raise SkeletonFormatError(detail)
                skipped.append((f"{name}.skeleton", reason, detail))
            else:
                kept.append(name)
                label = parse_ntu_name(name).action - 1
                yield {"frame_dir": name, "label": label, "keypoint": keypoint, "total_frames": keypoint.shape[1]}
            now = time.perf_counter()
            if log is not None and now - last_report >= PROGRESS_SECONDS:
                last_report = now
                print(
                    f"convert-ntu: {done}/{len(names)} files, {done / (now - start):.0f} files/s, "
                    f"{len(skipped)} skipped",
                    file=log,
                    flush=True,
                )
    finally:
        if pool is not None:
            pool.terminate()


# ----------------------------------------------------------------------------------------------
# command line


def add_arguments(parser):
    parser.add_argument("raw_dir", metavar="RAW_DIR", type=Path, help="folder of NTU RGB+D .skeleton files")
    parser.add_argument(
        "out", metavar="OUT.pkl", type=Path, help="annotation pickle to write (skipped.tsv goes beside it)"
    )
    parser.add_argument(
        "--dataset",
        required=True,
        choices=list(NUM_ACTIONS),
        help="ntu60 keeps actions <= 60; ntu120 needs NTU120's files (some of action > 60)",
    )
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: all available cores)")
    parser.add_argument("--strict", action="store_true", help="fail on any malformed file instead of skipping it")


def run(args):
    if args.jobs is not None and args.jobs < 1:
        raise ValueError("--jobs must be >= 1")
    convert_ntu(args.raw_dir, args.out, args.dataset, jobs=args.jobs, strict=args.strict, log=sys.stderr)
    return 0
