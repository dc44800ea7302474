"""Graphs for MS-G3D: the binary skeleton adjacency, its k-hop scales and the G3D window graph.

Everything is built in float64 numpy (as PYSKL does) and cast to float32 only when it becomes a
buffer, so the stored matrices are bit-identical to PYSKL's (REFERENCE §1.3).
"""

import numpy as np

from msg3d.layouts import get_layout


def binary_adjacency(layout):
    """Symmetric 0/1 adjacency ``(V, V)`` of a layout (name or ``Layout``), no self loops.

    This is PYSKL's ``Graph(layout, mode='binary_adj').A[0]``, the buffer ``backbone.A``.
    """
    if isinstance(layout, str):
        layout = get_layout(layout)
    adj = np.zeros((layout.num_joints, layout.num_joints))
    for child, parent in layout.edges:
        adj[child, parent] = adj[parent, child] = 1
    return adj


def window_adjacency(adj, window_size):
    """The G3D graph over ``window_size`` consecutive frames: ``(wV, wV)``, node ``tau * V + v``.

    Every frame's joint is joined to the same joint and to its neighbours in every frame of the
    window: the ``w x w`` tiling of ``adj + I``.
    """
    adj = np.asarray(adj, dtype=np.float64)
    return np.tile(adj + np.eye(len(adj)), (window_size, window_size))


def hop_distance(adj):
    """Shortest-path length between every pair of nodes (``inf`` if unreachable); 0 on the diagonal."""
    n = len(adj)
    linked = (np.asarray(adj) != 0) | np.eye(n, dtype=bool)
    dist = np.full((n, n), np.inf)
    reach = np.eye(n, dtype=bool)
    for hops in range(n):
        dist[reach & np.isinf(dist)] = hops
        grown = (reach.astype(np.int64) @ linked.astype(np.int64)) > 0
        if (grown == reach).all():
            break
        reach = grown
    return dist


def k_hop_scales(adj, num_scales):
    """Disentangled multi-scale adjacency ``(K, n, n)``, unnormalised, float64.

    Scale 0 is the identity; scale k >= 1 links the nodes exactly k hops apart, plus self loops
    (PYSKL ``k_adjacency(A, k, with_self=True)``). Beyond the graph's diameter a scale is just I.
    Self loops already in ``adj`` (the window graph has them) do not count as hops.
    """
    dist = hop_distance(adj)
    eye = np.eye(len(dist))
    scales = [eye] + [(dist == k) + eye for k in range(1, num_scales)]
    return np.stack(scales).astype(np.float64)


def normalize_columns(mat):
    """Divide every column by its sum (zero columns stay zero): ``out[v, u] = m[v, u] / sum_v' m[v', u]``.

    With this normalisation ``out[..., u] = sum_v A[v, u] x[..., v]`` is the mean over u's neighbours.
    """
    mat = np.asarray(mat, dtype=np.float64)
    sums = mat.sum(axis=-2, keepdims=True)
    return np.divide(mat, sums, out=np.zeros_like(mat), where=sums > 0)


def multiscale_graph(adj, num_scales, window_size=1):
    """Column-normalised k-hop scales ``(K, n, n)`` float64 of the ``window_size`` window graph.

    n = window_size * V. With ``window_size=1`` the window graph is ``adj + I``, whose hop
    distances are those of ``adj``: these are MS-GCN's spatial scales.
    """
    return normalize_columns(k_hop_scales(window_adjacency(adj, window_size), num_scales))
