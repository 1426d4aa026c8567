"""A one-node Slurm (munge, slurmctld, slurmd on 127.0.0.1) in a temporary directory, for tests.

`SlurmCluster(dir).start()` writes a slurm.conf (free ports, this host as
the only node, `batch_sched_delay=0`, `jobcomp/filetxt`), starts a private
munged on its own socket and key, then slurmctld and slurmd in the
foreground as child processes, waiting for each to answer before the next;
`.stop()` cancels every job and stops the three daemons by the PIDs it
started. Every Slurm command needs `.env` (SLURM_CONF). The configuration
is the one /work/shared/docs/slurm.md records as working on this kind of
machine; it needs no systemd and runs as root.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def have_slurm() -> bool:
    return os.geteuid() == 0 and all(
        shutil.which(c) for c in ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged")
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line(host: str) -> str:
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0]
    # RealMemory as slurmd -C measures it can exceed what it measures next time: leave it out.
    parts = [p for p in first.split() if not p.startswith(("RealMemory=", "NodeName="))]
    return f"NodeName={host} {' '.join(parts)} NodeAddr=127.0.0.1 State=UNKNOWN"


class SlurmCluster:
    def __init__(self, root: Path, *, slurmd_timeout: int = 6):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.munge_dir = root / "munge"
        self.socket = self.munge_dir / "munge.socket"
        self.log_dir = root / "log"
        self.slurmd_timeout = slurmd_timeout
        self.procs: dict[str, subprocess.Popen] = {}

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for d in ("state/ctld", "state/d", "run", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(
            f"""\
ClusterName=igtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
StateSaveLocation={r}/state/ctld
SlurmdSpoolDir={r}/state/d
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdTimeout={self.slurmd_timeout}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.log
{_node_line(self.host)}
PartitionName=build Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
PartitionName=grace Nodes={self.host} MaxTime=INFINITE State=UP
"""
        )

    def _spawn(self, name: str, argv: list[str], **kw) -> None:
        log = open(self.log_dir / f"{name}.out", "ab")  # noqa: SIM115  (the child owns it)
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env, **kw
        )
        log.close()

    def _wait(self, what: str, check, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}:\n{self.log_tail()}")
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{what} did not come up in {timeout:.0f} s:\n{self.log_tail()}")

    def _ok(self, argv: list[str], want: str | None = None) -> bool:
        r = subprocess.run(argv, capture_output=True, text=True, env=self.env, check=False)
        return r.returncode == 0 and (want is None or want in r.stdout)

    def start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # munged (as munge) must reach its directory
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(128))
        for p in (self.munge_dir, key):
            os.chown(p, munge.pw_uid, munge.pw_gid)
        os.chmod(self.munge_dir, 0o755)  # clients must reach the socket
        os.chmod(key, 0o600)
        d = self.munge_dir
        self._spawn(
            "munged",
            [
                "setpriv",
                f"--reuid={munge.pw_uid}",
                f"--regid={munge.pw_gid}",
                "--init-groups",
                "munged",
                "-F",
                f"--socket={self.socket}",
                f"--key-file={key}",
                f"--log-file={d / 'munged.log'}",
                f"--pid-file={d / 'munged.pid'}",
                f"--seed-file={d / 'munged.seed'}",
            ],
        )
        self._wait("munged", lambda: self.socket.exists() and self._munge_ok())

    def _munge_ok(self) -> bool:
        enc = subprocess.run(["munge", "-n", "-S", str(self.socket)], capture_output=True, check=False)
        if enc.returncode != 0:
            return False
        dec = subprocess.run(
            ["unmunge", "-S", str(self.socket)], input=enc.stdout, capture_output=True, check=False
        )
        return dec.returncode == 0

    def start_slurmd(self) -> None:
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.host])
        self._wait("slurmd", lambda: self.node_state() in ("idle", "mixed", "allocated"))

    def start(self) -> SlurmCluster:
        self.write_config()
        try:
            self.start_munge()
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            self._wait("slurmctld", lambda: self._ok(["scontrol", "ping"], "UP"))
            self.start_slurmd()
        except BaseException:
            self.stop()
            raise
        return self

    def node_state(self) -> str:
        r = subprocess.run(
            ["sinfo", "-h", "-n", self.host, "-o", "%T"], capture_output=True, text=True, env=self.env
        )
        return r.stdout.strip().rstrip("*~#")

    def kill_node(self, job_id: str) -> list[int]:
        """The node dies under a running job: slurmd, the job's step daemon and its processes get SIGKILL.

        Only processes of this cluster are touched: slurmd by the PID we started, the job's by
        `scontrol listpids` and its slurmstepd by its command line naming the job id.
        """
        r = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, env=self.env)
        pids = [
            int(ln.split()[0]) for ln in r.stdout.splitlines()[1:] if ln.split() and ln.split()[0].isdigit()
        ]
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if cmd.startswith(f"slurmstepd: [{job_id}."):
                    pids.append(int(proc.name))
        p = self.procs.pop("slurmd", None)
        if p is not None:
            p.kill()
            p.wait()
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL) if os.getpgid(pid) == pid else os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def revive_node(self) -> None:
        """Start slurmd again and return the node to service."""
        self.start_slurmd_after_failure()

    def start_slurmd_after_failure(self) -> None:
        p = self.procs.get("slurmd")
        if p is None or p.poll() is not None:
            self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", self.host])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.node_state() not in ("idle", "mixed", "allocated"):
            subprocess.run(
                ["scontrol", "update", f"nodename={self.host}", "state=resume"],
                capture_output=True,
                env=self.env,
                check=False,
            )
            time.sleep(0.5)

    def jobs(self) -> list[str]:
        """`id|name|state` of every job Slurm still holds (finished ones included)."""
        r = subprocess.run(
            ["squeue", "-h", "--states=all", "-o", "%i|%j|%T"],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
        )
        return [ln for ln in r.stdout.splitlines() if ln.strip()]

    def last_job_id(self) -> int:
        """The highest job id Slurm has handed out. Job ids only grow, while `jobs()` forgets a
        finished job MinJobAge (300 s) after it ends: compare ids, never counts, to tell whether
        anything was submitted."""
        r = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, env=self.env, check=True
        )
        ids = [int(j.split("|")[0]) for j in self.jobs()]
        # squeue may have forgotten every job; slurmctld's next id is the floor then.
        m = re.search(r"^NEXT_JOB_ID\s*=\s*(\d+)", r.stdout, re.M)
        return max([*ids, int(m.group(1)) - 1 if m else 0])

    def cancel_all(self) -> None:
        subprocess.run(["scancel", "--user=root"], capture_output=True, env=self.env, check=False)

    def stop(self) -> None:
        if "slurmctld" in self.procs:
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def log_tail(self, n: int = 4000) -> str:
        out = []
        for f in sorted(self.log_dir.glob("*")):
            text = f.read_text(errors="replace")
            if text:
                out.append(f"--- {f.name}\n{text[-n:]}")
        return "\n".join(out)
