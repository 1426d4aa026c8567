"""Boot a layer the way a node boots it, under QEMU, before its human tags move.

A node PXE-boots the layer's kernel and initramfs with
`root=live:http://.../rootfs.squashfs`; dracut's livenet module downloads the
SquashFS and dmsquash-live mounts it under an overlay. `boot` does exactly
that on this machine:

- the SquashFS is served over HTTP on 127.0.0.1 (a private server on a free
  port, only the files given, stopped afterwards), which QEMU's user
  networking shows the guest as `10.0.2.2`;
- `qemu-system-x86_64` boots the kernel and initramfs directly (`-kernel`,
  `-initrd`; KVM when it really works, TCG otherwise; one vCPU, the steadiest
  under TCG; RAM for the downloaded SquashFS plus the overlay; `-no-reboot`;
  no display; the serial console into the log file);
- the kernel command line is the one `imagegraph artifacts` gives OpenCHAMI
  (`root=live:URL`, the default parameters, the spec's `boot_params`, which
  replace defaults of the same name), plus `console=ttyS0`;
- the serial console is watched: the marker (default the `login:` prompt)
  means booted; a known failure line (dracut's "failed to download live
  image", "Don't know how to handle 'root=...'", an initqueue timeout, an
  emergency shell, a kernel panic, ...) fails the test at once, quoting the
  line, rather than waiting out dracut's minutes of retries; otherwise the
  timeout (default 300 s) fails it.

QEMU and the HTTP server are stopped whatever happens (marker, failure,
timeout, Ctrl-C, `up` being cancelled). The serial log stays in
`<state dir>/boot/<layer>-<run>.log`, with the result beside it as JSON.

Where the files come from (`layer_artifacts`): the layer's `publish_dir`
(`<dir>/<name>/<tag>/`), else its S3 publication (downloaded), else its image
in local container storage (a SquashFS made on the spot). `up` hands over the
files its `squashfs` task made (see `LocalExecutor._boot_test_task`).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import runner as runner_mod
from .arch import Arch, host_arch
from .errors import ImagegraphError
from .log import get_logger

QEMU = "qemu-system-x86_64"


@dataclass(frozen=True)
class Machine:
    """How QEMU boots one architecture: the binary, its machine options, the serial console."""

    qemu: str
    options: tuple[str, ...]
    console: str
    package: str


MACHINES = {
    Arch.X86_64: Machine(QEMU, (), "ttyS0", "qemu-system-x86"),
    # The virt board: PL011 serial (ttyAMA0), virtio-pci; `max` is every feature TCG emulates.
    Arch.AARCH64: Machine("qemu-system-aarch64", ("-M", "virt", "-cpu", "max"), "ttyAMA0", "qemu-system-arm"),
}


def machine_of(arch: Arch | None) -> Machine:
    """The QEMU machine for `arch` (default: the host's); BootTestError when none is known."""
    arch = arch or host_arch()
    if arch not in MACHINES:
        raise BootTestError(f"boot test: no QEMU machine known for {arch} (known: {', '.join(MACHINES)})")
    return MACHINES[arch]


GUEST_HOST = "10.0.2.2"  # the host as QEMU's user networking shows it to the guest
DEFAULT_MARKER = "login:"
DEFAULT_TIMEOUT = 300.0
TAIL_LINES = 30
KVM_PROBE_SECONDS = 10.0

# Lines after which a boot cannot succeed. Most are dracut's own (modules.d/90livenet/livenetroot.sh,
# 90dmsquash-live/dmsquash-live-root.sh, 98dracut-systemd/*.sh, 99base/dracut-lib.sh die()); dracut
# retries a failed download a hundred times, five seconds apart, without ever powering off.
FAILURE_LINES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), why)
    for p, why in (
        (r"Kernel panic - not syncing", "kernel panic"),
        (r"failed to download live image", "dracut could not download the live image"),
        (r"dracut: FATAL: ", "dracut gave up"),
        (r"Don't know how to handle 'root=", "the initramfs cannot boot this root="),
        (r"Failed to find a root filesystem in", "the SquashFS holds no root filesystem"),
        (r"cannot mount live image", "dracut cannot mount the live image"),
        (r"OverlayFS is required but not available", "the initramfs lacks overlayfs"),
        (r"Failed to mount block device of live image", "dracut cannot mount the live image"),
        (r"dracut-initqueue: timeout, still waiting", "dracut-initqueue timed out waiting for the root"),
        (r"Could not boot\.", "dracut could not boot"),
        (r"Can't mount root filesystem", "dracut cannot mount the root filesystem"),
        (r"Refusing to continue", "dracut gave up"),
        (r"Entering emergency mode", "emergency shell"),
        (r"You are in emergency mode", "emergency shell"),
        (r"Give root password for maintenance|Press Enter for maintenance", "emergency shell"),
    )
)
_ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78c])")
_KTIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")


class BootTestError(ImagegraphError):
    """A boot test could not run, or the layer did not boot (`result` says how)."""

    def __init__(self, message: str, result: BootResult | None = None):
        self.result = result
        super().__init__(message)


@dataclass
class BootResult:
    """How one boot went. `outcome`: booted, failed (a failure line, or QEMU exited) or timeout."""

    layer: str
    outcome: str
    reason: str
    seconds: float
    serial_log: str
    tail: list[str] = field(default_factory=list)
    accel: str = ""
    marker: str = DEFAULT_MARKER
    params: str = ""
    key: str | None = None
    source: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "booted"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def message(self) -> str:
        """One paragraph for a failed layer: the reason, the console's last lines, the log."""
        text = f"{self.layer}: boot test {self.outcome}: {self.reason}"
        if not self.ok and self.tail:
            text += "\n  serial console (last lines):\n" + "\n".join("    " + t for t in self.tail[-15:])
        return text + f"\n  serial log: {self.serial_log}"


@dataclass(frozen=True)
class BootArtifacts:
    """The three files a node boots, and where they came from."""

    rootfs: Path
    kernel: Path
    initramfs: Path
    source: str = ""
    key: str | None = None


# ------------------------------------------------------------------ kernel parameters


def kernel_params(spec: Any, rootfs_url: str, console: str = "ttyS0") -> str:
    """The command line a node gets from `artifacts` (boot_config), pointed at `rootfs_url`, on ttyS0.

    A `root=` in the spec's `boot_params` replaces the test's URL, as it replaces
    the published one in the boot configuration.
    """
    from .publish.artifacts import DEFAULT_BOOT_PARAMS, merge_params

    params = merge_params([f"root=live:{rootfs_url}", *DEFAULT_BOOT_PARAMS], spec.boot_params)
    if not re.search(rf"(^|\s)console={console}", params):
        params += f" console={console}"
    return params


# ----------------------------------------------------------------------- HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, Path] = {}
    requests: list[str] = []

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = self.files.get(self.path.split("?", 1)[0])
        if path is None or not path.is_file():
            self.requests.append(f"{self.command} {self.path} 404")
            self.send_error(404, "not served by the boot test")
            return
        self.requests.append(f"{self.command} {self.path} 200")
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        if body:
            with path.open("rb") as f, contextlib.suppress(OSError):
                shutil.copyfileobj(f, self.wfile, 1 << 20)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def serve_files(files: dict[str, Path]) -> Iterator[tuple[int, list[str]]]:
    """Serve `{url path: file}` on 127.0.0.1 (a free port) until the block ends: (port, request log)."""
    handler = type("BootFiles", (_Handler,), {"files": dict(files), "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler.requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# ------------------------------------------------------------------------ acceleration

_kvm_cache: dict[str, tuple[bool, str]] = {}
_kvm_lock = threading.Lock()


def _kvm_ioctls_work() -> str | None:
    """None when /dev/kvm answers KVM_GET_API_VERSION and KVM_CREATE_VM, else why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    try:
        if fcntl.ioctl(fd, 0xAE00) != 12:  # KVM_GET_API_VERSION
            return "/dev/kvm: unexpected API version"
        os.close(fcntl.ioctl(fd, 0xAE01, 0))  # KVM_CREATE_VM
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    finally:
        os.close(fd)
    return None


def kvm_usable(qemu: str, kernel: Path) -> tuple[bool, str]:
    """Whether QEMU really boots with KVM here: /dev/kvm must answer, and a kernel must print under it.

    Some hosts expose a /dev/kvm that QEMU aborts on (unsupported MSRs) or hangs
    on (nested virtualisation); the probe boots the kernel without an initramfs
    for up to KVM_PROBE_SECONDS and waits for its first console line. Cached per process.
    """
    with _kvm_lock:
        if qemu in _kvm_cache:
            return _kvm_cache[qemu]
        why = _kvm_ioctls_work()
        if why is None:
            why = _probe_kvm(qemu, kernel)
        _kvm_cache[qemu] = (why is None, why or "KVM works")
        return _kvm_cache[qemu]


def _probe_kvm(qemu: str, kernel: Path) -> str | None:
    with tempfile.TemporaryDirectory(prefix="imagegraph-kvm-") as tmp:
        log = Path(tmp) / "serial"
        log.touch()
        argv = [qemu, "-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none", "-m", "256"]
        argv += ["-no-reboot", "-serial", f"file:{log}", "-kernel", str(kernel)]
        argv += ["-append", "console=ttyS0 panic=-1"]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + KVM_PROBE_SECONDS
            while time.monotonic() < deadline:
                if b"Linux version" in log.read_bytes():
                    return None
                if proc.poll() is not None:
                    err = (proc.stderr.read() if proc.stderr else "").strip().splitlines()
                    return f"QEMU with KVM exited ({proc.returncode}): {err[-1] if err else 'no message'}"
                time.sleep(0.1)
            return f"no console output under KVM within {KVM_PROBE_SECONDS:.0f} s"
        finally:
            _stop(proc)


def choose_accel(accel: str, qemu: str, kernel: Path) -> tuple[str, str]:
    """('kvm' or 'tcg', why). `accel`: auto, kvm or tcg; IMAGEGRAPH_BOOT_ACCEL overrides auto."""
    accel = accel if accel != "auto" else os.environ.get("IMAGEGRAPH_BOOT_ACCEL", "auto")
    if accel in ("kvm", "tcg"):
        return accel, "requested"
    ok, why = kvm_usable(qemu, kernel)
    return ("kvm", why) if ok else ("tcg", why)


# ---------------------------------------------------------------------------- booting


def default_memory(rootfs: Path, initramfs: Path) -> int:
    """MiB: the downloaded SquashFS and the unpacked initramfs live in RAM, plus room to run."""
    mib = 1 << 20
    need = 640 + 2 * rootfs.stat().st_size // mib + 4 * initramfs.stat().st_size // mib
    return max(1024, -(-need // 256) * 256)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _clean(line: str) -> str:
    return _ANSI.sub("", line).replace("\r", "").rstrip()


def _failure(line: str) -> str | None:
    for pattern, why in FAILURE_LINES:
        if pattern.search(line):
            return why
    return None


def boot(
    kernel: Path,
    initramfs: Path,
    params: str,
    *,
    serve: dict[str, Path],
    log_path: Path,
    layer: str = "",
    marker: str = DEFAULT_MARKER,
    timeout: float = DEFAULT_TIMEOUT,
    memory: int | None = None,
    accel: str = "auto",
    on_line: Callable[[str], None] | None = None,
    arch: Arch | None = None,
) -> BootResult:
    """Boot `kernel` + `initramfs` with `params` under QEMU and watch the serial console (module docstring).

    `serve` maps URL paths (`/rootfs.squashfs`) to files served on 127.0.0.1;
    `{server}` in `params` becomes `http://10.0.2.2:PORT`. Returns a BootResult
    whatever the outcome; raises BootTestError only when QEMU cannot be run,
    and runner.Cancelled when `up` is being cancelled (QEMU is stopped first).
    `arch` picks the QEMU machine (`MACHINES`); another arch than the host's boots under TCG.
    """
    machine = machine_of(arch)
    qemu = shutil.which(machine.qemu)
    if qemu is None:
        raise BootTestError(
            f"{layer}: boot test: {machine.qemu} not found; install {machine.package} "
            "(scripts/install-system-deps.sh)"
        )
    log = get_logger(layer=layer) if layer else get_logger()
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    rootfs = next(iter(serve.values()), None)
    mem = memory or (default_memory(rootfs, initramfs) if rootfs else 1024)
    if (arch or host_arch()) != host_arch():
        how, why = "tcg", f"{arch} on a {host_arch()} host: emulated (TCG)"
    else:
        how, why = choose_accel(accel, qemu, kernel)
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with serve_files(serve) as (port, requests):
        cmdline = params.replace("{server}", f"http://{GUEST_HOST}:{port}")
        argv = [qemu, *machine.options, "-accel", how, "-nodefaults", "-no-user-config", "-display", "none"]
        argv += ["-smp", "1", "-m", str(mem), "-no-reboot", "-serial", f"file:{log_path}"]
        argv += ["-netdev", "user,id=net0", "-device", "virtio-net-pci,netdev=net0"]
        argv += ["-kernel", str(kernel), "-initrd", str(initramfs), "-append", cmdline]
        if how == "kvm" and not machine.options:
            argv[3:3] = ["-cpu", "host"]
        fd = os.open(log_path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        os.close(fd)
        log.info("boot test started", accel=how, accel_reason=why, memory=mem, params=cmdline, step="boot")
        stderr = tempfile.TemporaryFile(mode="w+")
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )

        def result(outcome: str, reason: str) -> BootResult:
            return BootResult(
                layer=layer,
                outcome=outcome,
                reason=reason,
                seconds=round(time.monotonic() - started, 1),
                serial_log=str(log_path),
                tail=list(tail),
                accel=how,
                marker=marker,
                params=cmdline,
            )

        try:
            with log_path.open("rb") as serial:
                partial = ""
                deadline = started + timeout
                while True:
                    chunk = serial.read(1 << 16)
                    if chunk:
                        text = partial + chunk.decode("utf-8", errors="replace")
                        *lines, partial = text.split("\n")
                        for raw in lines:
                            line = _clean(raw)
                            if not line:
                                continue
                            tail.append(line)
                            if on_line:
                                on_line(line)
                            why_failed = _failure(line)
                            if why_failed:
                                return result("failed", _explain(why_failed, line, tail))
                            if marker in line:
                                return result("booted", f"reached {marker!r}: {_KTIME.sub('', line)}")
                        # A login prompt waits for input without a newline.
                        if marker in _clean(partial):
                            tail.append(_clean(partial))
                            return result("booted", f"reached {marker!r}: {_clean(partial)}")
                    if runner_mod.cancel_requested():
                        raise runner_mod.Cancelled(f"{layer}: boot test cancelled")
                    if proc.poll() is not None and not chunk:
                        stderr.seek(0)
                        err = [e for e in stderr.read().strip().splitlines() if e][-3:]
                        detail = "; ".join(err) or "no message"
                        return result(
                            "failed",
                            f"QEMU exited (status {proc.returncode}) before {marker!r}: {detail}"
                            + (f"; HTTP: {', '.join(requests[-3:])}" if requests else ""),
                        )
                    if time.monotonic() > deadline:
                        served = ", ".join(requests[-3:]) or "no request"
                        return result(
                            "timeout",
                            f"no {marker!r} and no known failure line within {timeout:.0f} s "
                            f"(accel {how}; HTTP: {served})",
                        )
                    if not chunk:
                        time.sleep(0.2)
        finally:
            _stop(proc)
            stderr.close()


def _explain(why: str, line: str, tail: deque[str]) -> str:
    """The failure in words, quoting dracut's line and, for a download, curl's complaint."""
    quoted = _KTIME.sub("", line)
    text = f"{why}: {quoted!r}"
    if "download" in why:
        curl = [_KTIME.sub("", t) for t in tail if "curl: (" in t or "Downloading '" in t]
        if curl:
            text += " (" + "; ".join(dict.fromkeys(curl[-2:])) + ")"
    return text


# ------------------------------------------------------------------------------ layers


def boot_layer(
    spec: Any,
    files: BootArtifacts,
    log_path: Path,
    *,
    marker: str | None = None,
    timeout: float | None = None,
    memory: int | None = None,
    accel: str | None = None,
    arch: Arch | None = None,
) -> BootResult:
    """Boot a layer's artifacts as a node would; options default to the spec's `boot_test`."""
    opts = spec.boot_test
    res = boot(
        files.kernel,
        files.initramfs,
        kernel_params(spec, "{server}/rootfs.squashfs", machine_of(arch).console),
        serve={"/rootfs.squashfs": files.rootfs},
        log_path=log_path,
        layer=spec.name,
        marker=marker or opts.marker,
        timeout=timeout or opts.timeout,
        memory=memory or opts.memory,
        accel=accel or opts.accel,
        arch=arch,
    )
    res.key, res.source = files.key, files.source
    _write_result(log_path, res)
    return res


def boot_and_record(
    state: Any,
    state_dir: Path,
    run_id: str,
    layer: str,
    spec: Any,
    files: BootArtifacts,
    **options: Any,
) -> BootResult:
    """Boot (see `boot_layer`) and record the outcome as a `boot-test` event of the layer's key.

    `up`, `boot-test` and `promote` all read these events: a key that booted
    need not boot again, and `promote` refuses a key that did not.
    """
    log_path = boot_log_path(state_dir, layer, run_id)
    res = boot_layer(spec, files, log_path, **options)
    state.record_event(
        run_id=run_id,
        layer=layer,
        key=res.key or files.key,
        kind="boot-test",
        location=str(log_path),
        detail={k: v for k, v in res.to_json().items() if k != "tail"},
    )
    return res


def _write_result(log_path: Path, res: BootResult) -> None:
    with contextlib.suppress(OSError):
        log_path.with_suffix(".json").write_text(json.dumps(res.to_json(), indent=2) + "\n")


def boot_log_path(state_dir: Path, layer: str, run_id: str) -> Path:
    return state_dir / "boot" / f"{layer}-{run_id}.log"


@contextlib.contextmanager
def artifacts_from_image(spec: Any, image: str, runner: Any, workdir: Path) -> Iterator[BootArtifacts]:
    """Make the SquashFS of a local image and pick its kernel (what `up` would publish), in `workdir`."""
    from .publish.artifacts import mounted_image
    from .publish.bootfiles import find_boot_files
    from .publish.squashfs import make_squashfs

    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(prefix="boot-", dir=workdir))
    try:
        with mounted_image(image, runner) as rootfs:
            boot_files = find_boot_files(rootfs, spec.kernel_version, layer=spec.name)
            kernel, initrd = tmp / "vmlinuz", tmp / "initramfs.img"
            shutil.copyfile(boot_files.vmlinuz, kernel)
            shutil.copyfile(boot_files.initramfs, initrd)
            sq = make_squashfs(rootfs, tmp / "rootfs.squashfs", spec.squashfs, runner)
        yield BootArtifacts(sq, kernel, initrd, source=f"image {image}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def layer_artifacts(
    spec: Any, key: str | None, workdir: Path, tag: str | None = None, runner: Any = None
) -> Iterator[BootArtifacts]:
    """A published layer's files: its publish_dir, else its S3 objects (downloaded), else its local image.

    `key` is the layer's current key (None: whatever the first tag holds).
    Raises BootTestError when none of them has the layer.
    """
    from .publish.dirlayout import INITRAMFS_NAME, MANIFEST_NAME, ROOTFS_NAME, VMLINUZ_NAME

    if spec.rootfs_only:  # not "set rootfs_only" (what making boot files from the image would advise)
        raise BootTestError(
            f"{spec.name}: rootfs_only: true publishes no kernel or initramfs, so there is nothing to boot; "
            "install a kernel with a dracut live initramfs and drop rootfs_only to boot-test it"
        )
    tags = [tag] if tag else list(spec.publish_tags)
    looked: list[str] = []
    if spec.publish_dir:
        for t in tags:
            d = Path(spec.publish_dir) / spec.name / t
            files = [d / n for n in (ROOTFS_NAME, VMLINUZ_NAME, INITRAMFS_NAME)]
            try:
                held = json.loads((d / MANIFEST_NAME).read_text()).get("key")
            except (OSError, ValueError, AttributeError):
                held = None
            if all(f.is_file() for f in files) and (key is None or held == key):
                yield BootArtifacts(*files, source=str(d), key=held)
                return
            looked.append(f"{d} ({'holds key ' + str(held)[:12] if held else 'incomplete'})")
    if spec.publish_s3 and key:
        found = _s3_artifacts(spec, key, tags)
        if found is not None:
            src_tag, keys = found
            workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = Path(tempfile.mkdtemp(prefix="boot-s3-", dir=workdir))
            try:
                from .publish.s3 import S3Target

                s3 = S3Target(spec.publish_s3, spec.s3_bucket, layer=spec.name)
                paths = []
                for obj_key, name in zip(keys, (ROOTFS_NAME, VMLINUZ_NAME, INITRAMFS_NAME), strict=True):
                    s3.client.download_file(spec.s3_bucket, obj_key, str(tmp / name))
                    paths.append(tmp / name)
                yield BootArtifacts(*paths, source=s3.url(keys[0]), key=key)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        looked.append(f"s3 {spec.s3_bucket} (no complete publication of key {key[:12]})")
    if key and runner is not None:
        from .build import local_image_id
        from .inventory import local_key_ref

        ref = local_key_ref(spec, key)
        if local_image_id(ref, runner):
            with artifacts_from_image(spec, ref, runner, workdir) as arts:
                yield BootArtifacts(arts.rootfs, arts.kernel, arts.initramfs, source=arts.source, key=key)
            return
        looked.append(f"local image {ref} (absent)")
    raise BootTestError(
        f"{spec.name}: nothing to boot: no SquashFS, kernel and initramfs"
        + (f" for key {key[:12]}" if key else "")
        + (f"; looked at {', '.join(looked)}" if looked else "; the layer has no publish_dir or publish_s3")
        + ". Run `imagegraph up` first"
    )


def _s3_artifacts(spec: Any, key: str, tags: list[str]) -> tuple[str, tuple[str, str, str]] | None:
    from .publish.s3 import S3Index
    from .publish.s3layout import find_published

    found = find_published(S3Index(), spec, key, tags) or {}
    for t, keys in found.items():
        if keys is not None and keys.kernel and keys.initramfs:
            return t, (keys.rootfs, keys.kernel, keys.initramfs)
    return None
