"""Faults through the real CLI: each case ends with "the next run completes and nothing was lost".

- imagegraph SIGKILLed in the middle of a build (working container left behind)
- a build command failing: tests/test_up.py::test_failure_blocks_only_its_branch
- no space left while writing a SquashFS (a 1 MiB tmpfs as `publish_dir`)
- the registry answering 500 several times, then recovering
- the S3 endpoint dropping connections, for a while and for good
- a state database from an older schema, from a newer one, or corrupted
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures_build import buildah, containers, have_buildah
from tests.needs import missing, requires

pytestmark = [pytest.mark.buildah, requires(have_buildah(), "needs buildah as root")]

P = "igt-flt"


def cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    e = {
        **os.environ,
        "BUILDAH_ISOLATION": "chroot",
        "IMAGEGRAPH_RETRY_ATTEMPTS": "6",
        "IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.1",
        "IMAGEGRAPH_RETRY_MAX_WAIT": "0.5",
    }
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "imagegraph.cli", *args],
        capture_output=True,
        text=True,
        env=e,
        timeout=timeout,
    )


def up(root: Path, state: Path, *args: str, env: dict | None = None) -> tuple[int, dict, str]:
    r = cli("up", str(root), "--state", str(state), "--json", *args, env=env)
    doc = json.loads(r.stdout) if r.stdout.strip().startswith("{") else {}
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode, doc, r.stderr


def plan(root: Path, state: Path, *args: str, env: dict | None = None) -> dict:
    r = cli("plan", str(root), "--state", str(state), "--json", *args, env=env)
    assert r.returncode == 0, r.stderr
    return {x["name"]: x for x in json.loads(r.stdout)["layers"]}


def by_name(doc: dict) -> dict[str, dict]:
    return {x["name"]: x for x in doc["layers"]}


def built(doc: dict) -> set[str]:
    return {x["name"] for x in doc["layers"] if x["action"] == "build" and x["status"] == "ok"}


def ours() -> list[str]:
    """Working containers of this module's layers (other tests may be building at the same time)."""
    return [c for c in containers() if c.startswith(f"imagegraph-{P}-")]


def spec(name: str, parent: str, repo_url: str | None, extra_opts: str = "", body: str = "") -> str:
    text = (
        f"options:\n  layer_type: base\n  name: {P}-{name}\n  publish_tags: ['1']\n  pkg_manager: dnf\n"
        f"  parent: '{parent}'\n  publish_local: true\n  gpgcheck: false\n  releasever: '9'\n" + extra_opts
    )
    if repo_url:
        text += f"repos:\n  - alias: igtest\n    url: '{repo_url}'\npackage_groups: ['IG Minimal']\n"
    return text + body


@pytest.fixture
def cleanup_images():
    yield
    for ref in buildah("images", "--format", "{{.Name}}:{{.Tag}}", check=False).stdout.split():
        if f"{P}-" in ref:
            buildah("rmi", "-f", ref, check=False)


# ------------------------------------------------------------------------------ SIGKILL


def _process_groups_running(argv_tail: list[str]) -> set[int]:
    """Process groups of processes whose command line ends with `argv_tail` (the build's own command)."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")[:-1]
            if [a.decode(errors="replace") for a in argv[-len(argv_tail) :]] == argv_tail:
                out.add(os.getpgid(int(d.name)))
        except (OSError, ProcessLookupError):
            continue
    return out


def test_sigkill_mid_build_next_run_cleans_up_and_resumes(tmp_path: Path, rpm_repo, cleanup_images) -> None:
    root = tmp_path / "layers"
    root.mkdir()
    state = tmp_path / "state" / "state.db"
    (root / f"{P}-base.yaml").write_text(
        spec("base", "scratch", rpm_repo.url, body="cmds: ['echo base > /etc/role']\n")
    )
    (root / f"{P}-slow.yaml").write_text(
        spec("slow", f"localhost/{P}-base:1", None, body="cmds: ['sleep 97.25']\n")
    )
    before = set(ours())
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state), "--json", "-j", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "BUILDAH_ISOLATION": "chroot"},
    )
    deadline = time.time() + 240
    while time.time() < deadline and not _process_groups_running(["sleep", "97.25"]):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.3)
    groups = _process_groups_running(["sleep", "97.25"])
    assert groups, "the sleeping build never started"
    proc.kill()  # SIGKILL: no handler runs, nothing is cleaned up
    proc.communicate(timeout=30)
    # A machine crash takes the build's own processes too (the runner puts them in their own groups).
    for pgid in groups:
        if pgid != os.getpgid(0):
            os.killpg(pgid, signal.SIGKILL)
    left = set(ours()) - before
    assert any(c.startswith(f"imagegraph-{P}-slow-") for c in left), left  # the dead run's working container

    (root / f"{P}-slow.yaml").write_text(
        spec("slow", f"localhost/{P}-base:1", None, body="cmds: ['echo slow']\n")
    )
    rc, doc, err = up(root, state)
    assert rc == 0, err[-3000:]
    assert built(doc) == {f"{P}-slow"}  # base finished before the kill: recorded, not rebuilt
    assert by_name(doc)[f"{P}-base"]["status"] == "up-to-date"
    assert not (set(ours()) & left), ours()
    assert "removed a working container left by a dead run" in err


# ------------------------------------------------------------------------- no space left


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mnt = tmp_path / "out"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        missing(f"cannot mount a tmpfs: {r.stderr.decode(errors='replace')}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_no_space_left_writing_squashfs(tmp_path: Path, rpm_repo, small_tmpfs: Path, cleanup_images) -> None:
    root = tmp_path / "layers"
    (root / "files").mkdir(parents=True)
    (root / "files" / "big").write_bytes(os.urandom(3 << 20))  # incompressible: the SquashFS is > 3 MiB
    (root / f"{P}-boot.yaml").write_text(
        spec(
            "boot",
            "scratch",
            rpm_repo.url,
            "  publish_dir: ../out\n  rootfs_only: true\n",
            "copyfiles:\n  - {src: files/big, dest: /big}\n",
        )
    )
    state = tmp_path / "state" / "state.db"
    rc, doc, err = up(root, state)
    assert rc == 1, err[-3000:]
    res = by_name(doc)[f"{P}-boot"]
    assert res["status"] == "failed"
    error = res["error"]
    assert "No space left" in error or "no space" in error.lower(), error
    assert "publish" in error or "squashfs" in error or "dir" in error, error  # names the step
    leftovers = [p for p in small_tmpfs.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers  # no partial file under the published names
    p = plan(root, state, "--offline")[f"{P}-boot"]
    assert p["action"] == "publish" and p["publish"] == ["dir"]  # the build is recorded, not the publication

    subprocess.run(["umount", str(small_tmpfs)], check=True)  # room again
    rc, doc, err = up(root, state)
    assert rc == 0, err[-3000:]
    assert built(doc) == set() and by_name(doc)[f"{P}-boot"]["action"] == "publish"
    out = small_tmpfs / f"{P}-boot" / "1" / "rootfs.squashfs"
    assert out.read_bytes()[:4] == b"hsqs"
    assert ours() == []


# ------------------------------------------------------------------ registry answering 500


class Flaky500Proxy:
    """TCP proxy to a registry: the first `failures` HTTP requests to /v2/... get a 500, the rest pass.

    Requests are counted per connection (the first request line of each); a 500
    closes its connection, so clients retry on a new one.
    """

    def __init__(self, target_port: int, failures: int):
        self.target_port = target_port
        self.failures = failures
        self.failed = 0
        self.passed = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        first = b""
        try:
            while b"\r\n" not in first:
                data = client.recv(65536)
                if not data:
                    client.close()
                    return
                first += data
                if not first[:1].isalpha():
                    break  # not HTTP (a TLS hello from a client probing https): pass it through
            with self._lock:
                words = first.split(b" ", 2)
                fail = len(words) > 1 and words[1].startswith(b"/v2") and self.failed < self.failures
                if fail:
                    self.failed += 1
                else:
                    self.passed += 1
            if fail:
                body = b'{"errors":[{"code":"UNKNOWN","message":"injected failure"}]}'
                client.sendall(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                client.close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            upstream.sendall(first)
        except OSError:
            client.close()
            return

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (b,):
                    try:
                        s.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass

        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    def close(self) -> None:
        self._sock.close()


def test_registry_500_then_recovers(tmp_path: Path, rpm_repo, registry, cleanup_images) -> None:
    proxy = Flaky500Proxy(registry.port, failures=0)
    try:
        host = f"127.0.0.1:{proxy.port}"
        root = tmp_path / "layers"
        root.mkdir()
        opts = (
            f"  publish_registry: '{host}/igt'\n"
            "  registry_opts_push: ['--tls-verify=false']\n  registry_opts_pull: ['--tls-verify=false']\n"
        )
        (root / f"{P}-reg.yaml").write_text(spec("reg", "scratch", rpm_repo.url, opts, "cmds: ['echo r']\n"))
        state = tmp_path / "state" / "state.db"
        plan(root, state)
        # 500s while planning: the registry's answer is unknown (it may hold the key), not absent.
        proxy.failures, proxy.failed = 2, 0
        rc, doc, err = up(root, state)
        assert rc == 1 and by_name(doc)[f"{P}-reg"]["status"] == "unknown", err[-3000:]
        assert "HTTP 500" in by_name(doc)[f"{P}-reg"]["error"] and built(doc) == set()
        # Planned offline, the push's requests meet four 500s in a row, then the registry recovers.
        proxy.failures, proxy.failed = 4, 0
        rc, doc, err = up(root, state, "--offline")
        assert rc == 0, err[-3000:]
        assert proxy.failed == 4 and proxy.passed > 0
        assert built(doc) == {f"{P}-reg"}
        from imagegraph.publish.registry_client import RegistryClient

        tags = RegistryClient().tags(f"{registry.host}/igt/{P}-reg") or set()
        assert "1" in tags and any(t.startswith("ig-") for t in tags), tags
        # Nothing lost, nothing repeated.
        rc, doc, err = up(root, state)
        assert rc == 0 and {x["status"] for x in doc["layers"]} == {"up-to-date"}, err[-2000:]
    finally:
        proxy.close()


# ---------------------------------------------------------------------- S3 dropping connections


@pytest.fixture
def s3_layer(tmp_path: Path, rpm_repo, s3_env, cleanup_images):
    bucket = s3_env.make_bucket()
    root = tmp_path / "layers"
    (root / "files").mkdir(parents=True)
    (root / "files" / "big").write_bytes(os.urandom(1 << 20))
    opts = f"  publish_s3: '{s3_env.proxy_endpoint}'\n  s3_bucket: '{bucket}'\n  s3_prefix: 'c/'\n  rootfs_only: true\n"
    (root / f"{P}-s3.yaml").write_text(
        spec("s3", "scratch", rpm_repo.url, opts, "copyfiles:\n  - {src: files/big, dest: /big}\n")
    )
    env = {"S3_ACCESS": os.environ["S3_ACCESS"], "S3_SECRET": os.environ["S3_SECRET"]}
    return root, s3_env, bucket, tmp_path / "state" / "state.db", env


def _keys(s3, bucket: str) -> set[str]:
    return {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_s3_transient_drops_are_survived(s3_layer) -> None:
    root, s3, bucket, state, env = s3_layer
    s3.proxy.reset_next(2, min_bytes=256 << 10)  # the next two uploads carrying > 256 KiB are cut
    rc, doc, err = up(root, state, env=env)
    assert rc == 0, err[-3000:]
    assert s3.proxy.resets == 2
    assert f"c/igtest1-{P}-s3-1" in _keys(s3, bucket) or any(k.startswith("c/") for k in _keys(s3, bucket))


def test_s3_permanent_drops_fail_clearly_then_heal(s3_layer) -> None:
    root, s3, bucket, state, env = s3_layer
    s3.proxy.reset_always(min_bytes=256 << 10)
    rc, doc, err = up(root, state, env=env)
    assert rc == 1, err[-3000:]
    res = by_name(doc)[f"{P}-s3"]
    assert res["status"] == "failed" and "s3" in res["error"].lower(), res["error"]
    assert _keys(s3, bucket) == set()  # nothing under the final key (nor any other)
    client = s3.client()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    s3.proxy.heal()
    rc, doc, err = up(root, state, env=env)
    assert rc == 0, err[-3000:]
    assert built(doc) == set() and by_name(doc)[f"{P}-s3"]["action"] == "publish"
    assert any(k.startswith("c/") for k in _keys(s3, bucket))


def test_s3_down_keeps_the_directory_publication_and_its_sbom(s3_layer, tmp_path: Path) -> None:
    """S3 failing after the directory was written: the directory's publication and SBOM are kept
    (recorded, not redone), and the next run publishes S3 only."""
    root, s3, bucket, state, env = s3_layer
    f = root / f"{P}-s3.yaml"
    f.write_text(
        f.read_text().replace("  rootfs_only: true\n", "  rootfs_only: true\n  publish_dir: ../out\n")
    )
    out = tmp_path / "out" / f"{P}-s3" / "1"
    s3.proxy.reset_always(min_bytes=256 << 10)
    rc, doc, err = up(root, state, env=env)
    assert rc == 1, err[-3000:]
    res = by_name(doc)[f"{P}-s3"]
    assert res["status"] == "failed" and "s3" in res["error"].lower(), res["error"]
    assert _keys(s3, bucket) == set()
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert (out / "rootfs.squashfs").read_bytes()[:4] == b"hsqs"
    sbom = json.loads((out / "sbom.cdx.json").read_text())  # lost before: written only when every target was
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["key"] in json.dumps(sbom)
    p = plan(root, state, "--offline")[f"{P}-s3"]
    assert p["action"] == "publish" and p["publish"] == ["s3"], p
    written = (out / "rootfs.squashfs").stat().st_mtime_ns
    s3.proxy.heal()
    rc, doc, err = up(root, state, env=env)
    assert rc == 0, err[-3000:]
    assert built(doc) == set() and by_name(doc)[f"{P}-s3"]["action"] == "publish"
    assert (out / "rootfs.squashfs").stat().st_mtime_ns == written  # the directory was not redone
    assert any(k.startswith("c/") and k.endswith(".cdx.json") for k in _keys(s3, bucket))
    assert (out / "sbom.cdx.json").exists()
    assert {x["status"] for x in up(root, state, env=env)[1]["layers"]} == {"up-to-date"}


# ------------------------------------------------------------------------- state database


MIN = "options:\n  layer_type: base\n  pkg_manager: dnf\n  name: {name}\n"


def _old_unversioned_db(path: Path) -> None:
    """A database from before the schema was versioned: user_version 0, tables missing columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE layers (layer TEXT PRIMARY KEY, key TEXT NOT NULL, inputs TEXT NOT NULL)")
    c.execute("INSERT INTO layers VALUES ('igt-flt-old', 'k0', '{}')")
    c.execute(
        "CREATE TABLE builds (id INTEGER PRIMARY KEY AUTOINCREMENT, layer TEXT NOT NULL, key TEXT NOT NULL,"
        " status TEXT NOT NULL)"
    )
    c.execute("INSERT INTO builds (layer, key, status) VALUES ('igt-flt-old', 'k0', 'ok')")
    c.commit()
    c.close()


def _corrupt(kind: str, path: Path, tmp: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "random":
        path.write_bytes(os.urandom(20000))
    elif kind == "truncated":
        from imagegraph.state import State

        good = tmp / "good.db"
        s = State(good)
        for i in range(200):
            s.start_run(f"r{i}", "up" * 50)
        s.close()
        path.write_bytes(good.read_bytes()[:9000])
    elif kind == "newer":
        c = sqlite3.connect(path)
        c.execute("PRAGMA user_version = 99")
        c.commit()
        c.close()
    elif kind == "empty-file":
        path.write_bytes(b"")


def test_old_unversioned_state_is_migrated(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    root.mkdir()
    (root / f"{P}-old.yaml").write_text(MIN.format(name=f"{P}-old"))
    state = tmp_path / "st" / "state.db"
    _old_unversioned_db(state)
    p = plan(root, state, "--offline")  # plan migrates (its own short write) and keeps the data
    assert p[f"{P}-old"]["action"] == "build"
    assert "never-built" not in {r["code"] for r in p[f"{P}-old"]["reasons"]}  # the old record was kept
    c = sqlite3.connect(state)
    assert c.execute("PRAGMA user_version").fetchone()[0] >= 1
    cols = {r[1] for r in c.execute("PRAGMA table_info(builds)")}
    assert {"finished", "duration", "run_id", "error"} <= cols
    assert c.execute("SELECT key FROM layers WHERE layer='igt-flt-old'").fetchone()[0] == "k0"
    c.close()
    r = cli("up", str(root), "--state", str(state), "--dry-run", "--offline")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("kind", ["random", "truncated", "newer"])
def test_unusable_state_is_a_clear_error_with_a_way_forward(
    kind: str, tmp_path: Path, rpm_repo, cleanup_images
) -> None:
    root = tmp_path / "layers"
    root.mkdir()
    (root / f"{P}-one.yaml").write_text(spec("one", "scratch", rpm_repo.url, body="cmds: ['echo one']\n"))
    state = tmp_path / "st" / "state.db"
    _corrupt(kind, state, tmp_path)
    for command in (["plan", "--offline"], ["up"]):
        r = cli(command[0], str(root), "--state", str(state), *command[1:])
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        assert str(state) in r.stderr
        if kind == "newer":
            assert "newer" in r.stderr and "--state" in r.stderr
        else:
            assert "move it aside" in r.stderr and f"mv {state}" in r.stderr
    assert ours() == []
    # The way forward: move it aside, and the next run completes.
    state.rename(state.with_name("state.db.broken"))
    rc, doc, err = up(root, state)
    assert rc == 0 and built(doc) == {f"{P}-one"}, err[-3000:]


def test_empty_state_file_is_a_fresh_state(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    root.mkdir()
    (root / f"{P}-one.yaml").write_text(MIN.format(name=f"{P}-one"))
    state = tmp_path / "st" / "state.db"
    _corrupt("empty-file", state, tmp_path)
    for command in (["plan", "--offline"], ["up", "--dry-run", "--offline"]):
        r = cli(command[0], str(root), "--state", str(state), *command[1:])
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


# ------------------------------------------------------- Ctrl-C while the SquashFS streams to S3


def test_ctrl_c_mid_stream_leaves_nothing_then_publishes(
    tmp_path: Path, rpm_repo, s3_env, cleanup_images
) -> None:
    """`up` with IMAGEGRAPH_S3_STREAM=1: SIGINT while parts are on S3 -> 130, no object, no upload; then it publishes."""
    bucket = s3_env.make_bucket()
    root = tmp_path / "layers"
    (root / "files").mkdir(parents=True)
    (root / "files" / "big").write_bytes(os.urandom(80 << 20))  # above the 64 MiB multipart threshold
    opts = (
        f"  publish_s3: '{s3_env.endpoint}'\n  s3_bucket: '{bucket}'\n  s3_prefix: 'c/'\n  rootfs_only: true\n"
        "  squashfs: {compression: xz}\n"  # slow: time to interrupt it
    )
    (root / f"{P}-st.yaml").write_text(
        spec("st", "scratch", rpm_repo.url, opts, "copyfiles:\n  - {src: files/big, dest: /big}\n")
    )
    state = tmp_path / "state" / "state.db"
    env = {
        **os.environ,
        "BUILDAH_ISOLATION": "chroot",
        "S3_ACCESS": os.environ["S3_ACCESS"],
        "S3_SECRET": os.environ["S3_SECRET"],
        "IMAGEGRAPH_S3_STREAM": "1",
    }
    client = s3_env.client()

    streamed: list[str] = []

    def parts_sent() -> bool:
        ups = client.list_multipart_uploads(Bucket=bucket).get("Uploads") or []
        for u in ups:
            if client.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts"):
                streamed.append(u["Key"])
        return bool(streamed)

    argv = [sys.executable, "-m", "imagegraph.cli", "up", str(root), "--state", str(state), "--json"]
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not parts_sent():
            assert p.poll() is None, p.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "no part was streamed"
            time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err[-3000:]
    assert ".staging-" in streamed[0]  # the stream's upload (made while mksquashfs ran), not the plain one
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads") is None
    assert _keys(s3_env, bucket) == set()

    rc, doc, err = up(
        root, state, env={k: env[k] for k in ("S3_ACCESS", "S3_SECRET", "IMAGEGRAPH_S3_STREAM")}
    )
    assert rc == 0, err[-3000:]
    keys = _keys(s3_env, bucket)
    assert not any(".staging-" in k for k in keys), keys  # the staging object is gone
    (key,) = [k for k in keys if k.endswith(f"-{P}-st-1")]
    body = client.get_object(Bucket=bucket, Key=key)
    h = hashlib.sha256()
    for chunk in iter(lambda: body["Body"].read(1 << 20), b""):
        h.update(chunk)
    assert body["Metadata"]["sha256"] == h.hexdigest()
    assert client.list_multipart_uploads(Bucket=bucket).get("Uploads") is None


# ------------------------------------------------------------------ read-only state directory


@pytest.fixture
def readonly_mount(tmp_path: Path):
    """`make_readonly(dir)`: bind-mount `dir` read-only on itself (undone at the end)."""
    mounted: list[Path] = []

    def make_readonly(d: Path) -> None:
        r = subprocess.run(["mount", "--bind", str(d), str(d)], capture_output=True)
        if r.returncode != 0:
            missing(f"cannot bind-mount: {r.stderr.decode(errors='replace')}")
        mounted.append(d)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(d)], check=True)

    yield make_readonly
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("existing", [False, True], ids=["empty", "existing-state"])
def test_read_only_state_directory_is_a_clear_error(tmp_path: Path, readonly_mount, existing: bool) -> None:
    """up, gc and lock on a state directory on a read-only filesystem: exit 2 naming it, no traceback."""
    root = tmp_path / "layers"
    root.mkdir()
    (root / f"{P}-ro.yaml").write_text(MIN.format(name=f"{P}-ro"))
    d = tmp_path / "ro"
    d.mkdir()
    state = d / "state.db"
    if existing:
        from imagegraph.state import State

        State(state).close()
    readonly_mount(d)
    for command in (["up", "--offline"], ["gc", "--keep", "1"], ["lock"]):
        r = cli(command[0], str(root), "--state", str(state), *command[1:])
        assert r.returncode == 2, (command, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        assert str(d) in r.stderr and "writable filesystem" in r.stderr, r.stderr
        assert "--state PATH" in r.stderr and "move it aside" not in r.stderr, r.stderr  # not a cure here
    assert ours() == []
    r = cli("plan", str(root), "--state", str(state), "--offline")  # plan only reads: it still works
    assert r.returncode == 0, r.stderr


def test_read_only_publish_dir_names_it_and_s3_still_publishes(
    s3_layer, tmp_path: Path, readonly_mount
) -> None:
    """The directory export remounted read-only: the error names the target and the errno (not an
    "internal error"), S3 is still published, and the next run publishes the directory only."""
    root, s3, bucket, state, env = s3_layer
    f = root / f"{P}-s3.yaml"
    f.write_text(
        f.read_text().replace("  rootfs_only: true\n", "  rootfs_only: true\n  publish_dir: ../out\n")
    )
    out = tmp_path / "out"
    out.mkdir()
    readonly_mount(out)
    rc, doc, err = up(root, state, env=env)
    assert rc == 1, err[-3000:]
    error = by_name(doc)[f"{P}-s3"]["error"]
    assert "internal error" not in error and "Read-only file system" in error, error
    assert f"publishing to dir {out}" in error, error
    assert any(k.startswith("c/") for k in _keys(s3, bucket))  # the other target was not given up
    assert plan(root, state, "--offline")[f"{P}-s3"]["publish"] == ["dir"]
    subprocess.run(["umount", str(out)], check=True)
    rc, doc, err = up(root, state, env=env)
    assert rc == 0 and built(doc) == set(), err[-3000:]
    assert (out / f"{P}-s3" / "1" / "rootfs.squashfs").read_bytes()[:4] == b"hsqs"
    assert not [p for p in out.rglob(".*")], list(out.rglob(".*"))  # no temp files
