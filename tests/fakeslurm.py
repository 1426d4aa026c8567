"""A recording fake of sbatch, squeue, scontrol and scancel, for fast scheduling tests.

`install(dir)` puts the four commands into `dir/bin` (add it to PATH); they keep
their jobs in `dir/jobs.json` and append every call's argv to `dir/calls.jsonl`.
A test moves jobs along with `set_state`, refuses submissions whose job name
contains `FAKE_SLURM_REFUSE`, and forgets jobs (`purge`) as slurmctld does
after MinJobAge. Real behaviour is tested against a real Slurm in
tests/test_up_slurm.py; this only makes order and state mapping cheap to test.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

COMMANDS = ("sbatch", "squeue", "scontrol", "scancel")


def install(d: Path) -> Path:
    bin_dir = d / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (d / "jobs.json").write_text("{}")
    repo = Path(__file__).resolve().parent.parent
    for cmd in COMMANDS:
        p = bin_dir / cmd
        p.write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(repo)!r})\n"
            f"from tests.fakeslurm import main\nsys.exit(main({cmd!r}, {str(d)!r}, sys.argv[1:]))\n"
        )
        p.chmod(0o755)
    return bin_dir


def calls(d: Path) -> list[list[str]]:
    path = d / "calls.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def jobs(d: Path) -> dict[str, dict]:
    return json.loads((d / "jobs.json").read_text())


def set_state(d: Path, job_id: str, state: str, reason: str = "None", exit_code: str = "0:0") -> None:
    with _locked(d) as data:
        data[job_id].update(state=state, reason=reason, exit_code=exit_code)


def add_job(d: Path, name: str, state: str = "PENDING", stdout: str = "") -> str:
    with _locked(d) as data:
        job_id = str(len(data) + 1)
        data[job_id] = {"name": name, "state": state, "reason": "None", "exit_code": "0:0", "stdout": stdout}
    return job_id


def purge(d: Path, job_id: str) -> None:
    with _locked(d) as data:
        data[job_id]["purged"] = True


class _locked:
    def __init__(self, d: Path):
        self.d = d

    def __enter__(self) -> dict:
        self.f = open(self.d / "jobs.lock", "w")  # noqa: SIM115
        fcntl.flock(self.f, fcntl.LOCK_EX)
        self.data = json.loads((self.d / "jobs.json").read_text())
        return self.data

    def __exit__(self, *exc: object) -> None:
        (self.d / "jobs.json").write_text(json.dumps(self.data))
        self.f.close()


def _opt(argv: list[str], name: str) -> str | None:
    for a in argv:
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def main(cmd: str, d: str, argv: list[str]) -> int:
    root = Path(d)
    with open(root / "calls.jsonl", "a") as f:
        f.write(json.dumps([cmd, *argv]) + "\n")
    if cmd == "sbatch":
        name = _opt(argv, "--job-name") or "job"
        refuse = os.environ.get("FAKE_SLURM_REFUSE")
        if refuse and refuse in name:
            print(
                "sbatch: error: Batch job submission failed: Invalid partition name specified",
                file=sys.stderr,
            )
            return 1
        job_id = add_job(root, name, stdout=_opt(argv, "--output") or "")
        print(job_id)
        return 0
    with _locked(root) as data:
        known = {k: v for k, v in data.items() if not v.get("purged")}
        if cmd == "squeue":
            fmt = argv[argv.index("-o") + 1]
            wanted = (_opt(argv, "--jobs") or "").split(",") if _opt(argv, "--jobs") else list(known)
            rows = [(k, known[k]) for k in wanted if k in known]
            if _opt(argv, "--jobs") and not rows:
                print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
                return 1
            for k, j in rows:
                if "%j" in fmt:
                    print(f"{k}|{j['name']}|{j['state']}")
                else:
                    node = "" if j["state"] == "PENDING" else "node1"
                    print(f"{k}|{j['state']}|{j['reason']}|{node}|N/A|N/A")
            return 0
        if cmd == "scontrol":
            job_id = argv[-1]
            j = known.get(job_id)
            if j is None:
                print("slurm_load_jobs error: Invalid job id specified", file=sys.stderr)
                return 1
            print(
                f"JobId={job_id} JobName={j['name']} JobState={j['state']} Reason={j['reason']} "
                f"ExitCode={j['exit_code']} NodeList=node1 StartTime=2026-01-01T00:00:00 "
                f"EndTime=2026-01-01T00:01:00 StdOut={j['stdout']}"
            )
            return 0
        if cmd == "scancel":
            for job_id in argv:
                if job_id in known and known[job_id]["state"] in ("PENDING", "RUNNING"):
                    data[job_id].update(state="CANCELLED", reason="None")
            return 0
    return 2
