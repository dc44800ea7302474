"""A long recording cut into running windows (``msg3d predict --window W --stride S``).

For live use the MS-G3D author recommends a running buffer: keep the last W frames and classify
them every S frames (issue 11). Here a recording is read as a whole (for a raw file: PYSKL's
conversion and body selection over the whole file, so frame numbers count the frames that hold a
body, REFERENCE §8.2), and window k holds its frames ``[k * S, k * S + W)``. Each window then goes
through the whole test pipeline as a recording of its own, as a buffer of those frames would:
normalisation on the window's first frame, the modality, the test clips. A recording of at most W
frames is one window; the last frames, fewer than S after the last window, are left out, as a
buffer that has not yet moved on would. Torch-free.
"""


def window_bounds(num_frames, window, stride):
    """``[(start, end), ...]`` frame ranges (end exclusive) of a ``num_frames`` recording."""
    if window < 1 or stride < 1:
        raise ValueError(f"--window and --stride must be >= 1 frame, got {window} and {stride}")
    if num_frames <= window:
        return [(0, num_frames)]
    return [(start, start + window) for start in range(0, num_frames - window + 1, stride)]


def window_annotation(ann, start, end):
    """The annotation of frames ``[start, end)``: ``keypoint`` (and ``keypoint_score``) cut on the frame axis."""
    out = dict(ann, keypoint=ann["keypoint"][:, start:end], total_frames=end - start)
    if ann.get("keypoint_score") is not None:
        out["keypoint_score"] = ann["keypoint_score"][:, start:end]
    return out
