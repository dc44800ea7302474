"""A throwaway single-node Slurm cluster for tests (tests/test_slurm.py): munged, slurmctld and
slurmd started as root without systemd, all their files in one temporary folder, and fake GPUs.

Debian's `slurm-wlm` and `munge` packages provide the daemons (`.ci/run` installs them). The node
is this machine with its real CPU count and memory (`slurmd -C`); its GPUs are GRES `gpu:<type>:N`
backed by character devices (`mknod ... c 1 3`, /dev/null's numbers: slurmd drains a node whose
GRES files are regular files), so Slurm grants them and sets CUDA_VISIBLE_DEVICES while no job
can use them. No cgroups (proctrack/linuxproc, task/none) and no accounting database: `sacct` does
not work here, `squeue` and `scontrol show job` do (a job's record stays MinJobAge seconds after it
ends). The daemons listen on free ports and munged on a socket of its own, so a cluster already
running on the machine is left alone.
"""

import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
# the daemons live in sbin, which a non-root PATH may lack
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
PARTITION = "debug"
# seconds a finished job stays visible to squeue and scontrol: the plugin's squeue status command
# needs at least 3 x its first status-check delay, and the tests read the records after the run
MIN_JOB_AGE = 1800


def unavailable_reason():
    """Why this machine cannot run the cluster (a pytest skip reason), or None."""
    if os.geteuid() != 0:
        return "starting munged, slurmctld and slurmd needs root"
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name, path=SEARCH_PATH) is None]
    if missing:
        return (f"Slurm is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge"
                " (.ci/run does it as root on Debian)")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no munge user (Debian's munge package creates it)"
    with tempfile.TemporaryDirectory() as folder:
        try:
            make_fake_gpu(Path(folder) / "gpu")
        except OSError as exc:
            return f"cannot make the fake GPUs' character devices (mknod needs CAP_MKNOD): {exc}"
    return None


def make_fake_gpu(path):
    """A character device with /dev/null's numbers (1, 3): what slurmd wants as a GPU's File=."""
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hardware():
    """This machine as `slurmd -C` describes it: {NodeName, CPUs, Boards, SocketsPerBoard,
    CoresPerSocket, ThreadsPerCore, RealMemory} (strings; RealMemory in MiB)."""
    first = subprocess.run([shutil.which("slurmd", path=SEARCH_PATH), "-C"], capture_output=True, text=True,
                           check=True).stdout.splitlines()[0]
    return dict(item.split("=", 1) for item in first.split())


class SlurmCluster:
    """One node (this machine) in one partition (PARTITION, the default one) with ``gpus`` fake GPUs
    of type ``gpu_type``. ``start()`` returns once the node is idle; ``stop()`` cancels every job,
    stops the daemons and deletes the folder, whatever state they are in. ``env`` is the
    environment of Slurm's commands here (client_env of this process's)."""

    def __init__(self, gpus=2, gpu_type="a100"):
        self.gpus = gpus
        self.gpu_type = gpu_type
        self.node = hardware()
        self.procs = {}
        # Not under pytest's tmp_path: munged runs as the munge user, which must reach its files
        # through every parent folder, and pytest's are root's only (0700).
        self.root = Path(tempfile.mkdtemp(prefix="msg3d-slurm-"))
        self.root.chmod(0o711)
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge-run" / "munge.socket"
        self.env = self.client_env(os.environ)

    def client_env(self, environ):
        """``environ`` with Slurm's commands pointed at this cluster: SLURM_CONF set, and the folder
        of the `srun` shim first on PATH (see _write_srun_shim)."""
        path = os.pathsep.join([str(self.root / "bin"), environ["PATH"]])
        return dict(environ, SLURM_CONF=str(self.conf), PATH=path)

    # ----------------------------------------------------------------- start

    def start(self):
        self._start_munged()
        self._write_config()
        self._write_srun_shim()
        for daemon in ("slurmctld", "slurmd"):
            self._spawn(daemon, [shutil.which(daemon, path=SEARCH_PATH), "-D", "-f", str(self.conf)])
        self._wait_for_idle_node()
        return self

    def _start_munged(self):
        """munged as the munge user, with a key made here (random bytes, as `mungekey` or `dd` make
        one) and its socket, pid, seed and log files in this cluster's folder."""
        munge = pwd.getpwnam("munge")
        private, public = self.root / "munge", self.munge_socket.parent
        for folder, mode in ((private, 0o700), (public, 0o755)):  # munged refuses a socket folder others cannot enter
            folder.mkdir(mode=mode)
            os.chown(folder, munge.pw_uid, munge.pw_gid)
        key = private / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o400)
        os.chown(key, munge.pw_uid, munge.pw_gid)
        self._spawn("munged", [shutil.which("munged", path=SEARCH_PATH), "--foreground", f"--key-file={key}",
                               f"--socket={self.munge_socket}", f"--pid-file={public / 'munged.pid'}",
                               f"--seed-file={private / 'munged.seed'}", f"--log-file={private / 'munged.log'}"],
                    user=munge.pw_uid, group=munge.pw_gid, extra_groups=[])
        self._wait(lambda: self.munge_socket.exists(), "munged's socket")

    def _write_config(self):
        for folder in ("state", "spool", "log", "run"):
            (self.root / folder).mkdir()
        devices = []
        for i in range(self.gpus):
            device = self.root / f"fakegpu{i}"
            make_fake_gpu(device)
            devices.append(str(device))
        name, host = self.node["NodeName"], socket.gethostname().split(".")[0]
        shape = " ".join(f"{key}={self.node[key]}" for key in
                         ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore", "RealMemory"))
        lines = [
            "ClusterName=msg3dtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.root / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'run' / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'log' / 'slurmd.log'}",
            "MailProg=/bin/true",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "GresTypes=gpu",
            f"MinJobAge={MIN_JOB_AGE}",
            "ReturnToService=2",
            f"NodeName={name} NodeAddr=127.0.0.1 {shape} Gres=gpu:{self.gpu_type}:{self.gpus} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={name} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        (self.root / "gres.conf").write_text(
            "AutoDetect=off\n"
            + "".join(f"NodeName={name} Name=gpu Type={self.gpu_type} File={d}\n" for d in devices))

    def _write_srun_shim(self):
        """An `srun` that puts SLURM_CONF back. Inside a job, the plugin's jobstep runs the rule
        through `srun` with every SLURM_* variable but the job's ids removed, SLURM_CONF too; a
        real node finds its config at /etc/slurm/slurm.conf, which this cluster does not touch."""
        shim = self.root / "bin" / "srun"
        shim.parent.mkdir()
        real = shutil.which("srun", path=SEARCH_PATH)
        shim.write_text(f'#!/bin/sh\nSLURM_CONF={shlex.quote(str(self.conf))} exec {shlex.quote(real)} "$@"\n')
        shim.chmod(0o755)

    def _spawn(self, name, argv, **user):
        log = open(self.root / f"{name}.out", "wb")
        with log:
            self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                                env=self.env, cwd=self.root, start_new_session=True, **user)

    def _wait(self, ready, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                why = f"{', '.join(dead)} exited" if dead else f"no {what} after {timeout} s"
                raise RuntimeError(f"test Slurm cluster: {why}\n{self.logs()}")
            time.sleep(0.5)

    def _wait_for_idle_node(self):
        def idle():
            proc = self.command("sinfo", "--noheader", "--Node", "--format=%T", check=False)
            state = proc.stdout.strip()
            if state.startswith(("drain", "down", "fail", "inval")):
                raise RuntimeError(f"test Slurm cluster: node {state}\n{self.logs()}")
            return proc.returncode == 0 and state == "idle"

        self._wait(idle, "idle node")

    # ----------------------------------------------------------------- use

    def command(self, *argv, check=True, timeout=60):
        """Run a Slurm command (sbatch, squeue, ...) against this cluster, in its folder (where a job
        submitted without --output writes its slurm-<id>.out)."""
        proc = subprocess.run([shutil.which(argv[0], path=SEARCH_PATH), *argv[1:]], env=self.env, cwd=self.root,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def jobs(self):
        """Every job slurmctld still knows (those that ended less than MIN_JOB_AGE s ago too), as
        {field: value} of `scontrol show job --oneliner` (JobId, JobState, Comment, TresPerJob, ...)."""
        out = self.command("scontrol", "show", "job", "--oneliner").stdout
        return [dict(item.split("=", 1) for item in line.split() if "=" in item)
                for line in out.splitlines() if line.startswith("JobId=")]

    def wait_for_job(self, job_id, timeout=60):
        """The record of job ``job_id`` once it has ended."""
        ended = {}

        def done():
            job = next(j for j in self.jobs() if j["JobId"] == str(job_id))
            ended.update(job)
            return job["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")

        self._wait(done, f"end of job {job_id}", timeout)
        return ended

    def logs(self):
        """The daemons' logs, for a failure message."""
        parts = []
        for path in sorted(self.root.glob("*.out")) + sorted((self.root / "log").glob("*.log")):
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name}\n{text[-3000:]}")
        return "\n".join(parts)

    # ----------------------------------------------------------------- stop

    def stop(self):
        """Cancel the jobs, stop the daemons (and job step daemons left behind), delete the folder."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.command("scancel", f"--partition={PARTITION}", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self._unfinished_jobs():
                time.sleep(0.5)
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for pid in self._step_daemons():
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    def _unfinished_jobs(self):
        states = "--states=PENDING,CONFIGURING,RUNNING,COMPLETING"
        return self.command("squeue", "--noheader", states, check=False).stdout.strip()

    def _step_daemons(self):
        """Pids of slurmstepd processes of this cluster still running (they inherit SLURM_CONF)."""
        mine = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if (proc / "cmdline").read_bytes().startswith(b"slurmstepd") and \
                        mine in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:  # it ended meanwhile
                continue
        return pids
