"""Code digests (msg3d.provenance): what each stage's digest covers, per-modality precision, and
that the static import closure holds every msg3d module a stage really loads."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from msg3d import provenance
from msg3d.cli import COMMANDS
from msg3d.data import modality as modality_module
from msg3d.data.modality import MODALITIES, derive_modality

REPO = Path(__file__).resolve().parents[1]
TORCH_COMMANDS = ("train", "test")


def relative_files(module, modality=None):
    return [p.relative_to(provenance.PACKAGE_DIR).as_posix() for p in provenance.code_files(module, modality)]


@pytest.fixture
def package_copy(tmp_path):
    """A copy of the msg3d package and a function giving the digest of a stage in that copy."""
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "msg3d", root / "msg3d", ignore=shutil.ignore_patterns("__pycache__"))

    def digest(command, modality=None):
        code = ("import sys; from msg3d.cli import COMMANDS; from msg3d.provenance import code_digest; "
                f"print(code_digest(COMMANDS[{command!r}][0], {modality!r}))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                              capture_output=True, text=True, check=True)
        return proc.stdout.strip()

    return root / "msg3d", digest


def edit(path, text="\n# edited\n"):
    path.write_text(path.read_text() + text)


def test_training_digest_covers_what_training_runs_and_nothing_else(package_copy):
    package, digest = package_copy
    train = COMMANDS["train"][0]
    files = relative_files(train)
    for rel in ("engine/train.py", "engine/loop.py", "engine/saver.py", "models/gcn.py", "data/dataset.py",
                "data/store.py", "checkpoint.py", "metrics.py", "layouts.py", "fileio.py"):
        assert rel in files, rel
    # the raw conversion, derivation, fusion, report, the command dispatch, the version string and
    # the digest's own tool are not training code
    for rel in ("data/ntu_raw.py", "data/modality.py", "data/bone.py", "report/table.py", "cli.py", "__main__.py",
                "data/ntu120_missing.txt", "__init__.py", "provenance.py"):
        assert rel not in files, rel

    before = digest("train")
    assert before == provenance.code_digest(train) and len(before) == 16  # independent of the checkout's place
    for rel in ("engine/schedule.py", "models/tcn.py", "data/sampling.py"):
        text = (package / rel).read_text()
        edit(package / rel)
        assert digest("train") != before, rel
        (package / rel).write_text(text)
    for rel in ("data/ntu_raw.py", "report/table.py", "cli.py", "__init__.py", "provenance.py"):
        edit(package / rel)
    (package / "engine" / "unused_module.py").write_text("x = 1\n")  # nothing imports it
    assert digest("train") == before
    # files are framed, not concatenated: a byte moved from one file to the next counts
    layouts, metrics = package / "layouts.py", package / "metrics.py"
    layouts.write_bytes(layouts.read_bytes()[:-1])
    metrics.write_bytes(b"\n" + metrics.read_bytes())
    assert digest("train") != before


def test_a_data_file_named_by_the_code_is_part_of_its_stage(package_copy):
    package, digest = package_copy
    assert "data/ntu120_missing.txt" in relative_files(COMMANDS["convert-ntu"][0])
    before = digest("convert-ntu")
    edit(package / "data" / "ntu120_missing.txt", "S001C001P001R001A001\n")
    assert digest("convert-ntu") != before


def test_bone_and_motion_edits_rerun_only_their_modalities(package_copy):
    package, digest = package_copy
    before = {m: digest("derive", m) for m in MODALITIES}
    assert len(set(before.values())) == 4

    def changed_after_editing(rel):
        text = (package / rel).read_text()
        edit(package / rel)
        after = {m for m in MODALITIES if digest("derive", m) != before[m]}
        (package / rel).write_text(text)
        return after

    assert changed_after_editing("data/bone.py") == {"b", "bm"}
    assert changed_after_editing("data/motion.py") == {"jm", "bm"}
    assert changed_after_editing("data/modality.py") == set(MODALITIES)
    assert changed_after_editing("data/store.py") == set(MODALITIES)


def test_only_the_dispatchers_operator_imports_are_left_out(package_copy):
    """Were the store code to import the bone module, every modality would run it: then a bone edit
    must rerun all four."""
    package, digest = package_copy
    edit(package / "data" / "store.py", "\nfrom msg3d.data import bone  # noqa: F401\n")
    before = {m: digest("derive", m) for m in MODALITIES}
    edit(package / "data" / "bone.py")
    assert {m for m in MODALITIES if digest("derive", m) != before[m]} == set(MODALITIES)


def test_operator_table_matches_what_derive_modality_calls(monkeypatch):
    """MODALITY_OPERATOR_MODULES must say which operator modules each modality really runs."""
    called = set()
    for name in dir(modality_module):
        function = getattr(modality_module, name)
        origin = getattr(function, "__module__", None)
        if callable(function) and origin in provenance.MODALITY_OPERATOR_MODULES:
            def recorder(*args, _function=function, _origin=origin, **kwargs):
                called.add(_origin)
                return _function(*args, **kwargs)

            monkeypatch.setattr(modality_module, name, recorder)
    keypoint = np.random.default_rng(0).normal(size=(2, 6, 25, 3))
    for modality in MODALITIES:
        called.clear()
        derive_modality(keypoint, "nturgb+d", modality)
        expected = {m for m, runs in provenance.MODALITY_OPERATOR_MODULES.items() if modality in runs}
        assert called == expected, modality


@pytest.mark.parametrize(
    "command", [pytest.param(c, marks=pytest.mark.slow) if c in TORCH_COMMANDS else c for c in COMMANDS]
)
def test_static_closure_holds_every_module_a_stage_loads(command):
    """Import the stage's module in a fresh interpreter: every msg3d module it loads must be hashed
    (a dynamic import the walk cannot see would fail here), and only train and test load torch."""
    module = COMMANDS[command][0]
    probe = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert ("torch" in loaded) == (command in TORCH_COMMANDS), "only training and testing may import torch"
    hashed = set(provenance.code_files(module))
    missing = [m for m in loaded if m.split(".")[0] == "msg3d" and m not in provenance.NOT_STAGE_CODE
               and provenance.module_file(m) not in hashed]
    assert not missing, f"msg3d {command} loads {missing}, which its code digest does not cover"


def test_unknown_module_is_a_clear_error():
    with pytest.raises(ValueError, match=r"'msg3d.engine.nothing' is not a module of the msg3d package"):
        provenance.code_files("msg3d.engine.nothing")
