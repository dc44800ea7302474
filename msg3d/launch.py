"""``msg3d launch --gpus N COMMAND ...``: run a msg3d command on N GPUs of its own.

Snakemake counts GPUs (``resources: gpu``) but does not say which card a job gets, and does not
set ``CUDA_VISIBLE_DEVICES`` (``../shared/SNAKEMAKE.md`` §1.3). So the workflow starts its train
and test jobs through this command, which

1. claims N of the GPUs this process may use (``visible_gpus``): one lock file per GPU, held with
   ``flock`` for the lifetime of the job, so two jobs never share a card and a job that dies, even
   by SIGKILL, frees its cards (the kernel drops the lock with the last open descriptor);
2. sets ``CUDA_VISIBLE_DEVICES`` to the claimed GPUs;
3. replaces itself (``exec``, keeping the locks) with ``python -m msg3d COMMAND ...`` for one GPU
   or none, or with ``torchrun --standalone --nproc-per-node N -m msg3d train ...`` (DDP on one
   node, one process per GPU) for several.

On a machine that shows no GPU at all, N GPUs asked for mean N processes on the CPU (one GPU job
slot of a CPU-only machine: the command's device defaults to the CPU there; a train job granted N
fake or absent GPUs runs DDP with N CPU processes), so the workflow's commands are the same on
every machine.

A claim takes all N GPUs at once or none (never holds some while waiting for the rest, so two jobs
cannot deadlock each other), waiting while fewer are free. ``--gpus 0`` claims nothing and runs
the command as it is (CPU runs). Lock files live in ``$MSG3D_GPU_LOCK_DIR`` (default: a folder of
the user's own in the temp dir), in a subfolder per Slurm allocation (``SLURM_JOB_ID``), because
Slurm numbers each allocation's GPUs from 0: ids are only comparable within one allocation.
Nothing here imports torch (the workflow calls ``visible_gpus`` when it reads the config).
"""

import errno
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOCK_DIR_ENV = "MSG3D_GPU_LOCK_DIR"
# Commands that run on several GPUs (DDP under torchrun); the others use one.
MULTI_GPU_COMMANDS = ("train",)
NO_DEVICE_VALUES = ("", "-1", "NoDevFiles")  # CUDA_VISIBLE_DEVICES values that hide every GPU


def visible_gpus(environ=None, query=None):
    """The ids of the GPUs this process may use, in order (strings: indices or GPU UUIDs).

    ``CUDA_VISIBLE_DEVICES`` when set (by Slurm, by the user, or by a test that fakes devices on a
    CPU machine); an empty value, ``-1`` or Slurm's ``NoDevFiles`` mean none. Otherwise the
    indices ``nvidia-smi`` lists (``query``: a function returning them, for tests), or none when
    there is no ``nvidia-smi`` or it fails (a machine without an NVIDIA driver).
    """
    environ = os.environ if environ is None else environ
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        listed = listed.strip()
        return [] if listed in NO_DEVICE_VALUES else [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    return (query or _nvidia_smi_indices)()


def _nvidia_smi_indices():
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.splitlines() if line.strip()]


def lock_dir(environ=None):
    """The folder of the GPU lock files: ``$MSG3D_GPU_LOCK_DIR`` or ``<tmp>/msg3d-gpu-locks-<uid>``,
    then ``slurm-<SLURM_JOB_ID>`` inside a Slurm allocation, else ``local``."""
    environ = os.environ if environ is None else environ
    base = environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"msg3d-gpu-locks-{os.getuid()}"
    job = environ.get("SLURM_JOB_ID")
    return Path(base) / (f"slurm-{job}" if job else "local")


def _lock_path(directory, gpu):
    return Path(directory) / f"gpu-{gpu.replace('/', '_')}.lock"


def _try_lock(path):
    """An open descriptor holding the exclusive flock of ``path``, or None when another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return None
        raise
    # who holds it, for the waiting message of the next job
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _holder(path):
    try:
        return Path(path).read_text().strip() or "?"
    except OSError:
        return "?"


def try_claim(count, gpus, directory):
    """Claim ``count`` of ``gpus`` now, all or none: ``{gpu: descriptor}`` (the flocks, held until the
    descriptors close), or None when fewer than ``count`` are free. ValueError when ``count`` is
    more than ``len(gpus)``."""
    if count > len(gpus):
        raise ValueError(f"{count} GPU(s) requested but only {len(gpus)} visible "
                         f"(CUDA_VISIBLE_DEVICES / nvidia-smi: {', '.join(gpus) or 'none'})")
    Path(directory).mkdir(parents=True, exist_ok=True, mode=0o700)
    held = {}
    for gpu in gpus:
        if len(held) == count:
            break
        fd = _try_lock(_lock_path(directory, gpu))
        if fd is not None:
            held[gpu] = fd
    if len(held) < count:
        release(held)
        return None
    return held


def release(held):
    for fd in held.values():
        os.close(fd)


def claim(count, gpus, directory, *, poll_seconds=2.0, timeout_seconds=None, say=None):
    """``try_claim`` until it succeeds; ``say`` (a function of one message) hears once that the job
    waits and for whom. TimeoutError after ``timeout_seconds`` (None: wait for ever, as a Snakemake
    job waits for its resources)."""
    start = time.monotonic()
    announced = False
    while True:
        held = try_claim(count, gpus, directory)
        if held is not None:
            return held
        if timeout_seconds is not None and time.monotonic() - start >= timeout_seconds:
            raise TimeoutError(f"no {count} free GPU(s) among {', '.join(gpus)} after {timeout_seconds:g} s")
        if not announced and say is not None:
            holders = ", ".join(f"GPU {gpu}: pid {_holder(_lock_path(directory, gpu))}" for gpu in gpus)
            say(f"waiting for {count} free GPU(s) ({holders}; lock files in {directory})")
            announced = True
        time.sleep(poll_seconds)


def command_line(command, arguments, gpus):
    """The argv that runs ``msg3d COMMAND ARGUMENTS`` on ``gpus`` GPUs: torchrun with one process per
    GPU for several (``torch.distributed.run``, the module behind the ``torchrun`` script, started
    with this Python so that it is the same environment), else this Python. ValueError for several
    GPUs and a command that does not run DDP."""
    if gpus > 1:
        if command not in MULTI_GPU_COMMANDS:
            raise ValueError(f"msg3d {command} runs on one GPU; only {', '.join(MULTI_GPU_COMMANDS)} uses several")
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus),
                "-m", "msg3d", command, *arguments]
    return [sys.executable, "-m", "msg3d", command, *arguments]


def add_arguments(parser):
    parser.add_argument("--gpus", type=int, required=True,
                        help="GPUs to claim (0: none, run on the CPU as the command decides; 2 or more: torchrun DDP, "
                             "one process per GPU)")
    parser.add_argument("--wait-timeout", type=float, default=None, metavar="SECONDS",
                        help="give up when the GPUs are not free after this long (default: wait)")
    parser.add_argument("command", help="the msg3d command to run (train, test, ...)")
    parser.add_argument("arguments", nargs="...", help="its arguments")


def run(args):
    from msg3d.cli import COMMANDS

    if args.command not in COMMANDS or args.command == "launch":
        raise ValueError(f"unknown msg3d command {args.command!r}")
    if args.gpus < 0:
        raise ValueError(f"--gpus must be 0 or more, got {args.gpus}")
    argv = command_line(args.command, args.arguments, args.gpus)
    env = dict(os.environ)
    gpus = visible_gpus() if args.gpus > 0 else []  # a CPU job asks nvidia-smi nothing
    if gpus:
        directory = lock_dir()
        held = claim(args.gpus, gpus, directory, timeout_seconds=args.wait_timeout,
                     say=lambda msg: print(f"msg3d launch: {msg}", file=sys.stderr, flush=True))
        for fd in held.values():
            os.set_inheritable(fd, True)  # the locks stay with the job after exec
        env["CUDA_VISIBLE_DEVICES"] = ",".join(held)
        print(f"msg3d launch: GPU(s) {env['CUDA_VISIBLE_DEVICES']} claimed ({directory})", file=sys.stderr)
    print(f"msg3d launch: {' '.join(argv)}", file=sys.stderr, flush=True)
    os.execvpe(argv[0], argv, env)
