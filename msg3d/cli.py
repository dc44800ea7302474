"""`python -m msg3d <command>`: one subcommand per pipeline stage.

Each command lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``. Only the chosen command's module is imported, so a stage that does
not need torch (raw conversion, the table) does not pay for importing it.

Errors: a stage reports bad input or a failed file operation by raising ``ValueError`` or
``OSError`` with a message naming the file (and sample, line); ``main`` prints it as
``msg3d <command>: error: <message>`` and returns 2, for every command alike.
"""

import argparse
import importlib
import sys

# command name -> (module, one-line help)
COMMANDS = {
    "make-demo": ("msg3d.data.demo", "generate the embedded demo dataset of .skeleton files"),
    "make-kinetics-demo": ("msg3d.data.kinetics_demo", "generate a small synthetic Kinetics-skeleton release"),
    "convert-ntu": ("msg3d.data.ntu_raw", "convert raw NTU .skeleton files to a PYSKL annotation pickle"),
    "convert-kinetics": ("msg3d.data.kinetics_raw", "convert a Kinetics-skeleton release to a PYSKL annotation pickle"),
    "import-pyskl": ("msg3d.data.pyskl_io", "validate (and copy) a PYSKL annotation pickle"),
    "derive": ("msg3d.data.derive", "normalise and derive one modality (j, b, jm, bm) into a memory-mapped store"),
    "train": ("msg3d.engine.train", "train MS-G3D on one split of a derived store"),
    "test": ("msg3d.engine.test", "multi-clip test of a checkpoint on a split; writes scores and metrics"),
    "fuse": ("msg3d.report.fusion", "weighted score fusion of several streams"),
    "table": ("msg3d.report.table", "write the model-zoo table (markdown, HTML, CSV)"),
    "plot": ("msg3d.report.plots", "training curves, confusion matrix and per-class plots"),
    "predict": ("msg3d.deploy.predict", "top-k actions of raw skeletons, pickles or clips with trained models"),
    "export-onnx": ("msg3d.deploy.onnx_export", "export a checkpoint to a verified, self-contained ONNX model"),
    "launch": ("msg3d.launch", "run a command (train, test) on GPUs of its own: claimed, then torchrun for several"),
    "download": ("msg3d.download", "fetch a file (a released checkpoint) by URL: retried, checked against a SHA-256"),
}


def _top_level_parser():
    parser = argparse.ArgumentParser(
        prog="msg3d",
        description="MS-G3D skeleton action recognition pipeline (PYSKL-compatible).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n"
        + "\n".join(f"  {name:<{max(map(len, COMMANDS)) + 2}}{help_}" for name, (_, help_) in COMMANDS.items())
        + "\n\nRun `msg3d <command> --help` for a command's options.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("command", nargs="?", choices=sorted(COMMANDS), metavar="command")
    return parser


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        args, _ = _top_level_parser().parse_known_args(argv)
        if args.version:
            from msg3d import __version__

            print(__version__)
            return 0
        _top_level_parser().print_help(sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"msg3d {name}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (ValueError, OSError) as exc:
        print(f"msg3d {name}: error: {error_message(exc)}", file=sys.stderr)
        return 2


def error_message(exc):
    """The message of a stage's error, without the worker traceback that torch's DataLoader puts
    in front of an error raised in a worker process ("Caught ValueError in DataLoader worker ...")."""
    message = str(exc)
    if "\nOriginal Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        message = last.partition(": ")[2] or last
    return message
