"""What applying a checkpoint needs, and where each fact comes from.

A prediction runs a sample through the pipeline its model was tested with (REFERENCE §4.2, §6):
the feature convention's normalisation and the modality on the full sequence, ``num_clips``
uniform test clips of ``clip_len`` frames, then a network of the checkpoint's widths and scales
for its layout and class count. ``Applied`` holds these facts for one stream.

Where they come from:

* Our checkpoints (``msg3d train``) record them: ``meta['config']['hparams']`` (the model's widths
  and scales, ``clip_len``, ``test_clips``) and ``meta['config']['data']['meta']`` (the training
  store's meta: layout, modality, feature convention, class count, channels). An option that
  contradicts a recorded fact is refused, naming both. A store written before feature conventions
  were recorded was PYSKL's (``msg3d.data.features.get_features``).
* PYSKL's released checkpoints record none of them (their config is text, REFERENCE §3). Layout
  and modality must be given: PYSKL's configs set them per file, and a joint and a bone model have
  the same tensors. The rest default to PYSKL's (REFERENCE §2.2, §4.2: ``base_channels`` 96, 13
  GCN and 6 G3D scales, ``clip_len`` 100, 10 test clips, the ``pyskl`` convention) unless
  hyper-parameters say otherwise; the class count is the classifier's width.
* An exported ONNX model's JSON (``to_dict`` / ``from_dict``).

Before use, a checkpoint is checked against its facts (``check_state_dict``): the classifier's
width against the class count, the graph's joint count against the layout's, and the width of the
input normalisation (``data_bn``: persons x joints x channels) against what the input gives.
An input is checked against the layout (``check_input``), naming the input and the checkpoint.

Importing this module does not load torch (``read_applied`` does, to read a checkpoint).
"""

import argparse
import dataclasses
from dataclasses import dataclass

from msg3d.class_names import names_for_num_classes
from msg3d.data.derive import MAX_PERSON, STORE_CHANNELS, check_layout
from msg3d.data.features import FEATURES, PYSKL, get_features
from msg3d.data.modality import MODALITIES
from msg3d.engine.hparams import ModelHParams, load_hparams, resolve_hparams
from msg3d.layouts import LAYOUTS, get_layout

# where an Applied's facts were read
RECORDED = "msg3d"  # our checkpoint's training config
OPTIONS = "pyskl"  # a checkpoint without one (PYSKL's): options and PYSKL's defaults
EXPORTED = "onnx"  # an exported model's JSON

# the facts, as to_dict writes them (the others say where they were read)
FACTS = ("layout", "modality", "features", "num_classes", "model", "clip_len", "num_clips", "channels",
         "num_person")

HEAD_KEY = "cls_head.fc_cls.weight"
GRAPH_KEY = "backbone.A"
DATA_BN_KEY = "backbone.data_bn.weight"


@dataclass(frozen=True)
class Applied:
    """The facts one stream is applied with; validated on construction (ValueError naming ``source``).

    ``source``: the checkpoint or ONNX file (for messages); ``origin``: ``RECORDED``, ``OPTIONS``
    or ``EXPORTED``. ``model``: ``ModelHParams`` fields (``base_channels``, ``num_gcn_scales``,
    ``num_g3d_scales``). ``num_clips`` test clips of ``clip_len`` frames. The network's input is
    ``(N, num_person, T, V, channels)``.
    """

    source: str
    origin: str
    layout: str
    modality: str
    features: str
    num_classes: int
    model: dict
    clip_len: int
    num_clips: int
    channels: int = STORE_CHANNELS
    num_person: int = MAX_PERSON

    def __post_init__(self):
        try:
            get_layout(self.layout)
            get_features(self.features)
            if self.modality not in MODALITIES:
                raise ValueError(f"unknown modality {self.modality!r}; expected one of {', '.join(MODALITIES)}")
            for name in ("num_classes", "clip_len", "num_clips", "channels", "num_person"):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            if not isinstance(self.model, dict):
                raise ValueError(f"model must be a mapping of widths and scales, got {self.model!r}")
            object.__setattr__(self, "model", dataclasses.asdict(ModelHParams(**self.model)))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.source}: {exc}") from None

    @property
    def num_joints(self):
        return get_layout(self.layout).num_joints

    @property
    def class_names(self):
        """Names by label (NTU RGB+D 60/120, Kinetics-400: ``msg3d.class_names``), or None."""
        return names_for_num_classes(self.num_classes)

    def describe(self):
        """One line: where the facts come from and what they are."""
        where = {RECORDED: "recorded", OPTIONS: "options / PYSKL defaults", EXPORTED: "exported"}[self.origin]
        widths = ", ".join(f"{k} {v}" for k, v in self.model.items())
        return (f"{self.source}: layout {self.layout}, modality {self.modality}, features {self.features}, "
                f"{self.num_classes} classes, {widths}, {self.num_clips} clips x {self.clip_len} frames ({where})")

    def to_dict(self):
        """The facts as plain JSON types (``from_dict`` reads them back)."""
        return {name: getattr(self, name) for name in FACTS}

    @classmethod
    def from_dict(cls, facts, source, origin=EXPORTED):
        """An ``Applied`` from ``to_dict``'s mapping; ValueError naming ``source`` for a missing fact."""
        if not isinstance(facts, dict):
            raise ValueError(f"{source}: expected a JSON object of facts, got {type(facts).__name__}")
        missing = [name for name in FACTS if name not in facts]
        if missing:
            raise ValueError(f"{source}: lacks {', '.join(map(repr, missing))}")
        return cls(source=str(source), origin=origin, **{name: facts[name] for name in FACTS})


def _recorded_facts(config, source):
    """The facts our checkpoint's training config records (module docstring)."""
    try:
        hp = resolve_hparams(config["hparams"])
        store_meta = config["data"]["meta"]
    except KeyError as exc:
        raise ValueError(f"{source}: its recorded training config has no {exc.args[0]!r}") from None
    except ValueError as exc:
        raise ValueError(f"{source}: its recorded training config: {exc}") from None
    for key in ("layout", "modality", "num_classes"):
        if store_meta.get(key) is None:
            raise ValueError(f"{source}: its recorded training config has no data.meta.{key}")
    return {"layout": store_meta["layout"], "modality": store_meta["modality"],
            "features": get_features(store_meta.get("features")).name, "num_classes": store_meta["num_classes"],
            "model": dataclasses.asdict(hp.model), "clip_len": hp.clip_len, "num_clips": hp.test_clips,
            "channels": store_meta.get("channels", STORE_CHANNELS)}


def check_options(applied, given, hparams=None):
    """Refuse options that contradict recorded or exported facts.

    ``given``: ``{"layout": ..., "modality": ..., "features": ...}`` (None where not given).
    Hyper-parameters are refused outright: the model's widths are part of what is recorded.
    """
    if hparams is not None:
        raise ValueError(f"{applied.source} records how it is applied; hyper-parameters (--hparams) are only for "
                         "checkpoints without a recorded config (e.g. PYSKL's)")
    for key, value in given.items():
        recorded = getattr(applied, key)
        if value is not None and value != recorded:
            raise ValueError(f"{applied.source} records {key} {recorded!r}, but {key} {value!r} was given")


def _option_facts(state_dict, source, given, hparams):
    """The facts of a checkpoint that records none: options, PYSKL's defaults (module docstring)."""
    missing = [key for key in ("layout", "modality") if given[key] is None]
    if missing:
        known = {"layout": ", ".join(LAYOUTS), "modality": ", ".join(MODALITIES)}
        raise ValueError(
            f"{source} records no training config (PYSKL's checkpoints do not), so its "
            + " and ".join(f"{key} ({known[key]})" for key in missing)
            + " must be given: " + " ".join(f"--{key}" for key in missing))
    hp = resolve_hparams(hparams)  # None: PYSKL's recipe
    return {"layout": given["layout"], "modality": given["modality"], "features": given["features"] or PYSKL.name,
            "num_classes": int(state_dict[HEAD_KEY].shape[0]), "model": dataclasses.asdict(hp.model),
            "clip_len": hp.clip_len, "num_clips": hp.test_clips}


def read_applied(path, *, layout=None, modality=None, features=None, hparams=None, num_clips=None):
    """``(Applied, state_dict)`` of the checkpoint at ``path`` (ours or PYSKL's, module docstring).

    ``layout``, ``modality``, ``features`` (a convention name): needed for a checkpoint without a
    recorded config, refused when they contradict a recorded one. ``hparams`` (an ``HParams`` or
    a mapping of overrides): the model, ``clip_len`` and ``test_clips`` of a checkpoint without a
    recorded config (default PYSKL's). ``num_clips``: test clips instead of the recorded/default
    number. Raises ValueError (naming the file) for a missing or contradicting fact and for a
    checkpoint that does not fit its facts (``check_state_dict``); FileNotFoundError.
    """
    from msg3d.checkpoint import read_checkpoint

    if features is not None and features not in FEATURES:
        raise ValueError(f"unknown feature convention {features!r}; known: {', '.join(FEATURES)}")
    state_dict, others, source = read_checkpoint(path)
    if HEAD_KEY not in state_dict:
        raise ValueError(f"{source} has no {HEAD_KEY!r}: not an MS-G3D recognizer checkpoint")
    meta = others.get("meta")
    config = meta.get("config") if isinstance(meta, dict) else None
    given = {"layout": layout, "modality": modality, "features": features}
    if isinstance(config, dict):  # PYSKL keeps its config as text
        applied = Applied(source=source, origin=RECORDED, **_recorded_facts(config, source))
        check_options(applied, given, hparams)
    else:
        applied = Applied(source=source, origin=OPTIONS, **_option_facts(state_dict, source, given, hparams))
    if num_clips is not None:
        applied = dataclasses.replace(applied, num_clips=num_clips)
    check_state_dict(applied, state_dict)
    return applied, state_dict


def check_state_dict(applied, state_dict):
    """Refuse a state_dict whose classifier, graph or input normalisation does not fit ``applied``."""
    source = applied.source
    head = state_dict[HEAD_KEY]
    if head.shape[0] != applied.num_classes:
        raise ValueError(f"{source}: its classifier has {head.shape[0]} classes, but its facts say "
                         f"{applied.num_classes}")
    graph = state_dict.get(GRAPH_KEY)
    if graph is not None and graph.shape[0] != applied.num_joints:
        raise ValueError(f"{source} is for a {graph.shape[0]}-joint layout, but layout {applied.layout!r} has "
                         f"{applied.num_joints} joints")
    data_bn = state_dict.get(DATA_BN_KEY)
    width = applied.num_person * applied.num_joints * applied.channels
    if data_bn is not None and data_bn.shape[0] != width:
        raise ValueError(
            f"{source} expects {data_bn.shape[0]} = persons x joints x channels inputs, but layout "
            f"{applied.layout!r} gives {applied.num_person} x {applied.num_joints} x {applied.channels} = {width}")


def check_input(applied, ann, where):
    """Refuse an annotation whose keypoints do not fit ``applied``'s layout (joints, 2D or 3D).

    The ValueError names the input (``where``), the sample, the model file and both layouts'
    shapes (``msg3d.data.derive.check_layout``).
    """
    try:
        check_layout([ann], applied.layout)
    except ValueError as exc:
        raise ValueError(f"{where}: {applied.source} does not fit this input: {exc}") from None


def add_fact_arguments(parser, several=False):
    """The options that give a checkpoint without a recorded config its facts (``read_applied``).

    ``several``: ``--modality`` takes one modality per model (comma-separated) or one for all.
    """
    facts = parser.add_argument_group(
        "facts of a checkpoint without a recorded config (PYSKL's); a recorded fact must not be contradicted")
    facts.add_argument("--layout", choices=sorted(LAYOUTS), help="skeleton layout (required for PYSKL's checkpoints)")
    if several:
        facts.add_argument("--modality", type=_modalities, metavar="M[,M...]",
                           help=f"{', '.join(MODALITIES)}: one for all models or one per model (required for "
                                "PYSKL's checkpoints)")
    else:
        facts.add_argument("--modality", choices=MODALITIES, help="modality (required for PYSKL's checkpoints)")
    facts.add_argument("--features", choices=sorted(FEATURES), help="feature convention (default pyskl)")
    group = facts.add_mutually_exclusive_group()
    group.add_argument("--hparams", metavar="FILE",
                       help="model widths and scales, clip_len, test_clips (default PYSKL's: 96, 13 and 6, 100, 10)")
    group.add_argument("--hparams-json", metavar="JSON", help="the same as a JSON object")
    parser.add_argument("--num-clips", type=int, default=None,
                        help="test clips per sample (default: the recorded test_clips; PYSKL's 10)")


def _modalities(text):
    names = text.split(",")
    unknown = [name for name in names if name not in MODALITIES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown modality {', '.join(map(repr, unknown))}; expected "
                                         f"{', '.join(MODALITIES)}")
    return names


def fact_options(args):
    """``read_applied``'s keyword arguments from ``add_fact_arguments``' options."""
    hparams = load_hparams(args.hparams, args.hparams_json) if args.hparams or args.hparams_json else None
    return {"layout": args.layout, "modality": args.modality, "features": args.features, "hparams": hparams,
            "num_clips": args.num_clips}
