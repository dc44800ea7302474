"""PYSKL's ``UniformSample(clip_len, num_clips)`` frame-index computation and the clips it makes
(``PoseDecode`` + ``FormatGCNInput``, ``format_gcn_input``) (REFERENCE §4.3).

Indices are computed for a sequence of ``num_frames`` frames and returned as one int64 array of
``num_clips * clip_len`` entries (clip after clip), already wrapped into ``[0, num_frames)``.

Randomness:
* test mode: PYSKL reseeds numpy's legacy global RNG with 255 on every call, so the indices depend
  on the length only. A fresh ``np.random.RandomState(255)`` gives the same stream without touching
  the global state; the result is cached per (num_frames, clip_len, num_clips).
* train mode: ``rng`` is either a ``np.random.Generator`` (our seeded, worker-independent
  sampling) or a legacy ``RandomState`` / the ``np.random`` module (PYSKL's global-RNG behaviour,
  consuming the stream exactly as PYSKL does).

Torch-free.
"""

import functools

import numpy as np

TEST_SEED = 255
NUM_PERSON = 2  # FormatGCNInput(num_person=2)


def _draw_int(rng, high):
    """Uniform integers in ``[0, high)`` (``high`` scalar or array) from either RNG flavour."""
    if isinstance(rng, np.random.Generator):
        return rng.integers(high)
    return rng.randint(high)


def _clip_indices(num_frames, clip_len, clip_idx, num_clips, rng, test_mode):
    """Indices of one clip (before wrapping modulo ``num_frames``)."""
    if not isinstance(rng, np.random.Generator):
        # PYSKL draws the p_interval ratio (always 1 in these configs) and then
        # randint(1) for an offset; only the first consumes the legacy stream.
        rng.rand()
    if num_frames < clip_len:
        if test_mode:
            start = clip_idx if num_frames < num_clips else clip_idx * num_frames // num_clips
        else:
            start = int(_draw_int(rng, num_frames))
        return np.arange(start, start + clip_len, dtype=np.int64)
    if num_frames < 2 * clip_len:
        # skip num_frames - clip_len frames: pick that many of the clip_len + 1 gaps
        skipped = rng.choice(clip_len + 1, num_frames - clip_len, replace=False)
        shift = np.zeros(clip_len + 1, dtype=np.int64)
        shift[skipped] = 1
        return np.arange(clip_len, dtype=np.int64) + np.cumsum(shift)[:-1]
    bounds = np.arange(clip_len + 1, dtype=np.int64) * num_frames // clip_len
    return bounds[:-1] + _draw_int(rng, np.diff(bounds)).astype(np.int64)


def uniform_sample(num_frames, clip_len=100, num_clips=1, *, test_mode=False, rng=None):
    """Frame indices ``(num_clips * clip_len,)`` int64 for one sample of ``num_frames`` frames.

    ``test_mode=True`` ignores ``rng`` and returns PYSKL's deterministic test indices. In train
    mode ``rng=None`` means numpy's global RNG (``np.random``), as PYSKL does.
    """
    num_frames, clip_len, num_clips = int(num_frames), int(clip_len), int(num_clips)
    if num_frames < 1:
        raise ValueError(f"cannot sample frames from a sequence of {num_frames} frames")
    if test_mode:
        return deterministic_indices(num_frames, clip_len, num_clips)
    if rng is None:
        rng = np.random
    clips = [_clip_indices(num_frames, clip_len, i, num_clips, rng, False) for i in range(num_clips)]
    return np.concatenate(clips) % num_frames


@functools.lru_cache(maxsize=4096)
def deterministic_indices(num_frames, clip_len=100, num_clips=1):
    """PYSKL's test-mode indices (legacy RNG reseeded with 255 per call); cached, read-only."""
    rng = np.random.RandomState(TEST_SEED)
    clips = [_clip_indices(num_frames, clip_len, i, num_clips, rng, True) for i in range(num_clips)]
    inds = np.concatenate(clips) % num_frames
    inds.setflags(write=False)
    return inds


def format_gcn_input(sample, indices, clip_len):
    """PYSKL's ``PoseDecode`` + ``FormatGCNInput(num_person=2)`` of one sample (REFERENCE §4.3).

    ``sample``: the sample's stored array (M, T, V, C) (``msg3d.data.derive.sample_features``);
    ``indices``: its ``UniformSample`` frame indices, ``num_clips * clip_len`` of them, clip after
    clip. Returns float32 (num_clips, 2, clip_len, V, C): the gathered frames, persons beyond the
    first 2 dropped and missing ones zero.
    """
    persons = min(sample.shape[0], NUM_PERSON)
    num_clips = len(indices) // clip_len
    clips = sample[:persons, indices]  # PoseDecode: (M, nc * L, V, C)
    # FormatGCNInput: zero-pad to 2 persons, (M, nc * L) -> (nc, M, L)
    out = np.zeros((num_clips, NUM_PERSON, clip_len, *sample.shape[2:]), np.float32)
    out[:, :persons] = clips.reshape(persons, num_clips, clip_len, *clips.shape[2:]).swapaxes(0, 1)
    return out
