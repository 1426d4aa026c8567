"""boottest.boot's console watcher on real boots: a kernel panic, an emergency shell, a login prompt.

Cheap real boots: Debian's cloud kernel (its package fetched from the
Debian archive at test time, as the mmdebstrap tests do) and a one-file
busybox initramfs whose /init does what the kernel command line says. The
panic is the kernel's own (init exits); the emergency line is dracut's
wording, printed by /init. Each boot takes seconds under TCG.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from imagegraph.boottest import boot

from .needs import missing, requires

pytestmark = [
    requires(shutil.which("qemu-system-x86_64") is not None, "needs qemu-system-x86"),
    requires(shutil.which("busybox") is not None, "needs busybox-static"),
]

INIT = """#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
echo "imagegraph test init: ig_mode=$ig_mode"
case "$ig_mode" in
  panic) exit 1 ;;
  emergency) echo "Entering emergency mode. Exit the shell to continue." ;;
  login) echo "tiny login: " ;;
esac
exec /bin/busybox sleep 600
"""


def _fetch_kernel(into: Path) -> Path:
    """vmlinuz out of the Debian cloud kernel package (downloaded, unpacked, not installed)."""
    deps = subprocess.run(
        ["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True, check=False
    )
    pkg = next((w.split()[-1] for w in deps.stdout.splitlines() if "Depends: linux-image-" in w), None)
    if pkg is None:
        missing("apt cannot name Debian's cloud kernel package (run apt-get update)")
    got = subprocess.run(["apt-get", "download", pkg], cwd=into, capture_output=True, text=True, check=False)
    debs = list(into.glob("*.deb"))
    if got.returncode != 0 or not debs:
        missing(f"cannot download {pkg} from the Debian archive: {got.stderr.strip()[-300:]}")
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(debs[0])], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "--wildcards", "./boot/vmlinuz-*"], cwd=into, input=tar.stdout, check=True)
    debs[0].unlink()
    return next((into / "boot").glob("vmlinuz-*"))


def _initramfs(into: Path) -> Path:
    tree = into / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "dev").mkdir()
    shutil.copy(shutil.which("busybox"), tree / "bin" / "busybox")
    (tree / "init").write_text(INIT)
    (tree / "init").chmod(0o755)
    names = "\n".join(str(p.relative_to(tree)) for p in sorted(tree.rglob("*"))) + "\n"
    cpio = subprocess.run(
        ["busybox", "cpio", "-o", "-H", "newc"],
        cwd=tree,
        input=names.encode(),
        capture_output=True,
        check=True,
    )
    out = into / "init.cpio.gz"
    out.write_bytes(gzip.compress(cpio.stdout, compresslevel=1))
    return out


@pytest.fixture(scope="module")
def tiny_boot(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tiny-boot")
    return _fetch_kernel(d), _initramfs(d)


def _qemu_running(log: Path) -> bool:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
    return str(log) in ps


@pytest.mark.parametrize(
    ("mode", "outcome", "why"),
    [
        ("panic", "failed", "kernel panic: 'Kernel panic - not syncing: Attempted to kill init!"),
        ("emergency", "failed", "emergency shell: 'Entering emergency mode."),
        ("login", "booted", "reached 'login:': tiny login:"),
    ],
)
def test_console_lines_decide_the_boot(tiny_boot, tmp_path: Path, mode: str, outcome: str, why: str) -> None:
    kernel, initramfs = tiny_boot
    log = tmp_path / f"{mode}.log"
    res = boot(
        kernel,
        initramfs,
        f"console=ttyS0 panic=-1 quiet ig_mode={mode}",
        serve={},
        log_path=log,
        marker="login:",
        timeout=180,
        memory=256,
        accel="tcg",
    )
    assert res.outcome == outcome, res.reason
    assert res.reason.startswith(why), res.reason
    assert f"ig_mode={mode}" in log.read_text(errors="replace")  # the line came over the serial console
    assert not _qemu_running(log)  # QEMU is stopped whatever the outcome
