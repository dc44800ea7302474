"""Multi-scale graph convolution (MS-GCN), on single frames or on G3D temporal windows.

Layout convention of the whole model: activations are ``(N, C, T, V)`` tensors (N = samples x
persons, C channels, T frames, V joints) kept in ``torch.channels_last`` memory, i.e. stored as
``(N, T, V, C)``. Then every 1x1 convolution is one GEMM over contiguous channel vectors, and the
graph aggregation can read a frame (or a window of frames) as a plain ``(rows, C)`` matrix
without any permute-and-copy.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from msg3d.models.graph import multiscale_graph


class SlidingWindows(torch.autograd.Function):
    """Overlapping windows of frames of M sequences: ``(M, T, R, E) -> (M * T_w, w * R, E)``.

    Window j of a sequence holds its frames ``j * stride ... j * stride + w - 1``. Same as
    ``unfold`` + reshape: a strided view of the input for one sequence, one copy for several (the
    sequences' windows cannot be one strided view). The backward adds the window gradients back
    with w strided adds, about 15x faster on the CPU than autograd's generic ``unfold_backward``.
    """

    @staticmethod
    def forward(ctx, z, window_size, stride):
        m, t, r, e = z.shape
        ctx.shape, ctx.window_size, ctx.stride = z.shape, window_size, stride
        t_out = (t - window_size) // stride + 1
        return z.unfold(1, window_size, stride).permute(0, 1, 4, 2, 3).reshape(m * t_out, window_size * r, e)

    @staticmethod
    def backward(ctx, grad):
        m, t, r, e = ctx.shape
        w, s = ctx.window_size, ctx.stride
        t_out = grad.shape[0] // m
        grad = grad.reshape(m, t_out, w, r, e)
        grad_z = grad.new_zeros(ctx.shape)
        for tau in range(w):
            grad_z[:, tau : tau + s * (t_out - 1) + 1 : s] += grad[:, :, tau]
        return grad_z, None, None


class MLP(nn.Module):
    """1x1 convolution -> BatchNorm -> ReLU: PYSKL's one-layer ``MLP`` (keys ``layers.0``, ``layers.1``)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.Conv2d(in_channels, out_channels, kernel_size=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class MSGCN(nn.Module):
    """Disentangled multi-scale graph convolution, optionally over temporal windows (G3D).

    For scale k the node features are averaged over the k-hop neighbourhood with the
    column-normalised matrix ``A_k + PA_k``: ``support_k[..., u] = sum_v (A + PA)[k, v, u] x[..., v]``.
    The K supports are stacked scale-major (channel ``k * C_in + c``) and mixed by ``mlp``
    (1x1 conv -> BN -> ReLU), exactly as PYSKL's ``MSGCN`` / ``ST_MSGCN``.

    With ``window_size`` w > 1 the graph is the G3D window graph over w consecutive frames
    (``graph.window_adjacency``) and the windows are taken every ``window_stride`` frames of the
    input as given (the caller pads it): input ``(N, C_in, T, V)``, output
    ``(N, C_out, T_w, V * w)`` with ``T_w = (T - w) // window_stride + 1``. The output's nodes are
    ordered joint-major, ``u * w + tau`` (PYSKL orders them ``tau * V + u``), so that the window
    collapse that follows is a 1x1 convolution over contiguous ``(tau, channel)`` values.
    With w = 1 the output is ``(N, C_out, T, V)``.

    Buffers/parameters: ``A`` (K, wV, wV) the normalised scales, ``PA`` their learnable residual
    (init U(-1e-6, 1e-6)); node index in both is PYSKL's ``tau * V + v``.
    """

    def __init__(self, num_scales, in_channels, out_channels, adj, window_size=1, window_stride=1):
        super().__init__()
        self.num_scales = num_scales
        self.window_size = window_size
        self.window_stride = window_stride
        self.register_buffer("A", torch.tensor(multiscale_graph(adj, num_scales, window_size), dtype=torch.float32))
        self.PA = nn.Parameter(torch.empty_like(self.A))
        nn.init.uniform_(self.PA, -1e-6, 1e-6)
        self.mlp = MLP(in_channels * num_scales, out_channels)
        # Aggregating and projecting commute. Aggregate first when the input is narrower (the
        # 3-channel first layer); otherwise project first: the projection then runs once per frame
        # instead of once per window position, and the graph GEMM has a long inner dimension.
        self.project_first = out_channels <= in_channels

    def forward(self, x):
        n, v = x.shape[0], x.shape[3]
        k, w = self.num_scales, self.window_size
        # Effective scales, indexed [k, tau, v, tau', u] (source node (tau, v), target (tau', u)).
        a = (self.A + self.PA).view(k, w, v, w, v)
        if not self.project_first:
            return self._aggregate_then_project(x, a)
        # On the CPU, one sequence at a time: the projected tensor is K times wider than the
        # input, and a per-sequence slice stays in cache where the whole batch would be hundreds
        # of MB (measured 20 % faster end to end). A GPU prefers few large kernels.
        return self._project_then_aggregate(x, a, sequences_per_step=1 if x.device.type == "cpu" else n)

    def _aggregate_then_project(self, x, a):
        n, c, t, v = x.shape
        k, w, s = self.num_scales, self.window_size, self.window_stride
        # Columns (u, tau', k): once channels are moved last, the supports of one output node are
        # contiguous scale-major (k, c) vectors, which is what the MLP's 1x1 conv reads.
        a_cols = a.permute(1, 2, 4, 3, 0).reshape(w * v, v * w * k)
        # Windows as rows (N, T_w, C) x columns (tau, v): one tall GEMM. (With C_in = 3 as the
        # output's last dimension instead, the GEMM would run at a few GFLOP/s.)
        windows = x.unfold(2, w, s).permute(0, 2, 1, 4, 3)  # (N, T_w, C, w, V)
        t_out = windows.shape[1]
        support = torch.matmul(windows.reshape(n * t_out * c, w * v), a_cols)  # (N * T_w * C, V * w * K)
        support = support.view(n, t_out, c, v * w, k).permute(0, 1, 3, 4, 2)  # (N, T_w, V * w, K, C)
        support = support.reshape(n, t_out, v * w, k * c).permute(0, 3, 1, 2)  # copy; channels_last
        return self.mlp(support)

    def _project_then_aggregate(self, x, a, sequences_per_step):
        n, c, t, v = x.shape
        k, w, s = self.num_scales, self.window_size, self.window_stride
        conv, bn, relu = self.mlp.layers
        e = conv.out_channels
        t_out = (t - w) // s + 1
        # MLP weight [o, k * C + c] as K stacked 1x1 projections: output channel k * E + o.
        proj = conv.weight.view(e, k, c).transpose(0, 1).reshape(k * e, c, 1, 1)
        # Columns (tau, v, k) match the rows of a projected window below; rows (u, tau').
        a_cols = a.permute(4, 3, 1, 2, 0).reshape(v * w, w * v * k)
        frames = x.permute(0, 2, 3, 1)  # (N, T, V, C), a view for channels_last x
        outs = []
        for i in range(0, n, sequences_per_step):
            chunk = frames[i : i + sequences_per_step]
            m = chunk.shape[0]
            # The projection as a 1x1 conv over a batch of frames (m * T, C, 1, V): oneDNN's
            # convolution runs about twice as fast as the BLAS GEMM here (AVX-512 vs AVX2 on
            # AMD), and a batch of >= 16 images selects it even single-threaded.
            z = F.conv2d(chunk.reshape(m * t, 1, v, c).permute(0, 3, 1, 2), proj)  # stored (m * T, V, K, E)
            z = z.permute(0, 2, 3, 1).reshape(m, t, v * k, e)  # rows (v, k) per frame
            # Window j = rows (tau, v, k) of frames j*s ... j*s+w-1: a strided view of one sequence's z
            # (no copy), one copy of all of them for a whole batch (one kernel, not one per sequence).
            z = SlidingWindows.apply(z, w, s)  # (m * T_w, w * V * K, E)
            # Cast before expanding (under autocast z is bf16): autocast would copy the expanded view.
            a_batch = a_cols.to(z.dtype).expand(m * t_out, -1, -1)
            outs.append(torch.baddbmm(conv.bias.to(z.dtype), a_batch, z))  # (m * T_w, V * w, E)
        y = torch.cat(outs).view(n, t_out, v * w, e).permute(0, 3, 1, 2)  # (N, E, T_w, V * w), channels_last
        return relu(bn(y))
