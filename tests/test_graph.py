"""Graph matrices of MS-G3D, hand-checked on a small layout, plus PYSKL facts for the real ones."""

import numpy as np
import pytest

from msg3d.layouts import Layout
from msg3d.models.graph import (
    binary_adjacency,
    hop_distance,
    k_hop_scales,
    multiscale_graph,
    normalize_columns,
    window_adjacency,
)

# A 4-joint chain 0 - 1 - 2 - 3 plus a joint 4 hanging off 1 (edges as (child, parent)):
#     0 - 1 - 2 - 3
#         |
#         4
TOY = Layout(
    name="toy",
    joint_names=("a", "b", "c", "d", "e"),
    edges=((1, 0), (2, 1), (3, 2), (4, 1)),
    bone_pairs=((0, 0), (1, 0), (2, 1), (3, 2), (4, 1)),
    center=1,
    dims=3,
)


def sets(mat):
    """Column u -> sorted list of rows v with a nonzero entry (the nodes u aggregates from)."""
    return {u: sorted(np.flatnonzero(mat[:, u]).tolist()) for u in range(mat.shape[1])}


def test_binary_adjacency_is_symmetric_without_self_loops():
    adj = binary_adjacency(TOY)
    expected = np.zeros((5, 5))
    for a, b in [(0, 1), (1, 2), (2, 3), (1, 4)]:
        expected[a, b] = expected[b, a] = 1
    np.testing.assert_array_equal(adj, expected)


def test_hop_distance_on_toy():
    dist = hop_distance(binary_adjacency(TOY))
    assert dist[0].tolist() == [0, 1, 2, 3, 2]
    assert dist[3].tolist() == [3, 2, 1, 0, 3]
    assert dist[4].tolist() == [2, 1, 2, 3, 0]


def test_k_hop_sets_are_exact_hops_plus_self():
    scales = k_hop_scales(binary_adjacency(TOY), 5)
    assert sets(scales[0]) == {u: [u] for u in range(5)}
    assert sets(scales[1]) == {0: [0, 1], 1: [0, 1, 2, 4], 2: [1, 2, 3], 3: [2, 3], 4: [1, 4]}
    assert sets(scales[2]) == {0: [0, 2, 4], 1: [1, 3], 2: [0, 2, 4], 3: [1, 3], 4: [0, 2, 4]}
    assert sets(scales[3]) == {0: [0, 3], 1: [1], 2: [2], 3: [0, 3, 4], 4: [3, 4]}
    # beyond the diameter (3) a scale is the identity
    np.testing.assert_array_equal(scales[4], np.eye(5))
    assert set(np.unique(scales)) == {0.0, 1.0}


def test_column_normalisation_gives_mean_over_the_hop_set():
    graph = multiscale_graph(binary_adjacency(TOY), 4)
    assert graph.dtype == np.float64
    np.testing.assert_allclose(graph.sum(axis=1), np.ones((4, 5)), rtol=0, atol=1e-15)
    # column 1 at one hop = {0, 1, 2, 4}: each gets 1/4; row sums are not normalised
    np.testing.assert_array_equal(graph[1][:, 1], [0.25, 0.25, 0.25, 0, 0.25])
    np.testing.assert_array_equal(graph[1][:, 0], [0.5, 0.5, 0, 0, 0])
    assert graph[1][1].sum() == pytest.approx(0.5 + 1 / 4 + 1 / 3 + 1 / 2)
    # aggregation direction: out[u] = sum_v graph[v, u] x[v] averages u's hop set
    x = np.array([1.0, 10.0, 100.0, 1000.0, 10000.0])
    assert (x @ graph[1])[1] == pytest.approx((1 + 10 + 100 + 10000) / 4)
    assert (x @ graph[2])[0] == pytest.approx((1 + 100 + 10000) / 3)


def test_normalize_columns_keeps_zero_columns_zero():
    out = normalize_columns(np.array([[1.0, 0.0], [3.0, 0.0]]))
    np.testing.assert_array_equal(out, [[0.25, 0.0], [0.75, 0.0]])


def test_window_graph_tiles_adjacency_plus_identity():
    adj = binary_adjacency(TOY)
    big = window_adjacency(adj, 3)
    assert big.shape == (15, 15)
    for tau in range(3):
        for tau2 in range(3):
            np.testing.assert_array_equal(big[tau * 5:(tau + 1) * 5, tau2 * 5:(tau2 + 1) * 5], adj + np.eye(5))


def test_window_graph_scales():
    graph = multiscale_graph(binary_adjacency(TOY), 3, window_size=2)  # node index tau * 5 + v
    assert graph.shape == (3, 10, 10)
    one_hop = sets(graph[1])
    # node (tau=0, v=0) aggregates joints 0 and 1 of both frames
    assert one_hop[0] == [0, 1, 5, 6]
    assert one_hop[6] == [0, 1, 2, 4, 5, 6, 7, 9]
    # two hops from (0, 0): joints 2 and 4 in both frames, plus itself only (not its other-frame copy)
    assert sets(graph[2])[0] == [0, 2, 4, 7, 9]
    np.testing.assert_allclose(graph.sum(axis=1), np.ones((3, 10)), atol=1e-15)
    np.testing.assert_array_equal(graph[1][:, 0], np.where(np.isin(np.arange(10), [0, 1, 5, 6]), 0.25, 0))


def test_window_size_one_equals_spatial_scales():
    adj = binary_adjacency(TOY)
    np.testing.assert_array_equal(multiscale_graph(adj, 4, window_size=1), normalize_columns(k_hop_scales(adj, 4)))


@pytest.mark.parametrize("layout, edges, diameter", [("nturgb+d", 24, 11), ("coco", 16, 8)])
def test_real_layouts(layout, edges, diameter):
    adj = binary_adjacency(layout)
    assert adj.sum() == 2 * edges
    dist = hop_distance(adj)
    assert dist.max() == diameter
    scales = k_hop_scales(adj, 13)
    np.testing.assert_array_equal(scales[diameter + 1], np.eye(len(adj)))
    assert not np.array_equal(scales[diameter], np.eye(len(adj)))
