#!/usr/bin/env bash
# Installs the host toolchain imagegraph drives (buildah and friends) on Debian/Ubuntu,
# only when something is missing, so `make test` works on a fresh machine and is quick after.
# `--run`: only what running imagegraph needs (`make demo`), not what the tests add
# (docker-registry, rpmbuild, createrepo_c, busybox-static).
set -euo pipefail
tests=1
[ "${1:-}" = "--run" ] && tests=0
need=()
check() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
check buildah buildah
check skopeo skopeo
check mksquashfs squashfs-tools
[ $tests = 1 ] && check docker-registry docker-registry
check rpm rpm
[ $tests = 1 ] && check rpmbuild rpm
[ $tests = 1 ] && check createrepo_c createrepo-c
# Stand-in repositories: signed test RPMs (rpmsign, a throwaway gpg key) and dnf module metadata.
[ $tests = 1 ] && check modifyrepo_c createrepo-c
[ $tests = 1 ] && check rpmsign rpm
[ $tests = 1 ] && check gpg gnupg
check dnf dnf
check mmdebstrap mmdebstrap
check zypper zypper
# tests/debrepo.py indexes a test apt repository (package inventories and dpkg's version order).
check dpkg-scanpackages dpkg-dev
# boot-test (and `up` with options.boot_test) boots layers under QEMU; dracut is only needed inside images.
check qemu-system-x86_64 qemu-system-x86
# multi-arch layers boot their aarch64 nodes on the virt board (TCG): tests/test_multiarch.py
check qemu-system-aarch64 qemu-system-arm
check ansible-playbook ansible-core
# `up --executor slurm` tests bring up a one-node Slurm (munge, slurmctld, slurmd) of their own.
check slurmctld slurmctld
check slurmd slurmd
check sbatch slurm-client
check munged munge
check python3 python3
# Pictures: Graphviz lays out `graph --format svg` and report pages; tests render them in Chromium.
check dot graphviz
[ $tests = 1 ] && check chromium chromium
# tests/test_contrib.py runs the README's `journalctl ... | jq` recipe on real JSON lines.
[ $tests = 1 ] && check jq jq
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need+=(fonts-dejavu-core)
# `imagegraph lock` resolves package sets with libsolv (dnf's solver) through the system Python.
/usr/bin/python3 -c 'import solv' >/dev/null 2>&1 || need+=(python3-solv)
# ... and reads a repository's modules.yaml.zst (EL9/10 AppStream compress it so) with zstd.
check zstd zstd
# layer_type ansible reaches containers with the buildah connection plugin of the containers.podman
# collection, which Debian ships in `ansible` (ansible-core alone lacks it).
[ -e /usr/lib/python3/dist-packages/ansible_collections/containers/podman/plugins/connection/buildah.py ] ||
  need+=(ansible)
# Build tests package a static busybox into an RPM so scratch-built test images have a shell.
[ $tests = 0 ] || dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# Foreign architectures build under qemu-user-static through binfmt_misc; mmdebstrap needs arch-test.
check qemu-aarch64-static qemu-user-static
check update-binfmts binfmt-support
check arch-test arch-test
# A registry test stops the daemon it starts; the Debian package also ships a service we do not want.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
# Handlers do not survive a reboot and containers start without binfmt_misc mounted: every run checks.
enable_binfmt() {
  [ -e /proc/sys/fs/binfmt_misc/status ] ||
    $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || return 0
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || $SUDO update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
}
if [ ${#need[@]} -eq 0 ]; then
  enable_binfmt
  exit 0
fi
echo "installing system packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The Slurm and munge packages' maintainer scripts start their daemons where they can, and slurmd
# fails without a slurm.conf; the tests start their own on 127.0.0.1. Keep them from starting.
policy=""
if [[ " ${need[*]} " == *" slurmd "* || " ${need[*]} " == *" munge "* ]] && [ ! -e /usr/sbin/policy-rc.d ]; then
  policy=/usr/sbin/policy-rc.d
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  trap '$SUDO rm -f "$policy"' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" uidmap fuse-overlayfs >/dev/null
# docker-registry's Debian service would hold port 5000; tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl disable --now docker-registry >/dev/null 2>&1 || true; fi
enable_binfmt
