"""MS-G3D model: PYSKL's state_dict layout, initialisation and numbers; training, bf16, compile.

Parity with PYSKL runs on every clone from the small references committed in tests/fixtures/;
the full-size reference in ../shared is checked in test_model_full_size.py."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import REPO, TEST_FIXTURES
from msg3d.models import MIN_BASE_CHANNELS, build_model
from msg3d.models.gcn import MSGCN, SlidingWindows
from msg3d.models.graph import binary_adjacency
from msg3d.models.tcn import MSTCN

SMALL_REFS = {"nturgb+d": "pyskl_msg3d_ntu_small_ref.pt", "coco": "pyskl_msg3d_coco_small_ref.pt"}


def small_model(num_classes=5, layout="nturgb+d"):
    return build_model(num_classes, layout=layout, base_channels=12, num_gcn_scales=3, num_g3d_scales=2)


def build_small(layout):
    """The configuration of the committed small references: 60 classes, base_channels=24, all 13/6 scales."""
    return build_model(60, layout=layout, base_channels=24)


@pytest.fixture(scope="module", params=list(SMALL_REFS), ids=["ntu", "coco"])
def small_ref(request):
    """PYSKL's own numbers for a small MSG3D, committed in tests/fixtures/ (see its README), one per layout."""
    ref = torch.load(TEST_FIXTURES / SMALL_REFS[request.param], weights_only=True)
    assert ref["meta"] == {"layout": request.param, "num_classes": 60, "in_channels": 3, "base_channels": 24}
    return ref


@pytest.fixture(scope="module")
def small_ref_model(small_ref):
    model = build_small(small_ref["meta"]["layout"])
    model.load_state_dict(small_ref["state_dict"])
    return model.eval()


@pytest.mark.parametrize("layout, tsv", [("nturgb+d", "pyskl_msg3d_ntu_keys.tsv"), ("coco", "pyskl_msg3d_coco_keys.tsv")])
def test_state_dict_keys_shapes_and_order_are_pyskls(layout, tsv):
    lines = (TEST_FIXTURES / tsv).read_text().splitlines()
    assert lines[0] == "key\tshape"
    expected = [(key, json.loads(shape)) for key, shape in (line.split("\t") for line in lines[1:])]
    state = build_model(60, layout=layout).state_dict()
    assert [(key, list(value.shape)) for key, value in state.items()] == expected
    assert len(state) == 820
    assert sum(key.endswith("num_batches_tracked") for key in state) == 117


@pytest.mark.parametrize("layout, num_classes, params", [
    ("nturgb+d", 60, 3_194_595), ("nturgb+d", 120, 3_217_695), ("coco", 60, 2_975_763), ("coco", 120, 2_998_863),
])
def test_parameter_count(layout, num_classes, params):
    model = build_model(num_classes, layout=layout)
    assert sum(p.numel() for p in model.parameters()) == params
    assert sum(p.numel() for p in model.cls_head.parameters()) == 384 * num_classes + num_classes
    assert model.layout == layout and model.num_classes == num_classes


def test_small_state_dict_keys_shapes_order_and_size_are_pyskls(small_ref):
    model = build_small(small_ref["meta"]["layout"])
    expected = [(key, value.shape) for key, value in small_ref["state_dict"].items()]
    assert [(key, value.shape) for key, value in model.state_dict().items()] == expected
    assert sum(p.numel() for p in model.parameters()) == small_ref["num_params"]


def test_small_seeded_construction_reproduces_pyskl_init(small_ref):
    torch.manual_seed(0)
    state = build_small(small_ref["meta"]["layout"]).state_dict()
    sums = small_ref["default_init_sums"]
    assert list(state) == list(sums)
    wrong = [key for key, value in state.items() if value.double().sum().item() != sums[key]]
    assert not wrong, f"{len(wrong)} tensors differ from PYSKL's seeded init, first: {wrong[:5]}"


def test_small_eval_logits_match_pyskl(small_ref, small_ref_model):
    """fp32 CPU: measured max difference 6e-7 (ntu) / 7e-7 (coco), the size of fp32 rounding."""
    with torch.no_grad():
        logits = small_ref_model.cls_head(small_ref_model.backbone(small_ref["input"]))
    torch.testing.assert_close(logits, small_ref["logits"], rtol=0, atol=1e-4)
    # the tolerance is meaningful: the logits span several units (max |logit| 3.9 ntu, 5.3 coco)
    assert small_ref["logits"].abs().max() > 3


def test_small_fp64_logits_match_pyskl(small_ref):
    """float64: measured max difference 1.2e-15 (ntu) / 2.7e-15 (coco); fp32 rounding alone gives 5e-7 to 8e-7."""
    model = build_small(small_ref["meta"]["layout"])
    model.load_state_dict(small_ref["state_dict"])
    model = model.double().eval()
    with torch.no_grad():
        logits = model(small_ref["input"].double())
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, small_ref["logits_fp64"], rtol=0, atol=1e-12)


def test_small_predict_probs_matches_pyskl_tta(small_ref, small_ref_model):
    """Measured max difference 2e-8 (ntu) / 6e-8 (coco)."""
    probs = small_ref_model.predict_probs(small_ref["input"].unsqueeze(0))  # 1 sample x 2 clips
    assert probs.shape == (1, 60)
    torch.testing.assert_close(probs, small_ref["tta_probs"], rtol=0, atol=1e-5)


def test_predict_probs_averages_softmax_not_logits():
    torch.manual_seed(0)
    model = small_model().eval()
    clips = torch.randn(2, 3, 2, 12, 25, 3)
    probs = model.predict_probs(clips)
    with torch.no_grad():
        per_clip = torch.stack([model(clips[:, i]).softmax(dim=-1) for i in range(3)], dim=1)
    torch.testing.assert_close(probs, per_clip.mean(dim=1))


def assert_bf16_forward_close_to_fp32(model, ref):
    """bf16 autocast logits of a reference's weights within 2 % of the logits' range of PYSKL's fp32."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.eval()(ref["input"])
    assert logits.dtype == torch.bfloat16
    diff = (logits.float() - ref["logits"]).abs().max().item()
    assert diff < 0.02 * ref["logits"].abs().max().item()


def assert_backward_reaches_every_parameter(model, ref):
    """A training step on a reference's weights gives every parameter a finite gradient (PYSKL #242)."""
    model.train()
    loss = F.cross_entropy(model(ref["input"][:, :, :16]), torch.tensor([3, 7]))
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    # PA and the graph path really receive gradient
    assert model.backbone.gcn3d2.gcn3d[1].gcn3d[1].PA.grad.abs().sum() > 0
    assert model.backbone.sgcn1[0].PA.grad.abs().sum() > 0


def test_small_bf16_autocast_forward_is_close_to_fp32(small_ref, small_ref_model):
    assert_bf16_forward_close_to_fp32(small_ref_model, small_ref)


def test_small_backward_gives_finite_gradients_everywhere(small_ref):
    model = build_small(small_ref["meta"]["layout"])
    model.load_state_dict(small_ref["state_dict"])
    assert_backward_reaches_every_parameter(model, small_ref)


def test_bf16_training_step_runs():
    torch.manual_seed(0)
    model = small_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(torch.randn(2, 2, 12, 25, 3)).float(), torch.tensor([0, 1]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def einsum_msgcn(module, x):
    """PYSKL's MSGCN / ST_MSGCN forward (einsum on PYSKL-ordered window nodes), eval mode."""
    n, c, t, v = x.shape
    w, s = module.window_size, module.window_stride
    if w > 1:  # PYSKL's UnfoldTemporalWindows without padding: node index tau * V + v
        x = x.unfold(2, w, s).permute(0, 1, 2, 4, 3).reshape(n, c, -1, w * v)
    support = torch.einsum("kvu,nctv->nkctu", module.A + module.PA, x)
    out = module.mlp(support.reshape(n, -1, *support.shape[-2:]))
    if w > 1:  # back to our joint-major node order u * w + tau
        out = out.view(n, out.shape[1], -1, w, v).transpose(3, 4).reshape(out.shape)
    return out


@pytest.mark.parametrize("c_in, c_out, window, stride", [
    (3, 8, 1, 1), (8, 8, 1, 1), (8, 6, 1, 1), (3, 8, 3, 1), (8, 8, 3, 2), (8, 8, 5, 2), (8, 8, 5, 1),
])
def test_msgcn_equals_pyskl_einsum_formulation(c_in, c_out, window, stride):
    torch.manual_seed(0)
    module = MSGCN(3, c_in, c_out, binary_adjacency("coco"), window_size=window, window_stride=stride).eval()
    with torch.no_grad():
        module.PA.uniform_(-0.1, 0.1)  # asymmetric: a transposed aggregation would show
        bn = module.mlp.layers[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
        x = torch.randn(3, c_in, 11, 17)
        expected = einsum_msgcn(module, x)
        for layout in (torch.channels_last, torch.contiguous_format):
            out = module(x.contiguous(memory_format=layout))
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        if module.project_first:  # the whole-batch blocking used off the CPU gives the same numbers
            a = (module.A + module.PA).view(3, window, 17, window, 17)
            whole = module._project_then_aggregate(x.contiguous(memory_format=torch.channels_last), a, 3)
            torch.testing.assert_close(whole, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("c_in, c_out, stride, activation, widths", [
    (12, 12, 1, True, [2, 2, 2, 2, 2, 2]), (12, 24, 2, False, [4, 4, 4, 4, 4, 4]), (6, 14, 1, True, [2, 2, 2, 2, 2, 4]),
])
def test_mstcn_structure(c_in, c_out, stride, activation, widths):
    torch.manual_seed(0)
    module = MSTCN(c_in, c_out, stride=stride, activation=activation).eval()
    assert [branch[0].out_channels for branch in module.branches] == widths  # remainder to the last branch
    assert (module.residual is None) == (c_in == c_out and stride == 1)
    with torch.no_grad():
        out = module(torch.randn(2, c_in, 9, 5).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, c_out, 5 if stride == 2 else 9, 5)
    assert (out.min() >= 0) == activation


def run_isolated(code, *args, timeout=600):
    """stdout of ``code`` run by a fresh one-thread Python in the checkout: a native crash (heap
    corruption, segfault) then fails the test with its signal instead of killing pytest."""
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if proc.returncode != 0:
        died = f"signal {signal.Signals(-proc.returncode).name}" if proc.returncode < 0 else f"exit {proc.returncode}"
        pytest.fail(f"subprocess died ({died}) after:\n{proc.stdout[-1000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc.stdout


STRIDED_MSTCN_GRADIENTS = """
import copy, json, sys
import torch
from msg3d.models.tcn import MSTCN

torch.set_num_threads(1)
errors = {}
for c_in, frames, joints in json.loads(sys.argv[1]):
    torch.manual_seed(0)
    module = MSTCN(c_in, 2 * c_in, stride=2).eval()  # eval: no BatchNorm cancellation in the gradients
    reference = copy.deepcopy(module).double()  # oneDNN has no float64 kernels
    x = torch.randn(32, c_in, frames, joints).contiguous(memory_format=torch.channels_last)
    weights = torch.randn(32, 2 * c_in, (frames + 1) // 2, joints)
    (module(x) * weights).sum().backward()
    (reference(x.double()) * weights.double()).sum().backward()
    errors[f"{c_in} channels x {frames} frames x {joints} joints"] = max(
        ((p.grad.double() - q.grad).abs().max() / q.grad.abs().max()).item()
        for p, q in zip(module.parameters(), reference.parameters()))
print(json.dumps(errors))
"""


def test_strided_mstcn_of_narrow_models_has_float64_gradients():
    """The strided MS-TCN of the second (third) stage of models with base_channels < 16 (< 8) at
    T = 100 (50), NTU and COCO joints: a strided 1x1 conv there made oneDNN write out of bounds
    (wrong weight and bias gradients, then a glibc abort or a segfault)."""
    configs = [(6, 100, 25), (12, 100, 25), (14, 50, 25), (12, 100, 17)]
    errors = json.loads(run_isolated(STRIDED_MSTCN_GRADIENTS, json.dumps(configs)))
    assert len(errors) == len(configs)
    # fp32 sums of up to 80000 terms: measured 5e-6 to 2e-5 of the largest gradient
    assert max(errors.values()) < 1e-3, errors


WIDTH_SWEEP = """
import json, sys
import torch
import torch.nn.functional as F
from msg3d.models import MIN_BASE_CHANNELS, build_model

torch.set_num_threads(1)
for frames in (1, 7, 100):
    for width in range(MIN_BASE_CHANNELS, 33):
        torch.manual_seed(0)
        model = build_model(60, base_channels=width, num_gcn_scales=3, num_g3d_scales=2).train()
        labels = torch.randint(0, 60, (16,))
        F.cross_entropy(model(torch.randn(16, 2, frames, 25, 3)), labels).backward()
        bad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
        print(json.dumps([width, frames, bad]), flush=True)
"""


@pytest.mark.slow
def test_every_buildable_width_trains_a_step():
    """Batch 16, one thread, T in {1, 7, 100}, every base_channels from the smallest to 32 (4 and
    5 cannot be built: test_unbuildable_networks_are_clear_errors)."""
    steps = [json.loads(line) for line in run_isolated(WIDTH_SWEEP).splitlines()]
    assert [(width, frames) for width, frames, _ in steps] == [
        (width, frames) for frames in (1, 7, 100) for width in range(MIN_BASE_CHANNELS, 33)]
    assert [step for step in steps if step[2]] == []  # parameters without a finite gradient


def test_smallest_width_builds_with_one_channel_per_branch():
    model = build_model(60, base_channels=MIN_BASE_CHANNELS)
    assert [branch[0].out_channels for branch in model.backbone.sgcn1[1].branches] == [1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("kwargs, message", [
    ({"base_channels": 5}, r"MSG3D base_channels must be an integer >= 6 \(the first MS-TCN gives each of its 6 "
                           r"branches base_channels // 6 channels\), got 5$"),
    ({"base_channels": 4}, r"base_channels must be an integer >= 6 .*, got 4$"),
    ({"base_channels": 0}, r"base_channels must be an integer >= 6 .*, got 0$"),
    ({"base_channels": 12.5}, r"base_channels must be an integer >= 6 .*, got 12.5$"),
    ({"num_gcn_scales": 0}, r"num_gcn_scales must be an integer >= 1 .*, got 0$"),
    ({"num_g3d_scales": 0}, r"num_g3d_scales must be an integer >= 1 .*, got 0$"),
    ({"num_person": 0}, r"num_person must be an integer >= 1 .*, got 0$"),
    ({"window_sizes": (3, 4)}, r"window_sizes must be one or more odd integers >= 1 .*, got \(3, 4\)$"),
    ({"window_sizes": ()}, r"window_sizes must be one or more odd integers >= 1 .*, got \(\)$"),
    ({"tcn_dropout": 1.5}, r"tcn_dropout must be a probability in \[0, 1\], got 1.5$"),
    ({"num_classes": 0}, r"num_classes must be an integer >= 1 .*, got 0$"),
])
def test_unbuildable_networks_are_clear_errors(kwargs, message):
    kwargs = {"num_classes": 60, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_model(**kwargs)


@pytest.mark.parametrize("sequences", [1, 3])
@pytest.mark.parametrize("frames, window, stride", [(9, 3, 2), (10, 5, 2), (7, 3, 1), (6, 1, 1)])
def test_sliding_windows_view_and_gradient(sequences, frames, window, stride):
    z = torch.randn(sequences, frames, 4, 3, dtype=torch.float64, requires_grad=True)
    out = SlidingWindows.apply(z, window, stride)
    expected = torch.stack([seq[j:j + window].reshape(-1, 3) for seq in z
                            for j in range(0, frames - window + 1, stride)])
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    if sequences == 1:
        assert out.data_ptr() == z.data_ptr()  # a view, no copy
    torch.autograd.gradcheck(lambda t: SlidingWindows.apply(t, window, stride), (z,))


def test_input_and_output_shapes_for_odd_lengths():
    torch.manual_seed(0)
    model = small_model(7, layout="coco").eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 2, 13, 17, 3))
    assert feats.shape == (1, 2, 48, 4, 17)  # T' = ceil(ceil(13 / 2) / 2)


def test_bad_input_shape_is_a_clear_error():
    model = small_model(layout="coco")
    with pytest.raises(ValueError, match=r"MSG3D \(coco\) expects input \(N, M, T, V, C\) with \(M, V, C\) = \(2, 17, 3\), got \(1, 2, 10, 25, 3\)"):
        model(torch.zeros(1, 2, 10, 25, 3))
    with pytest.raises(ValueError, match="3 input channels"):
        build_model(60, in_channels=2)


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = small_model().train()
    x, labels = torch.randn(2, 2, 12, 25, 3), torch.tensor([0, 1])
    F.cross_entropy(model(x), labels).backward()
    eager = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    # aot_eager traces forward and backward like inductor does, without its minutes of C++ codegen
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    F.cross_entropy(compiled(x), labels).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, eager[name], rtol=1e-4, atol=1e-6, msg=name)


def test_predict_probs_rejects_a_batch_without_clip_axis():
    with pytest.raises(ValueError, match=r"clip_logits expects \(N, num_clips, M, T, V, C\), got shape \(2, 2, 12, 25, 3\)"):
        small_model().eval().predict_probs(torch.randn(2, 2, 12, 25, 3))


def test_coco_odd_length_matches_pyskl_layout_baseline():
    """COCO graph, odd T (37 -> T' = 10) and a batch of one, against the PYSKL-layout re-statement."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("model_speed", REPO / "benchmarks" / "model_speed.py")
    baseline_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline_module)
    torch.manual_seed(3)
    ours = build_model(7, layout="coco").eval()
    with torch.no_grad():  # make BN statistics and PA matter
        for name, tensor in ours.state_dict().items():
            if name.endswith(".PA") or name.endswith("running_mean"):
                tensor.add_(torch.randn_like(tensor) * 0.01)
            elif name.endswith("running_var"):
                tensor.mul_(1 + torch.rand_like(tensor))
    baseline = baseline_module.PysklRecognizer(7, "coco").eval()
    baseline.load_state_dict(ours.state_dict())
    x = torch.randn(1, 2, 37, 17, 3)
    with torch.no_grad():
        assert ours.backbone(x).shape == (1, 2, 384, 10, 17)
        # logits are ~1e-2 here; fp32 rounding gives ~1e-9, a transposed PA ~1e-4
        torch.testing.assert_close(ours(x), baseline(x), rtol=0, atol=1e-6)
