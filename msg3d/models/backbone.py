"""The MS-G3D backbone as packaged in PYSKL (REFERENCE §2.2)."""

import numbers

import torch
import torch.nn as nn

from msg3d.layouts import get_layout
from msg3d.models.g3d import MW_MSG3DBlock
from msg3d.models.gcn import MSGCN
from msg3d.models.graph import binary_adjacency
from msg3d.models.tcn import MSTCN

# The first stage's MS-TCN splits base_channels over its 6 branches, base_channels // 6 channels
# each (PYSKL's rule): fewer would leave its branches without channels.
MIN_BASE_CHANNELS = 6


def check_count(name, value, minimum, reason):
    """``value`` as an integer >= ``minimum``, else ValueError naming ``name``, the bound and ``reason``.

    Bools and fractional numbers are refused: PYSKL's layers take channel and scale counts as ints.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"MSG3D {name} must be an integer >= {minimum} ({reason}), got {value!r}")
    return int(value)


class MSG3D(nn.Module):
    """MS-G3D: three stages of ``ReLU(spatial path + G3D path)`` followed by an MS-TCN.

    Input ``(N, M, T, V, C)`` (samples, persons, frames, joints, channels); output
    ``(N, M, 4 * base_channels, T', V)`` with ``T' = ceil(ceil(T / 2) / 2)``.

    ``data_bn`` normalises every (person, joint, channel) feature over time. ``in_channels`` must
    be 3: PYSKL's first blocks take 3 channels whatever it says (it only sizes ``data_bn``).
    Stage i (widths c1, c2, c3 = base, 2 base, 4 base; stride 1, 2, 2):
    ``sgcn_i`` = MSGCN(``num_gcn_scales``) -> MSTCN (with the stride) -> MSTCN without ReLU,
    ``gcn3d_i`` = multi-window G3D (``window_sizes``, ``num_g3d_scales``), ``tcn_i`` = MSTCN.
    Construction order matches PYSKL's, so ``torch.manual_seed`` gives PYSKL's initialisation.

    Raises ValueError, naming the argument and its smallest allowed value, for a network that
    cannot be built: ``base_channels`` < ``MIN_BASE_CHANNELS``, fewer than one scale or person,
    no window, an even window size (its window has no centre frame, so the G3D path would not keep
    T) or ``tcn_dropout`` outside [0, 1].
    """

    def __init__(self, layout="nturgb+d", in_channels=3, base_channels=96, num_gcn_scales=13, num_g3d_scales=6,
                 num_person=2, tcn_dropout=0.0, window_sizes=(3, 5)):
        super().__init__()
        if in_channels != 3:
            raise ValueError(f"MSG3D takes 3 input channels (PYSKL wires 3 into its first blocks), got {in_channels}")
        base_channels = check_count("base_channels", base_channels, MIN_BASE_CHANNELS,
                                    "the first MS-TCN gives each of its 6 branches base_channels // 6 channels")
        num_gcn_scales = check_count("num_gcn_scales", num_gcn_scales, 1, "the scales start with the joint itself")
        num_g3d_scales = check_count("num_g3d_scales", num_g3d_scales, 1, "the scales start with the joint itself")
        num_person = check_count("num_person", num_person, 1, "persons per sample")
        window_sizes = tuple(window_sizes)
        if not window_sizes or any(isinstance(w, bool) or not isinstance(w, numbers.Integral) or w < 1 or w % 2 == 0
                                   for w in window_sizes):
            raise ValueError(f"MSG3D window_sizes must be one or more odd integers >= 1 (a G3D window is centred "
                             f"on its frame), got {window_sizes}")
        if not 0 <= tcn_dropout <= 1:
            raise ValueError(f"MSG3D tcn_dropout must be a probability in [0, 1], got {tcn_dropout!r}")
        self.layout = get_layout(layout).name
        adj = binary_adjacency(self.layout)
        self.register_buffer("A", torch.tensor(adj, dtype=torch.float32))
        self.num_person, self.num_joints, self.in_channels = num_person, len(adj), in_channels
        self.data_bn = nn.BatchNorm1d(num_person * self.num_joints * in_channels)
        c1, c2, c3 = base_channels, base_channels * 2, base_channels * 4

        def stage(c_in, c_mid, c_out, stride):
            gcn3d = MW_MSG3DBlock(c_in, c_out, adj, num_g3d_scales, window_sizes, window_stride=stride)
            sgcn = nn.Sequential(
                MSGCN(num_gcn_scales, c_in, c_mid, adj),
                MSTCN(c_mid, c_out, stride=stride),
                MSTCN(c_out, c_out, activation=False),
            )
            tcn = MSTCN(c_out, c_out, dropout=tcn_dropout)
            return gcn3d, sgcn, tcn

        self.gcn3d1, self.sgcn1, self.tcn1 = stage(3, c1, c1, 1)
        self.gcn3d2, self.sgcn2, self.tcn2 = stage(c1, c1, c2, 2)
        self.gcn3d3, self.sgcn3, self.tcn3 = stage(c2, c2, c3, 2)

    def forward(self, x):
        expected = (self.num_person, self.num_joints, self.in_channels)
        if x.dim() != 5 or (x.shape[1], x.shape[3], x.shape[4]) != expected:
            raise ValueError(f"MSG3D ({self.layout}) expects input (N, M, T, V, C) with (M, V, C) = {expected}, "
                             f"got {tuple(x.shape)}")
        n, m, t, v, c = x.shape
        # data_bn feature index = m * V * C + v * C + c
        x = self.data_bn(x.permute(0, 1, 3, 4, 2).reshape(n, m * v * c, t))
        x = x.view(n * m, v, c, t).permute(0, 2, 3, 1).contiguous(memory_format=torch.channels_last)
        for sgcn, gcn3d, tcn in ((self.sgcn1, self.gcn3d1, self.tcn1),
                                 (self.sgcn2, self.gcn3d2, self.tcn2),
                                 (self.sgcn3, self.gcn3d3, self.tcn3)):
            out = sgcn(x)
            # In place: ``out`` is a fresh concatenation (the last MSTCN has no activation) that
            # autograd does not save; a new tensor here would be one more large page-faulted buffer.
            out += gcn3d(x)
            x = tcn(out.relu_())
        return x.reshape((n, m) + x.shape[1:])
