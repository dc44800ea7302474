"""`msg3d export-onnx` and `msg3d predict --onnx`: PYSKL's compact reference through onnxruntime
within 1e-4 of its logits, dynamic batch and frames, the JSON beside the model, the self-check that
refuses a wrong file (and writes nothing), and the missing-package message."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TEST_FIXTURES
from msg3d.class_names import class_names
from msg3d.cli import main as cli_main
from msg3d.deploy import onnx_export
from msg3d.deploy.applied import Applied
from msg3d.deploy.onnx_export import export_onnx, read_sidecar, sidecar_path, verify
from msg3d.layouts import NTU_RGBD
from msg3d.models import build_model
from test_predict import NUM_CLASSES, build_demo, probs_of, run_predict

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytest_plugins = ["test_engine_common"]  # fixture: one_torch_thread
pytestmark = pytest.mark.usefixtures("one_torch_thread")

NTU_SMALL = TEST_FIXTURES / "pyskl_msg3d_ntu_small_ref.pt"
REPO = Path(__file__).resolve().parents[1]
SMALL_FACTS = {"layout": "nturgb+d", "modality": "j", "hparams": {"model": {"base_channels": 24}}}


@pytest.fixture(scope="module")
def small_ref():
    return torch.load(NTU_SMALL, weights_only=True)


@pytest.fixture(scope="module")
def exported_small(tmp_path_factory):
    """PYSKL's compact reference (base_channels 24, all 13/6 scales, 60 classes) exported."""
    out = tmp_path_factory.mktemp("small") / "ntu_small.onnx"
    info = export_onnx(NTU_SMALL, out, **SMALL_FACTS)
    return out, info


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    """The tiny j model of test_predict's demo, exported through the command."""
    demo = build_demo(tmp_path_factory.mktemp("demo"))
    demo.onnx = demo.root / "j.onnx"
    assert cli_main(["export-onnx", "--checkpoint", str(demo.checkpoints["j"]), str(demo.onnx)]) == 0
    return demo


def test_round_trip_of_pyskls_compact_reference(exported_small, small_ref):
    out, _ = exported_small
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"keypoint": small_ref["input"].numpy()})[0]
    assert logits.shape == (2, 60) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, small_ref["logits"].numpy(), rtol=0, atol=1e-4)
    # REFERENCE §12: a transposed PA moves these logits by 0.023, so 1e-4 tells a faithful graph apart
    assert np.abs(small_ref["logits"].numpy()).max() > 1


def test_file_is_self_contained_with_dynamic_batch_and_frames(exported_small, small_ref):
    out, _ = exported_small
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, sidecar_path(out).name]
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)  # no external data
    (inp,), (outp,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == "keypoint" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and dims[1:2] + dims[3:] == [2, 25, 3]
    assert outp.name == "logits" and [d.dim_value for d in outp.type.tensor_type.shape.dim][1] == 60

    torch_model = build_model(60, layout="nturgb+d", base_channels=24).eval()
    torch_model.load_state_dict(small_ref["state_dict"])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 2, 41, 25, 3, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = torch_model(x).numpy()
    np.testing.assert_allclose(session.run(None, {"keypoint": x.numpy()})[0], expected, rtol=0, atol=1e-4)


def test_json_beside_the_model_says_what_a_consumer_needs(exported_small):
    out, info = exported_small
    assert json.loads(sidecar_path(out).read_text()) == json.loads(json.dumps(info))
    assert info["format"] == "msg3d-onnx" and info["format_version"] == 1
    assert info["applied"] == {"layout": "nturgb+d", "modality": "j", "features": "pyskl", "num_classes": 60,
                               "model": {"base_channels": 24, "num_gcn_scales": 13, "num_g3d_scales": 6},
                               "clip_len": 100, "num_clips": 10, "channels": 3, "num_person": 2}
    assert info["joint_names"] == list(NTU_RGBD.joint_names) and info["channels"] == "x, y, z"
    assert info["class_names"] == list(class_names("ntu60"))
    assert info["input"]["name"] == "keypoint" and info["input"]["shape"] == ["N", 2, "T", 25, 3]
    assert info["output"] == {"name": "logits", "dtype": "float32", "axes": ["N", "class"], "shape": ["N", 60]}
    assert "PreNormalize3D" in info["pipeline"] and "num_clips=10" in info["test"]
    assert info["checkpoint"]["sha256"] == hashlib.sha256(NTU_SMALL.read_bytes()).hexdigest()
    assert info["checkpoint"]["facts_from"] == "pyskl"
    check = info["verification"]
    assert check["batch_sizes"] == [1, 3] and check["frame_counts"] == [100, 107] and check["max_abs_diff"] <= 1e-4
    assert isinstance(info["opset"], int) and info["opset"] >= 18
    applied = read_sidecar(out)
    assert applied.to_dict() == info["applied"] and applied.source == str(out) and applied.origin == "onnx"


def test_predict_through_onnxruntime_equals_pytorch(demo_onnx, tmp_path):
    files = [demo_onnx.raw / f"{fd}.skeleton" for fd in demo_onnx.val]
    through_onnx = run_predict(["--onnx", demo_onnx.onnx, *files, "--top-k", NUM_CLASSES], tmp_path, "onnx.json")
    through_torch = run_predict(["--checkpoint", demo_onnx.checkpoints["j"], *files, "--top-k", NUM_CLASSES],
                                tmp_path, "torch.json")
    assert [r["sample"] for r in through_onnx] == demo_onnx.val
    for a, b in zip(through_onnx, through_torch):
        np.testing.assert_allclose(probs_of(a), probs_of(b), rtol=0, atol=1e-5)
        np.testing.assert_allclose(probs_of(a), demo_onnx.scores["j"][a["sample"]], rtol=0, atol=1e-5)
    # the demo's recordings last 20 frames or more
    windows = run_predict(["--onnx", demo_onnx.onnx, files[0], "--window", 10, "--stride", 5], tmp_path, "w.json")
    assert [(r["start"], r["end"]) for r in windows][:3] == [(0, 10), (5, 15), (10, 20)]


def test_predict_onnx_needs_no_torch(demo_onnx, tmp_path):
    """`predict --onnx` in a process where importing torch fails gives onnxruntime's predictions."""
    out = tmp_path / "no_torch.json"
    script = ("import sys; sys.modules['torch'] = None; from msg3d.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    sample = demo_onnx.raw / f"{demo_onnx.val[0]}.skeleton"
    proc = subprocess.run([sys.executable, "-c", script, "predict", "--onnx", str(demo_onnx.onnx), str(sample),
                           "--top-k", str(NUM_CLASSES), "--json", str(out)], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr  # an `import torch` anywhere on the way raises ImportError
    with_torch = run_predict(["--onnx", demo_onnx.onnx, sample, "--top-k", NUM_CLASSES], tmp_path, "torch.json")
    np.testing.assert_allclose(probs_of(json.loads(out.read_text())[0]), probs_of(with_torch[0]), rtol=0, atol=0)


def test_predict_onnx_errors(demo_onnx, tmp_path, capsys):
    raw = demo_onnx.raw / f"{demo_onnx.val[0]}.skeleton"
    assert cli_main(["predict", "--onnx", str(demo_onnx.onnx), "--modality", "b", str(raw)]) == 2
    assert f"error: {demo_onnx.onnx} records modality 'j', but modality 'b' was given" in capsys.readouterr().err
    lonely = tmp_path / "lonely.onnx"
    lonely.write_bytes(demo_onnx.onnx.read_bytes())
    assert cli_main(["predict", "--onnx", str(lonely), str(raw)]) == 2
    assert f"error: {lonely}.json not found: `msg3d export-onnx` writes it beside" in capsys.readouterr().err
    sidecar_path(lonely).write_text(json.dumps({"format": "msg3d-onnx", "format_version": 1,
                                                "applied": {"layout": "nturgb+d"}}))
    assert cli_main(["predict", "--onnx", str(lonely), str(raw)]) == 2
    assert f"error: {lonely}: lacks 'modality', 'features', 'num_classes'" in capsys.readouterr().err


class Constant(torch.nn.Module):
    """A "recognizer" whose logits ignore the keypoints: what the self-check must refuse."""

    def __init__(self, bias):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x):
        return x[:, 0, 0, 0, :1] * 0 + self.bias


class Linear(Constant):
    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, :1] + self.bias


def _export(module, path):
    x = torch.randn(2, 2, 8, 25, 3)
    dims = ({0: torch.export.Dim("N", min=1), 2: torch.export.Dim("T", min=1)},)
    torch.onnx.export(module.eval(), (x,), dynamo=True, input_names=["keypoint"], dynamic_shapes=dims,
                      verbose=False).save(path, external_data=False)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # inside torch's exporter
def test_self_check_refuses_a_model_that_differs_or_ignores_its_input(tmp_path):
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(batch, 2, frames, 25, 3, generator=generator) for batch in (1, 3) for frames in (8, 15)]
    linear = Linear([0.5, -1.0, 2.0])
    _export(linear, tmp_path / "linear.onnx")
    check = verify(tmp_path / "linear.onnx", linear, inputs)
    assert check["max_abs_diff"] <= 1e-6 and check["batch_sizes"] == [1, 3] and check["frame_counts"] == [8, 15]
    with pytest.raises(ValueError, match=r"logits differ from PyTorch's by 0\.001 at batch 1, 8 frames"):
        verify(tmp_path / "linear.onnx", Linear([0.5, -1.0, 2.001]), inputs)
    constant = Constant([0.5, -1.0, 2.0])
    _export(constant, tmp_path / "constant.onnx")
    with pytest.raises(ValueError, match="logits do not change with the input at batch 3, 8 frames"):
        verify(tmp_path / "constant.onnx", constant, inputs)


def test_verification_inputs_have_the_training_datas_scale():
    model = build_model(5, layout="nturgb+d", base_channels=6, num_gcn_scales=2, num_g3d_scales=2).eval()
    bn = model.backbone.data_bn  # statistics far from N(0, 1), as a training on real data leaves them
    bn.running_mean.copy_(torch.linspace(-3, 3, 150))
    bn.running_var.copy_(torch.linspace(0.01, 4, 150))
    facts = Applied(source="tiny", origin="pyskl", layout="nturgb+d", modality="j", features="pyskl",
                    num_classes=5, model={"base_channels": 6}, clip_len=20, num_clips=1)
    inputs = onnx_export.verification_inputs(model, facts)
    assert [tuple(x.shape) for x in inputs] == [(1, 2, 20, 25, 3), (1, 2, 27, 25, 3), (3, 2, 20, 25, 3),
                                                (3, 2, 27, 25, 3)]
    pooled = torch.cat([x.permute(1, 3, 4, 0, 2).reshape(150, -1) for x in inputs], dim=1)  # feature m*V*C+v*C+c
    std = bn.running_var.sqrt()
    assert ((pooled.mean(1) - bn.running_mean) / std).abs().max() < 0.5
    assert (pooled.std(1) / std - 1).abs().max() < 0.3


def test_failed_check_writes_nothing(monkeypatch, tmp_path, capsys):
    class Junk:
        def save(self, path, external_data):
            with open(path, "wb") as f:
                f.write(b"not an onnx model")

    monkeypatch.setattr(onnx_export, "export_program", lambda model, applied, opset=None: Junk())
    out = tmp_path / "models" / "j.onnx"
    args = ["export-onnx", "--checkpoint", str(NTU_SMALL), str(out), "--layout", "nturgb+d", "--modality", "j",
            "--hparams-json", json.dumps(SMALL_FACTS["hparams"])]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {NTU_SMALL}: export to {out} failed its check, nothing written: " in err
    assert "onnxruntime cannot load it" in err
    assert list(out.parent.iterdir()) == []  # no model, no JSON, no temporary


@pytest.mark.parametrize("package", ["onnx", "onnxruntime", "onnxscript"])
def test_missing_package_is_named(monkeypatch, tmp_path, capsys, package):
    monkeypatch.setitem(sys.modules, package, None)  # "import package" now fails
    out = tmp_path / "j.onnx"
    assert cli_main(["export-onnx", "--checkpoint", str(NTU_SMALL), str(out), "--layout", "nturgb+d",
                     "--modality", "j"]) == 2
    err = capsys.readouterr().err
    assert (f"msg3d export-onnx needs the Python package {package!r}, which is not installed; install the deploy "
            'extra: pip install -e ".[deploy]" (onnx, onnxruntime, onnxscript)') in err
    assert not out.exists()


def test_predict_names_a_missing_onnxruntime(exported_small, monkeypatch, tmp_path, capsys):
    out, _ = exported_small
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    raw = tmp_path / "x.skeleton"
    raw.write_text("1\n0\n")
    assert cli_main(["predict", "--onnx", str(out), str(raw)]) == 2
    assert "running an ONNX model needs the Python package 'onnxruntime'" in capsys.readouterr().err
