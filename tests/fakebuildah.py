"""A recording fake `buildah` on PATH, for root-free tests of the scheduler/executor interplay.

Only for tests of scheduling, cancellation and failures: every real build
test uses real buildah. The fake keeps images and working containers as
plain directories under its own directory, records each call (argv, start,
end, pid) as a JSON line in `calls.jsonl`, and runs `buildah run C -- ARGV`
as ARGV on the host with the container's directory as working directory, so
a layer's `cmds` (`exit 3`, `sleep 30`, `mkdir -p lib/modules/6.1.0`) drive
it. `FAKE_BUILDAH_FAIL=sub:text` makes every `buildah sub ...` whose argv
contains `text` exit 1.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

SCRIPT = r"""#!{python}
import fcntl, hashlib, json, os, shutil, subprocess, sys, time
from pathlib import Path

HOME = Path(os.environ.get("FAKE_BUILDAH_DIR", {home!r}))
args = sys.argv[1:]
t0 = time.time()
with open(HOME / "started.jsonl", "a") as f:
    f.write(json.dumps({{"argv": args, "start": t0, "pid": os.getpid()}}) + "\n")


def record(rc):
    with open(HOME / "calls.jsonl", "a") as f:
        f.write(json.dumps({{"argv": args, "start": t0, "end": time.time(), "pid": os.getpid(), "rc": rc}}) + "\n")


def finish(rc, out=""):
    if out:
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    record(rc)
    sys.exit(rc)


class Db:
    def __enter__(self):
        self.lock = open(HOME / "lock", "w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        p = HOME / "db.json"
        self.data = json.loads(p.read_text()) if p.exists() else {{"images": {{}}, "containers": {{}}}}
        return self.data

    def __exit__(self, *exc):
        (HOME / "db.json.tmp").write_text(json.dumps(self.data))
        (HOME / "db.json.tmp").replace(HOME / "db.json")
        self.lock.close()


def find(images, ref):
    ref = ref.removeprefix("sha256:")
    for iid, img in images.items():
        if ref == iid or ref in img["names"]:
            return iid
    return None


sub = args[0] if args else ""
fail = os.environ.get("FAKE_BUILDAH_FAIL", "")
if fail:
    fsub, _, text = fail.partition(":")
    if sub == fsub and text in " ".join(args):
        finish(1, "fake buildah: failing as asked")
opts = [a for a in args[1:] if a.startswith("-")]
pos = [a for a in args[1:] if not a.startswith("-")]
if sub in ("--version", "version"):
    finish(0, "buildah version 1.28.2 (fake)")
if sub == "images":
    with Db() as db:
        finish(0, json.dumps([{{"id": i, "names": img["names"]}} for i, img in db["images"].items()]))
if sub == "containers":
    with Db() as db:
        finish(0, json.dumps([{{"containername": n, "id": n}} for n in db["containers"]]))
if sub == "from":
    name, image = args[args.index("--name") + 1], args[-1]
    with Db() as db:
        mnt = HOME / "containers" / name
        if image == "scratch":
            mnt.mkdir(parents=True)
        else:
            iid = find(db["images"], image)
            if iid is None:
                finish(125, f"image not known: {{image}}")
            shutil.copytree(HOME / "images" / iid, mnt, symlinks=True)
        db["containers"][name] = {{"mount": str(mnt), "labels": {{}}}}
    finish(0, name)
if sub == "mount":
    with Db() as db:
        c = db["containers"].get(pos[0])
    finish(0, c["mount"]) if c else finish(125, "no such container")
if sub == "umount":
    finish(0)
if sub == "rm":
    with Db() as db:
        c = db["containers"].pop(pos[0], None)
    if c:
        shutil.rmtree(c["mount"], ignore_errors=True)
    finish(0 if c else 125)
if sub == "config":
    finish(0)
if sub == "copy":
    with Db() as db:
        c = db["containers"][pos[0]]
    dest = Path(c["mount"]) / pos[2].lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(pos[1], dest)
    finish(0)
if sub == "run":
    name = [a for a in args[1:args.index("--")] if not a.startswith("-")][-1]
    with Db() as db:
        c = db["containers"][name]
    rc = subprocess.call(args[args.index("--") + 1:], cwd=c["mount"])
    finish(rc)
if sub == "commit":
    iidfile = args[args.index("--iidfile") + 1]
    name, ref = pos[-2], pos[-1]
    with Db() as db:
        c = db["containers"][name]
        iid = hashlib.sha256(f"{{name}} {{ref}} {{time.time()}}".encode()).hexdigest()
        shutil.copytree(c["mount"], HOME / "images" / iid, symlinks=True)
        db["images"][iid] = {{"names": [ref]}}
    Path(iidfile).write_text("sha256:" + iid)
    finish(0)
if sub == "tag":
    with Db() as db:
        iid = find(db["images"], pos[0])
        if iid is None:
            finish(125, "image not known")
        for other in db["images"].values():
            other["names"] = [n for n in other["names"] if n not in pos[1:]]
        db["images"][iid]["names"] += pos[1:]
    finish(0)
if sub == "inspect":
    with Db() as db:
        iid = find(db["images"], pos[-1])
    if iid is None:
        finish(125, "image not known")
    finish(0, iid if "--format" in args else json.dumps({{"OCIv1": {{"config": {{"Labels": {{}}}}}}}}))
if sub == "rmi":
    with Db() as db:
        iid = find(db["images"], pos[-1])
        if iid:
            del db["images"][iid]
    finish(0 if iid else 125)
finish(2, f"fake buildah: {{sub}} is not faked")
"""


@dataclass
class FakeBuildah:
    home: Path
    bin: Path

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", "FAKE_BUILDAH_DIR": str(self.home)}
        return {**env, **extra}

    def calls(self) -> list[dict]:
        p = self.home / "calls.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def calls_started(self) -> list[dict]:
        p = self.home / "started.jsonl"
        return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []

    def containers(self) -> list[str]:
        p = self.home / "db.json"
        return list(json.loads(p.read_text())["containers"]) if p.exists() else []


def install(dir_: Path) -> FakeBuildah:
    home, bin_ = dir_ / "fake-buildah", dir_ / "bin"
    home.mkdir(parents=True)
    bin_.mkdir(parents=True)
    script = bin_ / "buildah"
    script.write_text(SCRIPT.format(python=sys.executable, home=str(home)))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return FakeBuildah(home, bin_)
