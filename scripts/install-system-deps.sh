#!/usr/bin/env bash
# Installs the host toolchain imagegraph drives (buildah and friends) on Debian/Ubuntu,
# only when something is missing, so `make test` works on a fresh machine and is quick after.
set -euo pipefail
need=()
check() { command -v "$1" >/dev/null 2>&1 || need+=("$2"); }
check buildah buildah
check skopeo skopeo
check mksquashfs squashfs-tools
check docker-registry docker-registry
check rpm rpm
check rpmbuild rpm
check createrepo_c createrepo-c
check dnf dnf
check mmdebstrap mmdebstrap
check zypper zypper
# boot-test (and `up` with options.boot_test) boots layers under QEMU; dracut is only needed inside images.
check qemu-system-x86_64 qemu-system-x86
check ansible-playbook ansible-core
# `up --executor slurm` tests bring up a one-node Slurm (munge, slurmctld, slurmd) of their own.
check slurmctld slurmctld
check slurmd slurmd
check sbatch slurm-client
check munged munge
check python3 python3
# layer_type ansible reaches containers with the buildah connection plugin of the containers.podman
# collection, which Debian ships in `ansible` (ansible-core alone lacks it).
[ -e /usr/lib/python3/dist-packages/ansible_collections/containers/podman/plugins/connection/buildah.py ] ||
  need+=(ansible)
# Build tests package a static busybox into an RPM so scratch-built test images have a shell.
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
# A registry test stops the daemon it starts; the Debian package also ships a service we do not want.
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
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
