"""G3D: unified spatial-temporal graph convolution over sliding temporal windows.

Inputs and outputs are ``(N, C, T, V)`` (see ``msg3d.models.gcn`` for the memory layout).
"""

import torch.nn as nn
import torch.nn.functional as F

from msg3d.models.gcn import MSGCN


class TemporalPadding(nn.Module):
    """Zero-pad ``pad`` frames at both ends of T, so that windows centred on every frame exist."""

    def __init__(self, pad):
        super().__init__()
        self.pad = pad

    def forward(self, x):
        return F.pad(x, (0, 0, self.pad, self.pad))


class MSG3DBlock(nn.Module):
    """One G3D pathway with window size w: windowed multi-scale GCN, then collapse of the window.

    ``gcn3d`` = zero padding + ``MSGCN`` on the w-frame window graph (windows every
    ``window_stride`` frames), giving ``(N, E, T_out, V * w)``; ``out_conv`` (a Conv3d with kernel
    ``(1, w, 1)``, PYSKL's parameter shape) mixes the w frames of a window into ``out_channels``;
    then ``out_bn``, no activation. The GCN width E is ``out_channels`` for the 3-channel first
    block and ``in_channels`` otherwise (PYSKL's rule). Input ``(N, C_in, T, V)``, output
    ``(N, C_out, T_out, V)`` with ``T_out = ceil(T / window_stride)``.
    """

    def __init__(self, in_channels, out_channels, adj, num_scales, window_size, window_stride):
        super().__init__()
        self.window_size = window_size
        embed_channels = out_channels if in_channels == 3 else in_channels
        self.gcn3d = nn.Sequential(
            TemporalPadding((window_size - 1) // 2),
            MSGCN(num_scales, in_channels, embed_channels, adj, window_size=window_size, window_stride=window_stride),
        )
        self.out_conv = nn.Conv3d(embed_channels, out_channels, kernel_size=(1, window_size, 1))
        self.out_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        y = self.gcn3d(x)  # (N, E, T_out, V * w), nodes u * w + tau
        n, e, t, vw = y.shape
        w = self.window_size
        # The (1, w, 1) Conv3d over (E, tau) is a 1x1 conv over the contiguous (tau, e) values of
        # each joint: weight [o, e, tau] -> [o, tau * E + e].
        weight = self.out_conv.weight.view(-1, e, w).transpose(1, 2).reshape(-1, w * e, 1, 1)
        y = y.permute(0, 2, 3, 1).reshape(n, t, vw // w, w * e).permute(0, 3, 1, 2)
        return self.out_bn(F.conv2d(y, weight, self.out_conv.bias))


class MW_MSG3DBlock(nn.Module):  # noqa: N801 - PYSKL's name
    """Multi-window G3D: the sum of one ``MSG3DBlock`` per window size (no activation)."""

    def __init__(self, in_channels, out_channels, adj, num_scales, window_sizes=(3, 5), window_stride=1):
        super().__init__()
        self.gcn3d = nn.ModuleList([
            MSG3DBlock(in_channels, out_channels, adj, num_scales, window_size, window_stride)
            for window_size in window_sizes
        ])

    def forward(self, x):
        out = self.gcn3d[0](x)
        for block in self.gcn3d[1:]:
            out += block(x)  # in place: a BatchNorm output, which its backward does not need
        return out
