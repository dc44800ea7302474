"""Model throughput: msg3d's MS-G3D against a straightforward PYSKL-layout implementation.

Prints samples/s for eval (no_grad forward) and train (forward + cross-entropy + backward) at
T=100, for each batch size and precision (fp32, bf16 autocast), with the achieved GFLOP/s counted
at PYSKL's nominal FLOPs (REFERENCE §10: 21.85 GFLOP per NTU sample forward, 3x for train) and
the speed ratio ours / PYSKL measured in the same run.

The baseline below re-states PYSKL's forward pass op for op (NCHW tensors, einsum
'kvu,nctv->nkctu' with reshape, nn.Unfold + permute + contiguous for the G3D windows, residual
adds out of place so that it can also train). It holds the same state_dict as ours, so the run
first checks that both give the same logits.

    python benchmarks/model_speed.py --batch 8 16 --iters 3
    python benchmarks/model_speed.py --device cuda --batch 16 64
"""

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from msg3d.layouts import LAYOUTS, get_layout
from msg3d.models import build_model
from msg3d.models.graph import binary_adjacency, multiscale_graph


# ----------------------------------------------------------------------------------------------
# PYSKL-layout baseline (same parameters and key names as msg3d.models)


class _MLP(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.layers = nn.ModuleList([nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class _MSGCN(nn.Module):
    def __init__(self, num_scales, cin, cout, adj, window_size=1):
        super().__init__()
        self.num_scales = num_scales
        self.register_buffer("A", torch.tensor(multiscale_graph(adj, num_scales, window_size), dtype=torch.float32))
        self.PA = nn.Parameter(torch.empty_like(self.A))
        nn.init.uniform_(self.PA, -1e-6, 1e-6)
        self.mlp = _MLP(cin * num_scales, cout)

    def forward(self, x):
        n, c, t, v = x.shape
        support = torch.einsum("kvu,nctv->nkctu", self.A + self.PA, x)
        return self.mlp(support.reshape(n, self.num_scales * c, t, v))


class _UnitTCN(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride=1, dilation=1):
        super().__init__()
        pad = (kernel_size + (kernel_size - 1) * (dilation - 1) - 1) // 2
        self.conv = nn.Conv2d(cin, cout, (kernel_size, 1), padding=(pad, 0), stride=(stride, 1),
                              dilation=(dilation, 1))
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class _MSTCN(nn.Module):
    def __init__(self, cin, cout, stride=1, act=True):
        super().__init__()
        b = cout // 6
        self.branches = nn.ModuleList([
            nn.Sequential(nn.Conv2d(cin, b, 1), nn.BatchNorm2d(b), nn.ReLU(), _UnitTCN(b, b, 3, stride, d))
            for d in (1, 2, 3, 4)
        ])
        self.branches.append(nn.Sequential(nn.Conv2d(cin, b, 1), nn.BatchNorm2d(b), nn.ReLU(),
                                           nn.MaxPool2d((3, 1), (stride, 1), (1, 0)), nn.BatchNorm2d(b)))
        self.branches.append(nn.Sequential(nn.Conv2d(cin, cout - 5 * b, 1, stride=(stride, 1)),
                                           nn.BatchNorm2d(cout - 5 * b)))
        self.residual = None if cin == cout and stride == 1 else _UnitTCN(cin, cout, 1, stride)
        self.act = nn.ReLU() if act else nn.Identity()

    def forward(self, x):
        res = x if self.residual is None else self.residual(x)
        out = torch.cat([branch(x) for branch in self.branches], dim=1)
        return self.act(out + res)


class _Unfold(nn.Module):
    def __init__(self, window_size, stride):
        super().__init__()
        self.window_size = window_size
        self.unfold = nn.Unfold((window_size, 1), stride=(stride, 1), padding=((window_size - 1) // 2, 0))

    def forward(self, x):
        n, c, t, v = x.shape
        x = self.unfold(x).reshape(n, c, self.window_size, -1, v).permute(0, 1, 3, 2, 4).contiguous()
        return x.reshape(n, c, -1, self.window_size * v)


class _G3D(nn.Module):
    def __init__(self, cin, cout, adj, num_scales, window_size, stride):
        super().__init__()
        self.window_size = window_size
        self.embed = cout if cin == 3 else cin
        self.gcn3d = nn.Sequential(_Unfold(window_size, stride), _MSGCN(num_scales, cin, self.embed, adj, window_size))
        self.out_conv = nn.Conv3d(self.embed, cout, (1, window_size, 1))
        self.out_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        n, _, _, v = x.shape
        x = self.gcn3d(x).reshape(n, self.embed, -1, self.window_size, v)
        return self.out_bn(self.out_conv(x).squeeze(dim=3))


class _MWG3D(nn.Module):
    def __init__(self, cin, cout, adj, num_scales, stride):
        super().__init__()
        self.gcn3d = nn.ModuleList([_G3D(cin, cout, adj, num_scales, w, stride) for w in (3, 5)])

    def forward(self, x):
        return self.gcn3d[0](x) + self.gcn3d[1](x)


class PysklMSG3D(nn.Module):
    """PYSKL's MSG3D forward, NCHW throughout; state_dict identical to ``msg3d.models.MSG3D``."""

    def __init__(self, layout="nturgb+d", base_channels=96, num_gcn_scales=13, num_g3d_scales=6):
        super().__init__()
        adj = binary_adjacency(layout)
        self.register_buffer("A", torch.tensor(adj, dtype=torch.float32))
        self.data_bn = nn.BatchNorm1d(2 * len(adj) * 3)
        c1, c2, c3 = base_channels, 2 * base_channels, 4 * base_channels
        for i, (cin, cmid, cout, s) in enumerate(((3, c1, c1, 1), (c1, c1, c2, 2), (c2, c2, c3, 2)), start=1):
            setattr(self, f"gcn3d{i}", _MWG3D(cin, cout, adj, num_g3d_scales, s))
            setattr(self, f"sgcn{i}", nn.Sequential(_MSGCN(num_gcn_scales, cin, cmid, adj), _MSTCN(cmid, cout, s),
                                                     _MSTCN(cout, cout, act=False)))
            setattr(self, f"tcn{i}", _MSTCN(cout, cout))

    def forward(self, x):
        n, m, t, v, c = x.shape
        x = self.data_bn(x.permute(0, 1, 3, 4, 2).contiguous().reshape(n, m * v * c, t))
        x = x.reshape(n * m, v, c, t).permute(0, 2, 3, 1).contiguous()
        for i in (1, 2, 3):
            x = F.relu(getattr(self, f"sgcn{i}")(x) + getattr(self, f"gcn3d{i}")(x))
            x = getattr(self, f"tcn{i}")(x)
        return x.reshape((n, m) + x.shape[1:])


class PysklRecognizer(nn.Module):
    def __init__(self, num_classes, layout, **scales):
        super().__init__()
        self.backbone = PysklMSG3D(layout, **scales)
        self.cls_head = nn.Module()
        self.cls_head.fc_cls = nn.Linear(4 * scales.get("base_channels", 96), num_classes)

    def forward(self, x):
        feat = self.backbone(x)
        n, m, c = feat.shape[:3]
        feat = F.adaptive_avg_pool2d(feat.reshape((n * m,) + feat.shape[2:]), 1)
        return self.cls_head.fc_cls(feat.reshape(n, m, c).mean(dim=1))


# ----------------------------------------------------------------------------------------------


def sync_device(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(model, x, labels, mode, dtype, iters, device):
    """Median seconds per batch over ``iters`` runs, after one warm-up run."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step():
        if mode == "eval":
            with torch.no_grad(), autocast:
                model(x)
        else:
            with autocast:
                loss = F.cross_entropy(model(x).float(), labels)
            loss.backward()
            model.zero_grad(set_to_none=True)

    model.train(mode == "train")
    step()
    return median_seconds(step, iters, device)


def median_seconds(step, iters, device):
    """Median wall seconds of ``iters`` calls of ``step``, each fenced by a device sync."""
    times = []
    for _ in range(iters):
        sync_device(device)
        start = time.perf_counter()
        step()
        sync_device(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def nominal_gflop(model, x):
    """Forward GFLOP per sample of the PYSKL-layout model (2 FLOP per multiply-add)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x[:1])
    return counter.get_total_flops() / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 16], help="batch sizes (samples)")
    parser.add_argument("--iters", type=int, default=3, help="timed runs per cell (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--frames", type=int, default=100, help="T")
    parser.add_argument("--layout", default="nturgb+d", choices=sorted(LAYOUTS))
    parser.add_argument("--kinetics", action="store_true",
                        help="MS-G3D's Kinetics model: layout openpose, 8 GCN and 8 G3D scales, 400 classes "
                             "(give --frames 300 for its all-frames input)")
    parser.add_argument("--modes", nargs="+", default=["eval", "train"], choices=["eval", "train"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--no-baseline", action="store_true", help="time only msg3d's model")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.kinetics:
        args.layout = "openpose"
    num_classes = 400 if args.kinetics else 60
    scales = {"num_gcn_scales": 8, "num_g3d_scales": 8} if args.kinetics else {}
    ours = build_model(num_classes, layout=args.layout, **scales).to(device)
    impls = {"msg3d": ours}
    num_joints = get_layout(args.layout).num_joints
    gen = torch.Generator().manual_seed(0)
    probe = torch.randn(2, 2, args.frames, num_joints, 3, generator=gen).to(device)
    if not args.no_baseline:
        pyskl = PysklRecognizer(num_classes, args.layout, **scales).to(device)
        pyskl.load_state_dict(ours.state_dict())
        impls["pyskl"] = pyskl
        with torch.no_grad():
            diff = (ours.eval()(probe) - pyskl.eval()(probe)).abs().max().item()
        print(f"max |logit difference| msg3d vs PYSKL layout, eval fp32: {diff:.2e}")
    gflop = nominal_gflop(PysklRecognizer(num_classes, args.layout, **scales).to(device), probe)

    print(f"device={device} threads={torch.get_num_threads()} T={args.frames} layout={args.layout} "
          f"nominal forward {gflop:.2f} GFLOP/sample (train counted as 3x)")
    header = f"{'mode':<6}{'prec':<6}{'batch':>6}" + "".join(
        f"{name + ' s/batch':>15}{name + ' samples/s':>18}{'GFLOP/s':>9}" for name in impls)
    if "pyskl" in impls:
        header += f"{'ratio':>8}"
    print(header)
    for mode in args.modes:
        for precision in args.precisions:
            for batch in args.batch:
                x = torch.randn(batch, 2, args.frames, num_joints, 3, generator=gen).to(device)
                labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
                row = f"{mode:<6}{precision:<6}{batch:>6}"
                rates = {}
                for name, model in impls.items():
                    seconds = time_step(model, x, labels, mode, precision, args.iters, device)
                    rates[name] = batch / seconds
                    flops = gflop * (3 if mode == "train" else 1) * rates[name]
                    row += f"{seconds:>15.3f}{rates[name]:>18.2f}{flops:>9.1f}"
                if "pyskl" in rates:
                    row += f"{rates['msg3d'] / rates['pyskl']:>8.2f}"
                print(row, flush=True)


if __name__ == "__main__":
    main()
