"""UniformSample frame indices: PYSKL's test table, train-mode structure and RNG semantics."""

import numpy as np
import pytest
import torch
from conftest import FIXTURES, shared_file

from msg3d.data.sampling import deterministic_indices
from msg3d.data.sampling import uniform_sample


@pytest.fixture(scope="module")
def ref():
    return torch.load(shared_file(FIXTURES / "pyskl_pipeline_ref.pt"), weights_only=True)


def test_test_indices_match_pyskl_table(ref):
    table = ref["uniform_sample_test_inds"]
    assert len(table) == 34  # 17 lengths x {1, 10} clips
    for key, expected in table.items():
        nc, length = key.split("_")
        got = uniform_sample(int(length[1:]), 100, int(nc[2:]), test_mode=True)
        np.testing.assert_array_equal(got, expected.numpy(), err_msg=key)


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_test_indices_match_pyskl_samples(ref, name):
    r = ref[name]
    n = r["prenorm3d_total_frames"]
    np.testing.assert_array_equal(uniform_sample(n, 100, 1, test_mode=True), r["test_inds_clip100_nc1"].numpy())
    np.testing.assert_array_equal(uniform_sample(n, 100, 10, test_mode=True), r["test_inds_clip100_nc10"].numpy())


def test_short_sequences_loop_from_deterministic_starts():
    np.testing.assert_array_equal(uniform_sample(37, 100, 1, test_mode=True), np.arange(100) % 37)
    inds = uniform_sample(37, 100, 10, test_mode=True).reshape(10, 100)
    for i in range(10):
        start = i * 37 // 10
        np.testing.assert_array_equal(inds[i], np.arange(start, start + 100) % 37)
    inds = uniform_sample(5, 100, 10, test_mode=True).reshape(10, 100)  # n < num_clips: start = i
    for i in range(10):
        np.testing.assert_array_equal(inds[i], np.arange(i, i + 100) % 5)


@pytest.mark.parametrize("n", [100, 101, 150, 199])
def test_medium_sequences_skip_frames(n):
    inds = uniform_sample(n, 100, 1, rng=np.random.default_rng(0))
    assert len(inds) == 100 and np.all(np.diff(inds) >= 1)
    assert inds[0] >= 0 and inds[-1] <= n - 1
    assert len(np.setdiff1d(np.arange(n), inds)) == n - 100


@pytest.mark.parametrize("n", [200, 201, 300, 1234])
def test_long_sequences_take_one_frame_per_segment(n):
    bounds = np.arange(101) * n // 100
    for rng in (np.random.default_rng(0), np.random.RandomState(0)):
        inds = uniform_sample(n, 100, 2, rng=rng).reshape(2, 100)
        assert np.all(inds >= bounds[:-1]) and np.all(inds < bounds[1:])


def test_seeded_train_sampling_is_deterministic():
    a = uniform_sample(150, 100, 3, rng=np.random.default_rng([7, 0, 5]))
    b = uniform_sample(150, 100, 3, rng=np.random.default_rng([7, 0, 5]))
    c = uniform_sample(150, 100, 3, rng=np.random.default_rng([7, 1, 5]))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("n", [37, 150, 250])
def test_global_rng_consumes_the_stream_like_pyskl(n):
    # PYSKL per clip: rand() (p_interval ratio), randint(1) (the offset), then the branch's draw.
    np.random.seed(11)
    got = uniform_sample(n, 100, 2)
    legacy = np.random.RandomState(11)
    expected = []
    for _ in range(2):
        legacy.rand()
        legacy.randint(1)
        if n < 100:
            start = legacy.randint(0, n)
            expected.append(np.arange(start, start + 100) % n)
        elif n < 200:
            offset = np.zeros(101, dtype=np.int64)
            offset[legacy.choice(101, n - 100, replace=False)] = 1
            expected.append(np.arange(100) + np.cumsum(offset)[:-1])
        else:
            bounds = np.array([i * n // 100 for i in range(101)])
            expected.append(bounds[:100] + legacy.randint(np.diff(bounds)))
    np.testing.assert_array_equal(got, np.concatenate(expected))
    assert np.random.rand() == legacy.rand()  # and leaves the global stream where PYSKL would


def test_test_mode_leaves_global_rng_alone_and_is_cached_read_only():
    np.random.seed(3)
    first = np.random.rand()
    np.random.seed(3)
    inds = deterministic_indices(177, 100, 10)
    assert np.random.rand() == first
    assert deterministic_indices(177, 100, 10) is inds
    with pytest.raises(ValueError):
        inds[0] = 1


def test_empty_sequence_is_an_error():
    with pytest.raises(ValueError, match="0 frames"):
        uniform_sample(0, 100, 1, test_mode=True)
