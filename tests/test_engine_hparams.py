"""Hyper-parameters: PYSKL defaults, merging, validation, file/JSON loading; the run-folder decision
(resume by default, refuse a changed config, --force, --resume, --auto-resume) and lock."""

import dataclasses
import json
import os
import re
import socket

import pytest
import torch

from msg3d.engine.hparams import HParams, ModelHParams, hparams_help, load_hparams, resolve_hparams
from msg3d.engine.run_dir import RunPlan, config_differences, lock_run_dir, prepare_run_dir


def test_defaults_are_pyskl_recipe():
    hp = resolve_hparams().to_dict()
    assert resolve_hparams() == HParams()
    assert {k: hp[k] for k in ("epochs", "repeat", "batch_size", "lr", "lr_batch", "momentum", "nesterov",
                               "weight_decay", "clip_len", "val_clips", "num_workers")} == {
        "epochs": 16, "repeat": 5, "batch_size": 16, "lr": 0.1, "lr_batch": 128, "momentum": 0.9,
        "nesterov": True, "weight_decay": 5e-4, "clip_len": 100, "val_clips": 1, "num_workers": 2}
    assert hp["model"] == {"base_channels": 96, "num_gcn_scales": 13, "num_g3d_scales": 6}


def test_model_dict_is_merged_over_defaults():
    hp = resolve_hparams({"epochs": 2, "model": {"base_channels": 12}})
    assert hp.epochs == 2
    assert hp.model == ModelHParams(base_channels=12, num_gcn_scales=13, num_g3d_scales=6)
    assert HParams().model.base_channels == 96  # defaults untouched


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epoch": 2}, "unknown hyper-parameter 'epoch'"),
        ({"model": {"channels": 8}}, "unknown hyper-parameter 'model.channels'"),
        ({"epochs": 2.5}, "'epochs' must be an integer"),
        ({"batch_size": True}, "'batch_size' must be an integer"),
        ({"batch_size": 0}, "'batch_size' must be >= 1"),
        ({"lr": 0}, "'lr' must be > 0"),
        ({"lr": "fast"}, "'lr' must be a number"),
        ({"nesterov": 1}, "'nesterov' must be true or false"),
        ({"momentum": 1.0}, "'momentum' must be < 1"),
        ({"momentum": 0.0}, "'nesterov' needs a momentum > 0"),
        ({"model": 3}, "'model' must be a mapping"),
        ({"amp": "fp16"}, "'amp' must be one of none, bf16, got 'fp16'"),
        ({"compile": "yes"}, "'compile' must be true or false"),
        ({"tensorboard": 1}, "'tensorboard' must be true or false"),
    ],
)
def test_bad_hparams_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve_hparams(overrides)


def test_load_from_yaml_json_file_and_string(tmp_path):
    yaml_file = tmp_path / "hp.yaml"
    yaml_file.write_text("epochs: 3\nlr: 1e-3\nmodel:\n  num_gcn_scales: 3\n")  # PyYAML reads 1e-3 as text
    hp = load_hparams(yaml_file)
    assert (hp.epochs, hp.lr, hp.model.num_gcn_scales) == (3, 0.001, 3)
    json_file = tmp_path / "hp.json"
    json_file.write_text(json.dumps({"batch_size": 8}))
    assert load_hparams(json_file).batch_size == 8
    assert load_hparams(json_text='{"repeat": 1}').repeat == 1
    assert load_hparams() == HParams()
    (tmp_path / "empty.yaml").write_text("")
    assert load_hparams(tmp_path / "empty.yaml") == HParams()


def test_load_errors_name_the_source(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match=r"unknown hyper-parameter 'epochz'.* in .*bad\.yaml"):
        load_hparams(bad)
    with pytest.raises(ValueError, match="cannot parse --hparams-json"):
        load_hparams(json_text="{epochs: 3")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_hparams(tmp_path / "missing.yaml")
    for name, text in (("list.yaml", "- 1\n- 2\n"), ("empty_list.yaml", "[]\n"), ("zero.yaml", "0\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match="must be a mapping"):
            load_hparams(tmp_path / name)


def test_linear_scaling_rule():
    hp = resolve_hparams()
    assert hp.scaled_lr(1) == pytest.approx(0.0125, rel=1e-15)  # PYSKL README: 1 GPU x 16 -> 0.0125
    assert hp.scaled_lr(8) == pytest.approx(0.1, rel=1e-15)
    assert resolve_hparams({"batch_size": 8, "lr": 0.2, "lr_batch": 64}).scaled_lr(2) == pytest.approx(0.05)


def _config(**changes):
    config = {"hparams": resolve_hparams().to_dict(), "seed": 7, "data": {"store": "/s", "split": "xsub"}}
    config.update(changes)
    return config


def _write_latest(path, config):
    """A latest.pth recording ``config`` as the saver does (meta.config), without weights."""
    torch.save({"meta": {"config": config}, "state_dict": {}}, path)


def test_config_differences_list_dotted_keys():
    old = _config()
    new = _config(hparams=resolve_hparams({"epochs": 3, "model": {"base_channels": 12}}).to_dict())
    assert config_differences(old, new) == [
        "hparams.epochs: 16 -> 3",
        "hparams.model.base_channels: 96 -> 12",
    ]


def _decide(out, config, **mode):
    return prepare_run_dir(out, config, seed_given=mode.pop("seed_given", False), **mode)


def test_a_new_folder_starts_a_run_and_replaces_nothing(tmp_path, capsys):
    assert _decide(tmp_path / "new", _config()) == RunPlan(_config(), None, False)
    assert capsys.readouterr().err == ""


def test_run_dir_refuses_a_changed_config_unless_forced(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(_config()))
    changed = _config(hparams=resolve_hparams({"epochs": 3}).to_dict())
    with pytest.raises(ValueError, match=r"different config.*:\n  hparams.epochs: 16 -> 3\n.*--force"):
        _decide(tmp_path, changed, seed_given=True)
    assert _decide(tmp_path, changed, seed_given=True, force=True) == RunPlan(changed, None, True)
    assert f"--force: starting a new run in {tmp_path}; the files there are replaced once it has written its first " \
           "checkpoint" in capsys.readouterr().err
    # the same config without a checkpoint (a run killed before its first one) starts again
    assert _decide(tmp_path, _config(), seed_given=True) == RunPlan(_config(), None, True)
    assert f"{tmp_path} has no checkpoint of its run yet" in capsys.readouterr().err


def test_run_dir_reuses_recorded_seed_without_seed_flag(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config(seed=1234)))
    plan = _decide(tmp_path, _config(seed=99))
    assert plan.config["seed"] == 1234 and plan.resume_from is None
    with pytest.raises(ValueError, match="seed: 1234 -> 99"):
        _decide(tmp_path, _config(seed=99), seed_given=True)
    # without config.json, latest.pth's recorded seed is the run's
    (tmp_path / "config.json").unlink()
    _write_latest(tmp_path / "latest.pth", _config(seed=1234))
    assert _decide(tmp_path, _config(seed=99)) == RunPlan(_config(seed=1234), tmp_path / "latest.pth", False)


def test_rerunning_resumes_by_default(tmp_path, capsys):
    latest = tmp_path / "latest.pth"
    (tmp_path / "config.json").write_text(json.dumps(_config()))
    _write_latest(latest, _config())
    assert _decide(tmp_path, _config()) == RunPlan(_config(), latest, False)
    assert capsys.readouterr().err == (f"msg3d train: {latest} has the same config; resuming "
                                       "(--force starts a new run)\n")
    changed = _config(hparams=resolve_hparams({"lr": 0.2}).to_dict())
    with pytest.raises(ValueError) as info:
        _decide(tmp_path, changed)
    assert str(info.value) == (f"{tmp_path} holds a run with a different config ({tmp_path / 'config.json'}):\n"
                               "  hparams.lr: 0.1 -> 0.2\n"
                               "rerun with the same settings to resume it, use another --out, or add --force to "
                               "start a new run (the folder's files are replaced once it has written its first "
                               "checkpoint)")
    assert _decide(tmp_path, changed, force=True) == RunPlan(changed, None, True)
    # how a run is executed and logged, and where the store lies, do not change its results: resumed
    executed = _config(hparams=resolve_hparams({"num_workers": 8, "log_interval": 10, "checkpoint_interval": 50,
                                                "tensorboard": True}).to_dict(),
                       data={"store": "/elsewhere", "split": "xsub"})
    assert _decide(tmp_path, executed) == RunPlan(executed, latest, False)
    # amp and compile change the arithmetic: another run
    for key, value in (("amp", "bf16"), ("compile", True)):
        with pytest.raises(ValueError, match=f"hparams.{key}: "):
            _decide(tmp_path, _config(hparams=resolve_hparams({key: value}).to_dict()))


def test_resume_needs_checkpoint_and_same_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(_config()))
    with pytest.raises(FileNotFoundError, match="no checkpoint .*latest.pth"):
        _decide(tmp_path, _config(), resume=True)
    _write_latest(tmp_path / "latest.pth", _config())
    assert _decide(tmp_path, _config(), resume=True).resume_from == tmp_path / "latest.pth"
    with pytest.raises(ValueError, match=r"(?s)^--resume: .* holds a run with a different config.*hparams.lr: 0.1 -> 0.2"):
        _decide(tmp_path, _config(hparams=resolve_hparams({"lr": 0.2}).to_dict()), resume=True)


def test_the_modes_exclude_each_other(tmp_path):
    for modes in ({"resume": True, "force": True}, {"auto_resume": True, "force": True},
                  {"resume": True, "auto_resume": True}):
        with pytest.raises(ValueError, match="--resume, --auto-resume and --force exclude each other"):
            _decide(tmp_path, _config(), **modes)


def test_auto_resume_resumes_only_a_checkpoint_with_the_same_config(tmp_path, capsys):
    latest, config_path = tmp_path / "latest.pth", tmp_path / "config.json"

    def decide(config):
        return _decide(tmp_path, config, auto_resume=True)

    config_path.write_text(json.dumps(_config()))
    assert decide(_config()) == RunPlan(_config(), None, True)
    assert f"--auto-resume: no checkpoint {latest}; starting fresh" in capsys.readouterr().err
    _write_latest(latest, _config())
    assert decide(_config()) == RunPlan(_config(), latest, False)
    assert f"--auto-resume: {latest} has the same config; resuming\n" in capsys.readouterr().err
    # the recorded seed is reused without --seed, as for --resume
    assert decide(_config(seed=99)) == RunPlan(_config(), latest, False)
    changed = _config(hparams=resolve_hparams({"lr": 0.05, "epochs": 3}).to_dict())
    assert decide(changed) == RunPlan(changed, None, True)
    assert (f"--auto-resume: {tmp_path} holds a run with a different config ({config_path}): hparams.epochs: 16 -> 3; "
            f"hparams.lr: 0.1 -> 0.05; starting fresh") in capsys.readouterr().err
    # an unreadable config.json: latest.pth's own record decides (config.json is rebuilt on resume)
    config_path.write_text("{")
    assert decide(_config()) == RunPlan(_config(), latest, False)
    assert decide(changed) == RunPlan(changed, None, True)
    assert f"{latest} records another config (its meta.config) than this run: hparams.epochs: 16 -> 3" in (
        capsys.readouterr().err)
    latest.unlink()
    assert decide(_config()) == RunPlan(_config(), None, True)
    assert f"--auto-resume: {config_path} is not valid JSON" in capsys.readouterr().err
    with pytest.raises(ValueError, match=rf"^{re.escape(str(config_path))} is not valid JSON .*\nadd --force"):
        _decide(tmp_path, _config())


def test_the_store_path_is_not_compared_but_the_data_is():
    meta = {"layout": "nturgb+d", "modality": "j", "num_samples": 40, "source": {"name": "a.pkl", "sha256": "ab"}}
    data = {"store": "/home/a/project/store", "meta": meta, "split": "xsub", "num_train_samples": 30}
    moved = dict(data, store="/scratch/b/copy/store")
    assert config_differences(_config(data=data), _config(data=moved)) == []
    other_source = dict(moved, meta=dict(meta, source={"name": "a.pkl", "sha256": "cd"}))
    assert config_differences(_config(data=data), _config(data=other_source)) == [
        "data.meta.source.sha256: 'ab' -> 'cd'"]
    fewer = dict(moved, num_train_samples=29, split="xview")
    assert config_differences(_config(data=data), _config(data=fewer)) == [
        "data.num_train_samples: 30 -> 29", "data.split: 'xsub' -> 'xview'"]


def test_a_latest_pth_of_another_run_is_not_resumed(tmp_path, capsys):
    """config.json says lr 0.1, latest.pth was trained with lr 0.2: two runs wrote the folder (or a
    new run crashed between writing its first latest.pth and its config.json)."""
    latest, config_path = tmp_path / "latest.pth", tmp_path / "config.json"
    config_path.write_text(json.dumps(_config()))
    _write_latest(latest, _config(hparams=resolve_hparams({"lr": 0.2}).to_dict()))
    mixed = f"{latest} records another config (its meta.config) than {config_path}"
    for mode in ({}, {"resume": True}):
        prefix = "--resume: " if mode else ""
        with pytest.raises(ValueError,
                           match=rf"(?s)^{prefix}{re.escape(mixed)}:\n  hparams.lr: 0.2 -> 0.1\n.*--force"):
            _decide(tmp_path, _config(), **mode)
    assert _decide(tmp_path, _config(), force=True) == RunPlan(_config(), None, True)
    assert _decide(tmp_path, _config(), auto_resume=True) == RunPlan(_config(), None, True)
    assert f"--auto-resume: {mixed}: hparams.lr: 0.2 -> 0.1; starting fresh" in capsys.readouterr().err
    # a latest.pth without a recorded config, or no checkpoint at all, cannot be continued either
    torch.save({"state_dict": {}}, latest)
    with pytest.raises(ValueError, match=rf"{re.escape(str(latest))} records no run config \(meta.config\)"):
        _decide(tmp_path, _config())
    latest.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=rf"^--resume: {re.escape(str(latest))}: not a loadable PyTorch checkpoint"):
        _decide(tmp_path, _config(), resume=True)
    assert _decide(tmp_path, _config(), auto_resume=True) == RunPlan(_config(), None, True)
    assert f"--auto-resume: {latest}: not a loadable PyTorch checkpoint" in capsys.readouterr().err


def test_the_run_lock_admits_one_holder_at_a_time(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    holder = f"pid {os.getpid()} on {socket.gethostname()}"
    with lock_run_dir(out):
        assert (out / ".lock").read_text() == holder + "\n"
        with pytest.raises(OSError, match=f"^{re.escape(f'{out} is in use by another msg3d train ({holder})')}$"):
            with lock_run_dir(out):
                pass
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]  # the lock file goes with its holder
    with lock_run_dir(out):  # released
        pass


def test_a_refused_start_leaves_no_folder_it_created(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        with lock_run_dir(out):
            _decide(out, _config(), resume=True)
    assert not out.exists()


def test_help_table_lists_every_hyper_parameter_with_its_default():
    table = hparams_help().splitlines()
    names = [line.split()[0] for line in table]
    assert names == [*(k for k in HParams().to_dict() if k != "model"), *(f"model.{k}" for k in HParams().to_dict()["model"])]
    assert any(line.split()[:2] == ["lr", "0.1"] and line.endswith("(> 0)") for line in table)


def test_constructed_hparams_are_validated_too():
    assert HParams(model={"base_channels": 8}).model == ModelHParams(base_channels=8)
    with pytest.raises(ValueError, match="'model.base_channels' must be >= 6"):
        HParams(model={"base_channels": 0})
    with pytest.raises(ValueError, match="'momentum' must be < 1"):
        HParams(momentum=1)
    assert any(line.split()[0] == "momentum" and line.endswith("(>= 0, < 1)") for line in hparams_help().splitlines())


def test_smallest_model_width_is_the_one_the_network_can_build():
    from msg3d.models import MIN_BASE_CHANNELS

    assert dataclasses.fields(ModelHParams)[0].metadata["minimum"] == MIN_BASE_CHANNELS
    with pytest.raises(ValueError, match=f"'model.base_channels' must be >= {MIN_BASE_CHANNELS}"):
        resolve_hparams({"model": {"base_channels": MIN_BASE_CHANNELS - 1}})


def test_amp_modes_are_the_devices_plus_float32():
    from msg3d.engine import device
    from msg3d.engine.hparams import AMP_MODES

    assert AMP_MODES == ("none", *device.AMP_MODES)
    assert (HParams().amp, HParams().compile, HParams().tensorboard) == ("none", False, False)
