"""Training hyper-parameters: PYSKL's MS-G3D recipe as defaults (REFERENCE §5), defined once here.

``HParams`` is the one source of every name, default, bound and description: ``msg3d train``
and ``msg3d test`` read it, ``msg3d train --help`` prints its table (``hparams_help``), and the
workflow resolves its ``train:`` config through it, so a bad value fails when Snakemake parses
the config. A run's hyper-parameters are the defaults with a user's mapping (YAML/JSON file,
JSON string or the workflow config) merged over them, ``model`` key by key. Unknown keys, wrong
types and out-of-range values are errors that name the key, so a typo never silently trains with
a default.

Keys beyond PYSKL's recipe: ``log_interval`` (iterations between ``log.jsonl`` lines and progress
lines; PYSKL logs every 100) and ``checkpoint_interval`` (also write ``latest.pth`` every that many
iterations; 0 = only at the end of each epoch, as PYSKL); ``test_clips`` (PYSKL's 10-clip test,
recorded so that a checkpoint says how it is meant to be applied); ``lr_schedule``/``lr_steps``/
``lr_gamma`` (MS-G3D's multi-step decay beside PYSKL's cosine); ``amp``, ``compile`` and
``tensorboard``, how a run is executed and logged (``msg3d train --amp/--compile/--tensorboard``
override them; ``msg3d test`` applies a checkpoint's ``amp`` and ``num_workers``).

Recipes (``RECIPES``): named sets of overrides that a user's mapping is merged over. ``pyskl`` is
the defaults; ``msg3d-kinetics`` is MS-G3D's Kinetics-Skeleton recipe (REFERENCE §14: all 300
frames in one clip, SGD nesterov, lr 0.1 per 128 samples, weight decay 3e-4, x0.1 at epochs 45
and 55 of 65, 8 GCN and 8 G3D scales). A clip of 300 frames from a 300-frame sequence is every
frame in order under PYSKL's UniformSample (train and test alike), so "no resampling" needs no
mode of its own.
"""

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml


LR_SCHEDULES = ("cosine", "multistep")
# "none" and msg3d.engine.device.AMP_MODES (not imported: device loads torch; a test keeps them equal)
AMP_MODES = ("none", "bf16")


def _param(default, help, minimum=None, above=False, below=None, choices=None):
    """A field with its description and bounds: ``minimum`` (excluded itself when ``above``) and
    ``below``, an excluded maximum; ``choices`` for a text value."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "above": above, "below": below,
                                            "choices": choices})


@dataclass(frozen=True)
class ModelHParams:
    """Width and depth of MS-G3D (PYSKL's defaults)."""

    # 6 = msg3d.models.MIN_BASE_CHANNELS (not imported: it would load torch where the workflow parses
    # its config); tests/test_engine_hparams.py keeps the two equal
    base_channels: int = _param(96, "channels of the first block (doubled twice across the network)", 6)
    num_gcn_scales: int = _param(13, "hop scales of the multi-scale GCN", 1)
    num_g3d_scales: int = _param(6, "hop scales of the G3D (space-time window) graph convolution", 1)

    def __post_init__(self):
        _validate(self, "model.")


@dataclass(frozen=True)
class HParams:
    """PYSKL's MS-G3D recipe for 8 GPUs x 16 samples; validated on construction (ValueError)."""

    epochs: int = _param(16, "epochs (each is `repeat` passes over the training split)", 1)
    repeat: int = _param(5, "passes over the training split per epoch (PYSKL's RepeatDataset times)", 1)
    batch_size: int = _param(16, "samples per batch and process (GPU)", 1)
    lr: float = _param(0.1, "initial learning rate for a global batch of lr_batch", 0.0, above=True)
    lr_batch: int = _param(128, "global batch size that lr is given for (scaled linearly to the real one)", 1)
    momentum: float = _param(0.9, "SGD momentum", 0.0, below=1.0)
    nesterov: bool = _param(True, "Nesterov momentum")
    weight_decay: float = _param(5e-4, "L2 weight decay on all parameters", 0.0)
    lr_schedule: str = _param("cosine", "cosine: per iteration to 0 (PYSKL); multistep: x lr_gamma from each "
                              "epoch of lr_steps on (MS-G3D)", choices=LR_SCHEDULES)
    lr_steps: tuple = _param((), "multistep: 0-based epochs from which the rate is multiplied by lr_gamma "
                             "(MS-G3D's `step`, e.g. [45, 55])")
    lr_gamma: float = _param(0.1, "multistep: factor applied at each of lr_steps", 0.0, above=True)
    clip_len: int = _param(100, "frames per sampled clip (UniformSample clip_len)", 1)
    val_clips: int = _param(1, "clips per sample for the per-epoch validation", 1)
    test_clips: int = _param(10, "clips per sample at test (PYSKL's 10-clip test; recorded in checkpoints)", 1)
    num_workers: int = _param(2, "data-loader worker processes per process (the workflow's tests use it too)", 0)
    log_interval: int = _param(100, "iterations between log.jsonl lines and progress lines", 1)
    checkpoint_interval: int = _param(0, "also write latest.pth every this many iterations (0: epoch ends only)", 0)
    amp: str = _param("none", "autocast of training, validation and `msg3d test` (none: float32, as PYSKL)",
                      choices=AMP_MODES)
    compile: bool = _param(False, "torch.compile the model for training (msg3d train --compile)")
    tensorboard: bool = _param(False, "also write TensorBoard scalars to RUN_DIR/tensorboard (needs the "
                               "tensorboard extra)")
    model: ModelHParams = field(default_factory=ModelHParams, metadata={"help": "model width and depth"})

    def __post_init__(self):
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelHParams(**self.model))
        if not isinstance(self.model, ModelHParams):
            raise ValueError(f"hyper-parameter 'model' must be a mapping, got {self.model!r}")
        _validate(self, "")
        if self.nesterov and self.momentum == 0:
            raise ValueError("hyper-parameter 'nesterov' needs a momentum > 0")
        self._check_steps()

    def _check_steps(self):
        steps = self.lr_steps
        if isinstance(steps, (str, bytes)) or not isinstance(steps, (list, tuple)):
            raise ValueError(f"hyper-parameter 'lr_steps' must be a list of epochs, got {steps!r}")
        for step in steps:
            _coerce("lr_steps", step, int)
        object.__setattr__(self, "lr_steps", tuple(steps))
        if steps and self.lr_schedule != "multistep":
            raise ValueError("hyper-parameter 'lr_steps' is used by lr_schedule 'multistep' only "
                             f"(lr_schedule is {self.lr_schedule!r})")
        if list(steps) != sorted(set(steps)) or any(not 1 <= step < self.epochs for step in steps):
            raise ValueError(f"hyper-parameter 'lr_steps' must be increasing epochs in [1, epochs={self.epochs}), "
                             f"got {list(steps)}")

    def to_dict(self):
        """Plain nested dict of JSON types (what config.json and checkpoints record: lists, not tuples)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def scaled_lr(self, world_size):
        """The learning rate actually used: linear scaling to the global batch (PYSKL README)."""
        return self.lr * self.batch_size * world_size / self.lr_batch


def _coerce(name, value, kind):
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"hyper-parameter {name!r} must be text, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"hyper-parameter {name!r} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"hyper-parameter {name!r} must be an integer, got {value!r}")
        return value
    # PyYAML reads "1e-3" (no dot) as a string; accept any number spelled as text.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"hyper-parameter {name!r} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"hyper-parameter {name!r} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"hyper-parameter {name!r} must be finite, got {value!r}")
    return value


def _validate(params, prefix):
    """Coerce and bound-check every scalar field of a frozen dataclass (in place, via __setattr__)."""
    kinds = {"int": int, "float": float, "bool": bool, "str": str}
    for f in dataclasses.fields(params):
        kind = kinds.get(f.type if isinstance(f.type, str) else f.type.__name__)
        if kind is None:
            continue
        name = prefix + f.name
        value = _coerce(name, getattr(params, f.name), kind)
        choices = f.metadata["choices"]
        if choices is not None and value not in choices:
            raise ValueError(f"hyper-parameter {name!r} must be one of {', '.join(choices)}, got {value!r}")
        minimum, above, below = f.metadata["minimum"], f.metadata["above"], f.metadata["below"]
        if minimum is not None and (value < minimum or (above and value == minimum)):
            raise ValueError(f"hyper-parameter {name!r} must be {'>' if above else '>='} {minimum}, got {value!r}")
        if below is not None and value >= below:
            raise ValueError(f"hyper-parameter {name!r} must be < {below}, got {value!r}")
        object.__setattr__(params, f.name, value)


def _check_known(cls, keys, prefix=""):
    """ValueError naming the first of ``keys`` that is no field of ``cls``."""
    names = sorted(prefix + f.name for f in dataclasses.fields(cls))
    for key in keys:
        if prefix + key not in names:
            raise ValueError(f"unknown hyper-parameter {prefix + key!r}; known: {', '.join(names)}")


RECIPES = {
    "pyskl": {},
    "msg3d-kinetics": {
        "epochs": 65, "repeat": 1, "lr": 0.1, "lr_batch": 128, "momentum": 0.9, "nesterov": True,
        "weight_decay": 3e-4, "lr_schedule": "multistep", "lr_steps": [45, 55], "lr_gamma": 0.1,
        "clip_len": 300, "val_clips": 1, "test_clips": 1,
        "model": {"num_gcn_scales": 8, "num_g3d_scales": 8},
    },
}


def _check_mapping(overrides, where):
    if not isinstance(overrides, dict):
        raise ValueError(f"{where} must be a mapping of names to values, got {type(overrides).__name__}")
    _check_known(HParams, overrides)
    model = overrides.get("model", {})
    if not isinstance(model, dict):
        raise ValueError(f"hyper-parameter 'model' must be a mapping, got {model!r}")
    _check_known(ModelHParams, model, "model.")
    return model


def resolve_hparams(overrides=None, recipe="pyskl"):
    """``HParams`` from a mapping of overrides (None: none) merged over the named recipe
    (``RECIPES``; ``model`` key by key); an ``HParams`` is returned as is."""
    if isinstance(overrides, HParams):
        return overrides
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
    overrides = {} if overrides is None else overrides
    model = _check_mapping(overrides, "hyper-parameters")
    base = RECIPES[recipe]
    return HParams(**{**base, **overrides, "model": ModelHParams(**{**base.get("model", {}), **model})})


def load_hparams(path=None, json_text=None, recipe="pyskl"):
    """Read user hyper-parameters from a YAML/JSON file or a JSON string and resolve them over
    ``recipe``."""
    if path is not None and json_text is not None:
        raise ValueError("give either a hyper-parameter file or a JSON string, not both")
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"hyper-parameter file not found: {path}")
        try:
            overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"cannot parse hyper-parameter file {path}: {exc}") from None
        if overrides is None:  # an empty file
            overrides = {}
        where = f" in {path}"
    elif json_text is not None:
        try:
            overrides = json.loads(json_text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"cannot parse --hparams-json {json_text!r}: {exc}") from None
        where = " in --hparams-json"
    else:
        return resolve_hparams(None, recipe)
    try:
        return resolve_hparams(overrides, recipe)
    except ValueError as exc:
        raise ValueError(f"{exc}{where}") from None


def hparams_help():
    """The hyper-parameter table (name, default, bound, description) for ``msg3d train --help``."""
    lines = []
    for cls, prefix in ((HParams, ""), (ModelHParams, "model.")):
        for f in dataclasses.fields(cls):
            if f.name == "model":
                continue
            minimum, above, below = f.metadata["minimum"], f.metadata["above"], f.metadata["below"]
            bounds = [f"{'>' if above else '>='} {minimum:g}"] if minimum is not None else []
            bounds += [f"< {below:g}"] if below is not None else []
            bounds += [" | ".join(f.metadata["choices"])] if f.metadata["choices"] else []
            bound = f" ({', '.join(bounds)})" if bounds else ""
            lines.append(f"  {prefix + f.name:<24}{f.default!r:<10}{f.metadata['help']}{bound}")
    return "\n".join(lines)
