"""Temporal convolutions: ``unit_tcn`` and the multi-branch ``MSTCN`` of PYSKL's MS-G3D.

Inputs and outputs are ``(N, C, T, V)`` (see ``msg3d.models.gcn`` for the memory layout).
"""

import torch
import torch.nn as nn


class unit_tcn(nn.Module):  # noqa: N801 - PYSKL's name, kept so the two code bases read alike
    """Temporal convolution (kernel ``(k, 1)``, 'same' padding, stride and dilation along T) -> BN."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dilation=1):
        super().__init__()
        pad = (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size=(kernel_size, 1), padding=(pad, 0),
            stride=(stride, 1), dilation=(dilation, 1),
        )
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return self.bn(self.conv(x))


class MSTCN(nn.Module):
    """Multi-scale temporal convolution: 6 parallel branches, concatenated, plus a residual.

    Branches (each ``out_channels // 6`` wide, the remainder going to the last one): four
    1x1 conv -> BN -> ReLU -> ``unit_tcn`` (kernel 3, dilations 1, 2, 3, 4); 1x1 conv -> BN ->
    ReLU -> max-pool (3, 1) -> BN; and a strided 1x1 conv -> BN. The temporal stride applies in
    every branch. Residual: identity when the shape is kept, else a strided 1x1 ``unit_tcn``.
    ``activation=False`` drops the final ReLU (PYSKL sets ``act = Identity`` on the last MSTCN
    of each spatial path). Input ``(N, C_in, T, V)``, output ``(N, C_out, ceil(T / stride), V)``.

    The two strided 1x1 convolutions (last branch, residual) hold PYSKL's parameters but run
    unstrided on every ``stride``-th frame, the same sums up to float rounding: oneDNN's weight and bias gradient of a
    1x1 convolution strided along T only, on a channels_last input of fewer than 16 channels and
    some 50 or more frames of 17-25 joints, writes out of bounds (wrong gradients, then glibc heap
    corruption or a segfault; torch 2.13 and 2.14, oneDNN 3.12). An MS-G3D with base_channels
    < 16 has such a convolution in its second stage (< 8: in its third too).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, dilations=(1, 2, 3, 4),
                 activation=True, dropout=0.0):
        super().__init__()
        self.stride = stride
        num_branches = len(dilations) + 2
        branch_channels = out_channels // num_branches
        last_channels = out_channels - branch_channels * (num_branches - 1)

        def entry(channels):
            return [nn.Conv2d(in_channels, channels, kernel_size=1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]

        self.branches = nn.ModuleList([
            nn.Sequential(*entry(branch_channels),
                          unit_tcn(branch_channels, branch_channels, kernel_size, stride=stride, dilation=dilation))
            for dilation in dilations
        ])
        self.branches.append(nn.Sequential(
            *entry(branch_channels),
            nn.MaxPool2d(kernel_size=(3, 1), stride=(stride, 1), padding=(1, 0)),
            nn.BatchNorm2d(branch_channels),
        ))
        self.branches.append(nn.Sequential(
            nn.Conv2d(in_channels, last_channels, kernel_size=1),  # reads the strided frames
            nn.BatchNorm2d(last_channels),
        ))
        if in_channels == out_channels and stride == 1:
            self.residual = None  # identity
        else:
            self.residual = unit_tcn(in_channels, out_channels, kernel_size=1)  # reads the strided frames
        self.act = nn.ReLU(inplace=True) if activation else nn.Identity()
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        # One copy of the kept frames, shared by the two convolutions that read them (see above).
        frames = x if self.stride == 1 else x[:, :, :: self.stride].contiguous(memory_format=torch.channels_last)
        res = x if self.residual is None else self.residual(frames)
        out = torch.cat([branch(x) for branch in self.branches[:-1]] + [self.branches[-1](frames)], dim=1)
        # ``out`` is a fresh concatenation that autograd does not save, so adding in place is safe
        # (PYSKL #242 is an in-place add onto a ReLU output, which ReLU's backward needs).
        out += res
        return self.drop(self.act(out))
