"""Benchmark: imagegraph side by side with OpenCHAMI image-builder on the same three specs.

The user gives the path of an image-builder checkout (`--image-builder PATH`;
its code is run from there, never copied here). Its Python requirements are
installed into a virtualenv of the bench's own (from PyPI, once, cached under
`$XDG_CACHE_HOME/imagegraph-bench/`); it runs outside its container the way
its entrypoint does (root, `BUILDAH_ISOLATION=chroot`, `image-build --config
SPEC`), one process per layer, in dependency order, as a user of it would.

Fixtures, made at start and shared by both tools (nothing is fetched but
the PyPI requirements and, where needed, dnf-plugins-core's .deb):
- a local RPM repository on 127.0.0.1 (tests/rpmrepo.py: busybox for a shell,
  plus `ig-kernel`, SIZE MB of random bytes as a kernel, an initramfs and
  modules: real kernels' modules are compressed, so the bytes do not
  compress further);
- three specs: `base` (dnf from scratch, to the registry), `compute` (child
  of base, tags `1` and `latest`, to the registry and S3), `debug` (child of
  compute, tag `1`, to the registry and S3);
- per tool and round: a fresh `docker-registry` and a fresh moto S3 server
  on free 127.0.0.1 ports (plain HTTP), no images of the bench in container
  storage, fresh imagegraph state and cache.

Scenarios, run in this order for each tool within a round (the tools
alternate between rounds, fresh processes throughout, wall time of the
whole scenario):
- fresh chain: nothing built yet; image-builder builds the three layers,
  imagegraph runs `up`;
- nothing changed: image-builder has no change detection, so its user
  builds the three again; imagegraph `up`;
- leaf edit: `debug`'s cmd changes; image-builder builds `debug`, imagegraph `up`;
- base edit: `base`'s cmd changes; image-builder builds all three, imagegraph `up`.

After every scenario both tools' results are checked (registry tags, S3
keys). Commands are timed by shims on PATH in front of buildah, mksquashfs
and dnf (for both tools alike), and imagegraph's per-task times come from
its run record, so the output says where the time goes. Each scenario's CPU
seconds (the tool and its commands, the bench's own threads, the registry and
moto) are measured too: divided by the cores, the shortest any schedule of
that work could take.

Usage: python bench/imagebuilder_bench.py --image-builder PATH [--rounds 3] [--size-mb 157]
       [-j N] [--up-arg=ARG ...] [--json OUT]
Needs root, buildah, dnf (image-builder calls `dnf config-manager`: from
dnf-plugins-core when installed, whose `local` plugin must then be disabled
in /etc/dnf/plugins/local.conf, else from its .deb by `apt-get download`),
rpmbuild, createrepo_c, busybox-static, mksquashfs,
docker-registry, and moto in this interpreter (the test extras).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures_servers import S3_TEST_ACCESS, S3_TEST_SECRET, RegistryServer, S3Server  # noqa: E402
from tests.rpmrepo import build_rpm, make_repo, serve  # noqa: E402

PREFIX = "igb"  # image names igb-base, igb-compute, igb-debug
KVER = "6.1.0-igbench.x86_64"
LAYERS = ("base", "compute", "debug")
SCENARIOS = ("fresh chain", "nothing changed", "leaf edit", "base edit")
IB_LAYERS = {"fresh chain": LAYERS, "nothing changed": LAYERS, "leaf edit": ("debug",), "base edit": LAYERS}
TRACED = ("buildah", "mksquashfs", "dnf")


# ------------------------------------------------------------------ fixtures


def kernel_spec(size_mb: int) -> str:
    """An RPM spec of a fake kernel: vmlinuz, initramfs and modules of random bytes, `size_mb` in all."""
    vmlinuz, initramfs = 13, 34
    modules = max(1, size_mb - vmlinuz - initramfs)
    return f"""
%define _binary_payload w0.ufdio
%define _binaries_in_noarch_packages_terminate_build 0
%define __strip /bin/true
%define debug_package %{{nil}}
%global __os_install_post %{{nil}}
Name: ig-kernel
Version: 1.0
Release: 1
Summary: a kernel-sized package of random bytes for the image-builder benchmark
License: MIT
BuildArch: noarch
AutoReqProv: no

%description
Random bytes laid out as a kernel, an initramfs and modules.

%install
mkdir -p %{{buildroot}}/boot %{{buildroot}}/lib/modules/{KVER}/kernel
head -c {vmlinuz}M /dev/urandom > %{{buildroot}}/boot/vmlinuz-{KVER}
head -c {initramfs}M /dev/urandom > %{{buildroot}}/boot/initramfs-{KVER}.img
for i in $(seq 1 {modules}); do head -c 1M /dev/urandom > %{{buildroot}}/lib/modules/{KVER}/kernel/m$i.ko.xz; done

%files
/boot/vmlinuz-{KVER}
/boot/initramfs-{KVER}.img
/lib/modules/{KVER}
"""


def make_rpm_repo(path: Path, size_mb: int):
    repo = make_repo(path)
    rpm = build_rpm(repo.work, "ig-kernel", "1.0", kernel_spec(size_mb))
    shutil.copy(rpm, repo.path)
    subprocess.run(
        ["createrepo_c", "--quiet", "--update", "--groupfile", str(path / "comps.xml"), str(path)],
        check=True,
        capture_output=True,
    )
    return repo


def write_specs(d: Path, repo_url: str, registry: str, s3: str, bucket: str, edits: dict[str, str]) -> None:
    """The three specs, in image-builder's format (both tools read these very files)."""
    reg = (
        f"  publish_registry: '{registry}/bench'\n"
        "  registry_opts_push: ['--tls-verify=false']\n"
        "  registry_opts_pull: ['--tls-verify=false']\n"
    )
    s3opts = f"  publish_s3: '{s3}'\n  s3_bucket: '{bucket}'\n"
    common = "  layer_type: base\n  pkg_manager: dnf\n  gpgcheck: false\n"
    (d / "base.yaml").write_text(
        f"options:\n  name: {PREFIX}-base\n  parent: scratch\n  publish_tags: ['1']\n{common}"
        + reg.replace("  registry_opts_pull: ['--tls-verify=false']\n", "")
        + f"repos:\n  - alias: igbench\n    url: '{repo_url}'\n"
        + "packages: [ig-busybox, ig-kernel]\n"
        + "cmds:\n"
        + "  - cmd: printf 'ID=igbench\\nVERSION_ID=1\\n' > /etc/os-release\n"
        + f"  - cmd: echo {edits.get('base', 'base-1')} > /etc/role\n"
    )
    (d / "compute.yaml").write_text(
        f"options:\n  name: {PREFIX}-compute\n  parent: '{registry}/bench/{PREFIX}-base:1'\n"
        f"  publish_tags: ['1', 'latest']\n{common}{reg}{s3opts}"
        "cmds:\n  - cmd: echo compute > /etc/role\n"
    )
    (d / "debug.yaml").write_text(
        f"options:\n  name: {PREFIX}-debug\n  parent: '{registry}/bench/{PREFIX}-compute:1'\n"
        f"  publish_tags: ['1']\n{common}{reg}{s3opts}"
        f"cmds:\n  - cmd: echo {edits.get('debug', 'debug-1')} > /etc/debug\n"
    )


def make_shims(d: Path, trace: Path, plugins: tuple[Path, Path] | None) -> Path:
    """Scripts named like the traced tools that log start, end, tool and subcommand, then exit alike.

    `plugins` (pluginpath, PYTHONPATH): dnf's config-manager for image-builder, when the host's
    dnf lacks it (see `dnf_config_manager`); imagegraph runs dnf with --noplugins.
    """
    d.mkdir(parents=True)
    for tool in TRACED:
        real = shutil.which(tool)
        if real is None:
            raise SystemExit(f"{tool} is not installed")
        run = f'{real} "$@"'
        if tool == "dnf" and plugins:
            run = f'PYTHONPATH={plugins[1]} {real} --setopt=pluginpath={plugins[0]} "$@"'
        shim = d / tool
        shim.write_text(
            "#!/bin/bash\n"
            "s=$EPOCHREALTIME\n"
            f"{run}\n"
            "rc=$?\n"
            f'printf "%s %s %s %s\\n" "$s" "$EPOCHREALTIME" {tool} "${{1:-}}" >> {trace}\n'
            "exit $rc\n"
        )
        shim.chmod(0o755)
    return d


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "imagegraph-bench"


def dnf_config_manager() -> tuple[Path, Path] | None:
    """What image-builder's `dnf config-manager` needs: None when the host's dnf has it.

    Its container has dnf-plugins-core. On Debian that package conflicts with
    zypper (installing zypper removes it), so the bench takes config_manager.py
    (and the dnfpluginscore module it imports) from the package's .deb
    (`apt-get download`), into a plugin directory of its own that the dnf shim
    names: only config-manager, none of the package's other plugins.
    """
    if subprocess.run(["dnf", "config-manager", "--help"], capture_output=True, check=False).returncode == 0:
        local = Path("/etc/dnf/plugins/local.conf")
        text = local.read_text().split("[createrepo]")[0] if local.exists() else ""
        if re.search(r"(?m)^\s*enabled\s*=\s*(1|true|yes)\s*$", text):
            # Debian's dnf-plugins-core enables `local`: it keeps every downloaded package and serves
            # it again under the same name, so image-builder (whose dnf runs with plugins) would
            # install a previous run's ig-kernel. image-builder's own container has no such plugin.
            raise SystemExit(f"{local}: set `enabled = false` (dnf's local plugin serves stale packages)")
        return None
    root = cache_dir() / "dnf-plugins-core"
    site = root / "x" / "usr" / "lib" / "python3" / "dist-packages"
    plugins = root / "plugins"
    if not (plugins / "config_manager.py").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(["apt-get", "download", "dnf-plugins-core"], cwd=root, check=True, capture_output=True)
        deb = next(root.glob("dnf-plugins-core_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "x")], check=True)
        plugins.mkdir()
        shutil.copy(site / "dnf-plugins" / "config_manager.py", plugins)
    return plugins, site


def ib_venv(checkout: Path) -> Path:
    """A virtualenv with image-builder's requirements.txt (made once per requirements content)."""
    req = checkout / "requirements.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()[:12]
    venv = cache_dir() / f"image-builder-venv-{digest}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        print(f"installing image-builder's requirements into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
        (venv / ".complete").touch()
    return python


def compile_sources(checkout: Path) -> None:
    """Byte-compile imagegraph and image-builder's modules, as installing them would.

    With PYTHONDONTWRITEBYTECODE set (or a read-only checkout) every run would
    compile its modules from source again: 0.2 s of imagegraph's no-op `up`.
    """
    import compileall

    import imagegraph

    compileall.compile_dir(str(Path(imagegraph.__file__).parent), quiet=1)
    compileall.compile_dir(str(checkout / "src"), quiet=1)


# ------------------------------------------------------------------ storage and checks


def buildah_lines(*args: str) -> list[str]:
    r = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)
    return r.stdout.split("\n") if r.returncode == 0 else []


def clean_storage() -> None:
    """Remove the bench's containers and images (and so their layers) from container storage."""
    for line in buildah_lines("containers", "--format", "{{.ContainerID}} {{.ContainerName}} {{.ImageName}}"):
        if f"{PREFIX}-" in line:
            subprocess.run(["buildah", "rm", line.split()[0]], capture_output=True, check=False)
    for line in buildah_lines("images", "--format", "{{.ID}} {{.Name}}"):
        if f"/{PREFIX}-" in line or f"/bench/{PREFIX}-" in line:
            subprocess.run(["buildah", "rmi", "-f", line.split()[0]], capture_output=True, check=False)
    subprocess.run(["buildah", "rmi", "--prune"], capture_output=True, check=False)


def registry_tags(reg: RegistryServer) -> dict[str, list[str]]:
    import requests

    out = {}
    for layer in LAYERS:
        r = requests.get(f"{reg.url}/v2/bench/{PREFIX}-{layer}/tags/list", timeout=10)
        out[layer] = (
            sorted(t for t in (r.json().get("tags") or []) if not t.startswith(("ig-", "sha256-")))
            if r.ok
            else []
        )
    return out


def s3_keys(s3: S3Server, bucket: str) -> dict[str, int]:
    resp = s3.client().list_objects_v2(Bucket=bucket)
    # imagegraph adds SBOMs (`<key>.cdx.json`, and `sha256-*` referrer tags in the registry): not compared
    found = {o["Key"]: o["Size"] for o in resp.get("Contents", []) if not o["Key"].endswith(".cdx.json")}
    return dict(sorted(found.items()))


EXPECTED_TAGS = {"base": ["1"], "compute": ["1", "latest"], "debug": ["1"]}
EXPECTED_KEYS = [
    f"efi-images/initramfs-{KVER}.img",
    f"efi-images/vmlinuz-{KVER}",
    f"igbench1-{PREFIX}-compute-1",
    f"igbench1-{PREFIX}-compute-latest",
    f"igbench1-{PREFIX}-debug-1",
]


def check_published(
    tool: str, reg: RegistryServer, s3: S3Server, bucket: str, size_mb: int
) -> dict[str, int]:
    """Both tools must have published the same tags and keys, each SquashFS holding the whole
    kernel package (random bytes do not compress); returns the S3 objects' sizes."""
    tags, keys = registry_tags(reg), s3_keys(s3, bucket)
    if tags != EXPECTED_TAGS or list(keys) != EXPECTED_KEYS:
        raise SystemExit(f"{tool}: published {tags} and {keys}; expected {EXPECTED_TAGS} and {EXPECTED_KEYS}")
    small = {k: v for k, v in keys.items() if "efi-images/" not in k and v < size_mb * 1024 * 1024}
    if small:
        raise SystemExit(f"{tool}: SquashFS objects smaller than the {size_mb} MB package: {small}")
    return keys


# ------------------------------------------------------------------ the runs


def _server_cpu(pid: int) -> float:
    """User + system CPU seconds of a running process (the servers live across scenarios)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_now(server_pids: list[int]) -> float:
    """CPU seconds so far of this process, its waited-for descendants (the tool and every command it
    ran) and the servers: the whole machine's work for a scenario, as a difference of two calls."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum((r.ru_utime + r.ru_stime) for r in (own, kids)) + sum(_server_cpu(p) for p in server_pids)


class Tool:
    name = ""

    def __init__(self, work: Path, env: dict[str, str], trace: Path):
        self.work, self.env, self.trace = work, env, trace
        self.server_pids: list[int] = []

    def run(self, scenario: str) -> dict:
        raise NotImplementedError

    def measured(self, scenario: str) -> dict:
        """`run`, with the CPU seconds the scenario cost (all processes, servers included)."""
        before = cpu_now(self.server_pids)
        out = self.run(scenario)
        out["cpu"] = cpu_now(self.server_pids) - before
        return out

    def traced(self, start: float) -> dict[str, float]:
        """Seconds spent in each traced tool (and buildah subcommand) since `start`."""
        out: dict[str, float] = {}
        if not self.trace.exists():
            return out
        for line in self.trace.read_text().splitlines():
            s, e, tool, sub = (line.split(" ", 3) + [""])[:4]
            if float(s) < start:
                continue
            key = f"{tool} {sub}" if tool == "buildah" else tool
            out[key] = out.get(key, 0.0) + float(e) - float(s)
        return out


class ImageBuilder(Tool):
    name = "image-builder"

    def __init__(self, work: Path, env: dict[str, str], trace: Path, python: Path, checkout: Path):
        super().__init__(work, env, trace)
        self.python, self.script = python, checkout / "src" / "image-build"

    def run(self, scenario: str) -> dict:
        # image-builder writes etc/ and root/ under its working directory for image parents: a scratch cwd
        cwd = self.work / "cwd"
        shutil.rmtree(cwd, ignore_errors=True)
        cwd.mkdir()
        t0 = time.time()
        per_layer = {}
        for layer in IB_LAYERS[scenario]:
            s = time.perf_counter()
            r = subprocess.run(
                [str(self.python), str(self.script), "--config", str(self.work / "layers" / f"{layer}.yaml")],
                cwd=cwd,
                env=self.env,
                stdin=subprocess.DEVNULL,  # Ansible, imported by image-builder, refuses a non-blocking stdin
                capture_output=True,
                text=True,
                check=False,
            )
            per_layer[layer] = time.perf_counter() - s
            (self.work / f"ib-{layer}.log").write_text(r.stdout + r.stderr)
            if r.returncode != 0 or "Error" in r.stdout:
                raise SystemExit(
                    f"image-builder {layer} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}"
                )
        wall = time.time() - t0
        return {"wall": wall, "layers": per_layer, "commands": self.traced(t0)}


class Imagegraph(Tool):
    name = "imagegraph"

    def __init__(self, work: Path, env: dict[str, str], trace: Path, jobs: int | None, up_args: list[str]):
        super().__init__(work, env, trace)
        self.jobs = jobs
        self.up_args = up_args

    def run(self, scenario: str) -> dict:
        argv = [sys.executable, "-m", "imagegraph.cli", "up", str(self.work / "layers"), *self.up_args]
        if self.jobs:
            argv += ["-j", str(self.jobs)]
        t0 = time.time()
        s = time.perf_counter()
        r = subprocess.run(
            argv, env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - s
        (self.work / f"ig-{scenario.replace(' ', '-')}.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise SystemExit(f"imagegraph up failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
        record = json.loads((self.work / "layers" / ".imagegraph" / "last-run.json").read_text())
        tasks = []
        for x in record["layers"]:
            for t in x.get("tasks", []):
                if t.get("started") is not None:
                    tasks.append(
                        {
                            "id": t["id"],
                            "start": t["started"] - record["started"],
                            "duration": t["duration"],
                        }
                    )
        tasks.sort(key=lambda t: t["start"])
        span = (record["finished"] - record["started"]) if record.get("finished") else None
        return {"wall": wall, "tasks": tasks, "makespan": span, "commands": self.traced(t0)}


def one_round(kind: str, tmp: Path, base_env: dict[str, str], repo_url: str, args, ib_python: Path) -> dict:
    """The four scenarios for one tool, on fresh servers, storage, state and cache."""
    work = tmp / f"{kind}-{time.time_ns()}"
    (work / "layers").mkdir(parents=True)
    (work / "registry").mkdir()
    (work / "moto").mkdir()
    reg = RegistryServer(work / "registry")
    reg.start()
    s3 = S3Server(work / "moto")
    s3.start()
    clean_storage()
    trace = work / "trace.log"
    env = {
        **base_env,
        "PATH": f"{make_shims(work / 'shims', trace, args.dnf_plugins)}:{base_env['PATH']}",
        "XDG_CACHE_HOME": str(work / "cache"),
    }
    try:
        bucket = s3.make_bucket()
        specs = {"repo_url": repo_url, "registry": reg.host, "s3": s3.endpoint, "bucket": bucket}
        write_specs(work / "layers", edits={}, **specs)
        if kind == "image-builder":
            tool: Tool = ImageBuilder(work, env, trace, ib_python, args.image_builder)
        else:
            tool = Imagegraph(work, env, trace, args.jobs, args.up_arg)
        tool.server_pids = [p.pid for p in (reg.proc, s3.proc) if p is not None]
        results = {}
        for scenario in SCENARIOS:
            if scenario == "leaf edit":
                write_specs(work / "layers", edits={"debug": "debug-2"}, **specs)
            if scenario == "base edit":
                write_specs(work / "layers", edits={"debug": "debug-2", "base": "base-2"}, **specs)
            results[scenario] = tool.measured(scenario)
            results[scenario]["s3_sizes"] = check_published(kind, reg, s3, bucket, args.size_mb)
            print(
                f"  {kind:13} {scenario:15} {results[scenario]['wall']:6.2f} s"
                f"  (CPU {results[scenario]['cpu']:6.2f} s)",
                file=sys.stderr,
                flush=True,
            )
        return results
    finally:
        reg.stop()
        reg.kill()
        s3.close()
        clean_storage()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def summarise(rounds: list[dict], uptimes: list[str]) -> dict:
    med = {}
    for tool in ("image-builder", "imagegraph"):
        med[tool] = {s: statistics.median(r[tool][s]["wall"] for r in rounds) for s in SCENARIOS}
    return {
        "median": med,
        "ratio": {s: med["imagegraph"][s] / med["image-builder"][s] for s in SCENARIOS},
        "uptime": uptimes,
    }


def print_report(rounds: list[dict], summary: dict) -> None:
    targets = {"fresh chain": 0.5, "leaf edit": 0.75, "base edit": 0.55, "nothing changed": 0.02}
    print(f"{len(rounds)} rounds; load: " + " | ".join(summary["uptime"]))
    print()
    print("| scenario | image-builder (s) | imagegraph (s) | ratio | target | runs ib / ig (s) |")
    print("|---|---:|---:|---:|---:|---|")
    for s in SCENARIOS:
        ib = [r["image-builder"][s]["wall"] for r in rounds]
        ig = [r["imagegraph"][s]["wall"] for r in rounds]
        print(
            f"| {s} | {summary['median']['image-builder'][s]:.2f} | {summary['median']['imagegraph'][s]:.2f} "
            f"| {summary['ratio'][s]:.3f} x | <= {targets[s]} x "
            f"| {', '.join(f'{x:.1f}' for x in ib)} / {', '.join(f'{x:.2f}' for x in ig)} |"
        )
    print()
    cores = os.cpu_count() or 1
    print("CPU seconds of each scenario (every process, the servers included; median), and that work")
    print(f"spread over this machine's {cores} cores: no schedule of the same work finishes sooner.")
    print()
    print(
        "| scenario | image-builder CPU (s) | imagegraph CPU (s) | imagegraph CPU / cores (s) | as a ratio |"
    )
    print("|---|---:|---:|---:|---:|")
    for s in SCENARIOS:
        cpu = {
            t: statistics.median(r[t][s].get("cpu", 0.0) for r in rounds)
            for t in ("image-builder", "imagegraph")
        }
        bound = cpu["imagegraph"] / cores
        print(
            f"| {s} | {cpu['image-builder']:.2f} | {cpu['imagegraph']:.2f} | {bound:.2f} "
            f"| {bound / summary['median']['image-builder'][s]:.3f} x |"
        )
    print()
    for s in SCENARIOS:
        print(f"### {s}: time in commands (median over rounds, s)")
        print()
        keys = sorted({k for r in rounds for t in r.values() for k in t[s]["commands"]})
        print("| command | image-builder | imagegraph |")
        print("|---|---:|---:|")
        for k in keys:
            vals = [
                statistics.median(r[t][s]["commands"].get(k, 0.0) for r in rounds)
                for t in ("image-builder", "imagegraph")
            ]
            print(f"| {k} | {vals[0]:.2f} | {vals[1]:.2f} |")
        per_layer = {
            layer: statistics.median(r["image-builder"][s]["layers"][layer] for r in rounds)
            for layer in IB_LAYERS[s]
        }
        print()
        print("image-builder per layer: " + ", ".join(f"{k} {v:.2f} s" for k, v in per_layer.items()))
        last = rounds[-1]["imagegraph"][s]
        print(
            f"imagegraph tasks (last round; makespan {last['makespan'] or 0:.2f} s of {last['wall']:.2f} s wall):"
        )
        for t in last["tasks"]:
            print(f"  {t['id']:28} start {t['start']:6.2f}  duration {t['duration']:6.2f}")
        print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image-builder", type=Path, required=True, help="an OpenCHAMI image-builder checkout")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size-mb", type=int, default=157, help="size of the kernel package (MB)")
    p.add_argument("-j", "--jobs", type=int, default=None, help="imagegraph's -j (default: its own)")
    p.add_argument("--json", type=Path, default=None, help="write every measurement here")
    p.add_argument(
        "--up-arg", action="append", default=[], help="one more argument for imagegraph up (repeatable)"
    )
    p.add_argument("--tools", nargs="+", default=["image-builder", "imagegraph"], help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the work directories (logs, traces)")
    args = p.parse_args()
    args.image_builder = args.image_builder.resolve()
    if not (args.image_builder / "src" / "image-build").is_file():
        raise SystemExit(
            f"{args.image_builder}: no src/image-build; give the path of an image-builder checkout"
        )
    if os.geteuid() != 0:
        raise SystemExit("run as root: both tools drive buildah as root here")
    args.dnf_plugins = dnf_config_manager()
    ib_python = ib_venv(args.image_builder)
    compile_sources(args.image_builder)
    base_env = {
        **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        "BUILDAH_ISOLATION": "chroot",
        "S3_ACCESS": S3_TEST_ACCESS,
        "S3_SECRET": S3_TEST_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    tmp = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="igbench-ib-"))
    try:
        print(f"making the RPM repository ({args.size_mb} MB kernel package) ...", file=sys.stderr)
        repo = make_rpm_repo(tmp / "repo", args.size_mb)
        server = serve(repo.path)
        rounds, uptimes = [], []
        try:
            for i in range(args.rounds):
                order = ("image-builder", "imagegraph") if i % 2 == 0 else ("imagegraph", "image-builder")
                print(f"round {i + 1}", file=sys.stderr)
                uptimes.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
                order = tuple(k for k in order if k in args.tools)
                rounds.append({k: one_round(k, tmp, base_env, server.url, args, ib_python) for k in order})
                if args.json:  # what was measured survives a later failure
                    args.json.write_text(json.dumps({"rounds": rounds, "uptime": uptimes}, indent=2))
            uptimes.append(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
        finally:
            server.stop()
            repo.cleanup()
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "uptime": uptimes}, indent=2))
    if len(args.tools) < 2:
        return
    summary = summarise(rounds, uptimes)
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, **summary}, indent=2))
    print_report(rounds, summary)


if __name__ == "__main__":
    main()
