"""Benchmark: resolving a layer's package set (`imagegraph lock`) on a mirror of a few thousand packages.

A synthetic rpm-md repository is written (metadata only: `resolve` never reads a
package): N packages (default 3,000) in an EL9-like shape: a core of libraries
that many packages require, by name, by soname-style provides and by file path
(/bin/sh), and leaf packages requiring 1 to 6 others. The layers: `base`
(scratch, 60 leaf packages plus their closure), `compute` on it (40 more).

Timed, each a fresh process, median of ROUNDS (5), interleaved:

- `lock` cold: no lock file, empty metadata cache (fetches primary.xml.gz,
  resolves both layers);
- `lock --update` warm, repository unchanged: the fingerprint says nothing
  moved, no depsolve;
- `lock --update` after an unrelated package was added: repomd and the
  primary changed (the new primary is fetched), one depsolve per layer, no
  key moves;
- the depsolve alone (solvhelper.py on base's request, the largest);
- the same depsolve by dnf's own CLI, `dnf --installroot EMPTY install
  --assumeno` (can take no installed set: base's packages only), and by
  dnf's Python API (`dnf.Base`, `fill_sack(load_system_repo=False)`, resolve).

`--arches`: instead, the same site as a 2-arch one (`options.arches: [x86_64,
aarch64]`, a `$basearch` URL: one mirror per arch, each N packages) against
the 1-arch one: `lock` cold, warm and after an unrelated package appeared in
both mirrors (one depsolve per layer and arch).

`--modules`: instead, the site against the same mirror with and without a
modules.yaml (N // 30 modules of 3 streams x 2 versions, 5 artifacts each,
every other module with a default stream; base also installs a default
stream's packages, compute enables a non-default stream and installs its):
`lock` cold and after an unrelated package appeared, i.e. what reading
modules.yaml and dnf's modular filtering add.

Usage: python bench/resolve_bench.py [N] [--arches | --modules]
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = 5
IMAGEGRAPH = shutil.which("imagegraph") or "imagegraph"
SYSPY = "/usr/bin/python3"
HELPER = Path(__file__).resolve().parents[1] / "imagegraph" / "solvhelper.py"


def package_xml(
    name: str, version: str, requires: list[str], provides: list[str], files: list[str], arch: str = "x86_64"
) -> str:
    checksum = hashlib.sha256(f"{name}-{version}".encode()).hexdigest()
    req = "".join(f'<rpm:entry name="{r}"/>' for r in requires)
    prov = f'<rpm:entry name="{name}" flags="EQ" epoch="0" ver="{version}" rel="1.el9"/>' + "".join(
        f'<rpm:entry name="{p}"/>' for p in provides
    )
    fl = "".join(f"<file>{f}</file>" for f in files)
    return (
        f'<package type="rpm"><name>{name}</name><arch>{arch}</arch>'
        f'<version epoch="0" ver="{version}" rel="1.el9"/>'
        f'<checksum type="sha256" pkgid="YES">{checksum}</checksum>'
        f"<summary>{name}</summary><description>{name}</description><packager/><url/>"
        f'<time file="1" build="1"/><size package="1000" installed="2000" archive="2100"/>'
        f'<location href="Packages/{name}-{version}-1.el9.{arch}.rpm"/>'
        f"<format><rpm:license>MIT</rpm:license><rpm:provides>{prov}</rpm:provides>"
        f"<rpm:requires>{req}</rpm:requires>{fl}</format></package>\n"
    )


def modular(n: int) -> tuple[list[str], str]:
    """The modular packages' primary entries and the modules.yaml over them (see `--modules`)."""
    body, docs = [], []
    for k in range(max(4, n // 30)):
        for s in ("1", "2", "3"):
            for v in (1, 2):
                arts = []
                for j in range(5):
                    name, ver = f"mod{k:03d}-pkg{j}", f"{s}.{v}"
                    body.append(package_xml(name, ver, ["lib000.so.1()(64bit)"], [], []))
                    arts.append(f"      - {name}-0:{ver}-1.el9.x86_64\n")
                docs.append(
                    f'---\ndocument: modulemd\nversion: 2\ndata:\n  name: mod{k:03d}\n  stream: "{s}"\n'
                    f"  version: {v}\n  context: c0ffee42\n  arch: x86_64\n  summary: m\n  description: m\n"
                    f"  license:\n    module: [MIT]\n  profiles:\n    default:\n      rpms: [mod{k:03d}-pkg0]\n"
                    f"  artifacts:\n    rpms:\n{''.join(arts)}...\n"
                )
        if k % 2:
            docs.append(
                f"---\ndocument: modulemd-defaults\nversion: 1\ndata:\n  module: mod{k:03d}\n"
                f'  stream: "1"\n  profiles:\n    "1": [default]\n...\n'
            )
    return body, "".join(docs)


def write_repo(
    path: Path, n: int, extra: int = 0, seed: int = 7, arch: str = "x86_64", modules: bool | None = None
) -> None:
    """n packages (+ `extra` unrelated ones); repodata/repomd.xml + primary.xml.gz. `modules`:
    the modular packages, and with True the modules.yaml.gz record too."""
    rnd = random.Random(seed)
    core = [f"lib{i:03d}" for i in range(max(50, n // 15))]
    body = []
    for i, name in enumerate(core):
        reqs = [f"{core[j]}.so.1()(64bit)" for j in rnd.sample(range(i), min(i, rnd.randint(0, 3)))]
        files = ["/bin/sh"] if i == 0 else []
        body.append(
            package_xml(
                name, "1.0", reqs + (["/bin/sh"] if i else []), [f"{name}.so.1()(64bit)"], files, arch
            )
        )
    for i in range(n - len(core) + extra):
        name = f"pkg{i:05d}" if i < n - len(core) else f"unrelated{i:05d}"
        reqs = [f"{c}.so.1()(64bit)" for c in rnd.sample(core, rnd.randint(1, 4))]
        if i > 10 and rnd.random() < 0.5:
            reqs.append(f"pkg{rnd.randrange(i):05d}")
        body.append(package_xml(name, "1.0", reqs, [], [], arch))
    mod_body, mod_yaml = modular(n) if modules is not None else ([], "")
    body += mod_body
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<metadata xmlns="http://linux.duke.edu/metadata/common" '
        f'xmlns:rpm="http://linux.duke.edu/metadata/rpm" packages="{len(body)}">\n'
        + "".join(body)
        + "</metadata>\n"
    )
    data = gzip.compress(xml.encode(), 6, mtime=0)
    open_sum = hashlib.sha256(xml.encode()).hexdigest()
    sha = hashlib.sha256(data).hexdigest()
    rd = path / "repodata"
    shutil.rmtree(rd, ignore_errors=True)
    rd.mkdir(parents=True)
    (rd / f"{sha}-primary.xml.gz").write_bytes(data)
    mod_record = ""
    if modules:
        mdata = gzip.compress(mod_yaml.encode(), 6, mtime=0)
        msha = hashlib.sha256(mdata).hexdigest()
        (rd / f"{msha}-modules.yaml.gz").write_bytes(mdata)
        mod_record = (
            f'<data type="modules"><checksum type="sha256">{msha}</checksum>'
            f'<location href="repodata/{msha}-modules.yaml.gz"/><size>{len(mdata)}</size></data>\n'
        )
    (rd / "repomd.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<repomd xmlns="http://linux.duke.edu/metadata/repo">\n'
        f"<revision>{len(body)}</revision>\n"
        f'<data type="primary"><checksum type="sha256">{sha}</checksum>'
        f'<open-checksum type="sha256">{open_sum}</open-checksum>'
        f'<location href="repodata/{sha}-primary.xml.gz"/><size>{len(data)}</size></data>\n'
        f"{mod_record}</repomd>\n"
    )


def layer(name: str, parent: str, url: str, packages: list[str], arches: str = "", modules: str = "") -> str:
    return (
        f"options:\n  layer_type: base\n  name: {name}\n  pkg_manager: dnf\n  parent: '{parent}'\n"
        f"  gpgcheck: false\n  releasever: '9'\n  publish_local: true\n"
        + (f"  arches: {arches}\n" if arches else "")
        + f"repos:\n  - alias: BaseOS\n    url: '{url}'\n"
        + (f"modules:\n{modules}" if modules else "")
        + f"packages: [{', '.join(packages)}]\n"
    )


def timed(argv: list[str], env: dict[str, str], stdin: str | None = None) -> tuple[float, float]:
    """(wall, CPU user+sys) seconds of one fresh process: CPU time holds up on a loaded machine."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, input=stdin, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def arches_main(n: int) -> None:
    """`lock` of the 1-arch site against the same site for 2 arches (see the module docstring)."""
    work = Path(tempfile.mkdtemp(prefix="ig-resolve-bench-"))
    rnd = random.Random(3)
    leaves = [f"pkg{i:05d}" for i in rnd.sample(range(n - max(50, n // 15)), 100)]
    sites = {}
    for label, arches in (("1 arch", ""), ("2 arches", "[x86_64, aarch64]")):
        site = work / label.replace(" ", "")
        site.mkdir()
        url = f"file://{work}/mirror/$basearch"
        (site / "base.yaml").write_text(layer("base", "scratch", url, leaves[:60], arches))
        (site / "compute.yaml").write_text(
            layer("compute", "localhost/base:latest", url, leaves[60:], arches)
        )
        sites[label] = site
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    res: dict[str, list[tuple[float, float]]] = {}
    for r in range(ROUNDS):
        for label, site in sites.items():
            for a in ("x86_64", "aarch64"):
                write_repo(work / "mirror" / a, n, arch=a)
            (site / "imagegraph.lock").unlink(missing_ok=True)
            shutil.rmtree(work / "cache", ignore_errors=True)
            lock = [IMAGEGRAPH, "lock", str(site), "--update", "--state", str(work / "state" / "s.db")]
            res.setdefault(f"{label}: cold", []).append(timed(lock, env))
            res.setdefault(f"{label}: warm", []).append(timed(lock, env))
            for a in ("x86_64", "aarch64"):
                write_repo(work / "mirror" / a, n, extra=1 + r, arch=a)
            res.setdefault(f"{label}: moved", []).append(timed(lock, env))
    doc = (sites["2 arches"] / "imagegraph.lock").read_text()
    print(f"{n} packages per mirror; 2-arch lock: {doc.count('layer: ')} layer entries")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| run | wall median (s) | CPU median (s) |")
    for k, v in res.items():
        wall = statistics.median(w for w, _ in v)
        cpu = statistics.median(c for _, c in v)
        print(f"| {k} | {wall:.3f} | {cpu:.3f} |")
    shutil.rmtree(work, ignore_errors=True)


def modules_main(n: int) -> None:
    """`lock` against the mirror without and with its modules.yaml (see the module docstring)."""
    work = Path(tempfile.mkdtemp(prefix="ig-resolve-bench-"))
    rnd = random.Random(3)
    leaves = [f"pkg{i:05d}" for i in rnd.sample(range(n - max(50, n // 15)), 100)]
    site = work / "site"
    site.mkdir()
    url = f"file://{work}/mirror"
    (site / "base.yaml").write_text(layer("base", "scratch", url, [*leaves[:60], "mod001-pkg0"]))
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache")}
    lock = [IMAGEGRAPH, "lock", str(site), "--update", "--state", str(work / "state" / "s.db")]
    res: dict[str, list[tuple[float, float]]] = {}
    picked = {}
    for r in range(ROUNDS):
        for label, with_modules in (("without modules.yaml", False), ("with modules.yaml", True)):
            enable = "  enable: ['mod000:2']\n" if with_modules else ""  # no such module without it
            pkgs = [*leaves[60:], "mod000-pkg1"]
            (site / "compute.yaml").write_text(
                layer("compute", "localhost/base:latest", url, pkgs, "", enable)
            )
            write_repo(work / "mirror", n, modules=with_modules)
            (site / "imagegraph.lock").unlink(missing_ok=True)
            shutil.rmtree(work / "cache", ignore_errors=True)
            res.setdefault(f"{label}: cold", []).append(timed(lock, env))
            write_repo(work / "mirror", n, extra=1 + r, modules=with_modules)
            res.setdefault(f"{label}: moved", []).append(timed(lock, env))
            text = (site / "imagegraph.lock").read_text()
            picked[label] = sorted(
                " ".join(x.split()[1:3]) for x in text.splitlines() if x.startswith("  - mod0")
            )
    print(f"{n} packages + {max(4, n // 30) * 30} modular; modular packages locked: {picked}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| run | wall median (s) | CPU median (s) |")
    for k, v in res.items():
        wall = statistics.median(w for w, _ in v)
        cpu = statistics.median(c for _, c in v)
        print(f"| {k} | {wall:.3f} | {cpu:.3f} |")
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 3000
    if "--arches" in sys.argv:
        arches_main(n)
        return
    if "--modules" in sys.argv:
        modules_main(n)
        return
    work = Path(tempfile.mkdtemp(prefix="ig-resolve-bench-"))
    repo = work / "repo"
    write_repo(repo, n)
    url = f"file://{repo}"
    rnd = random.Random(3)
    leaves = [f"pkg{i:05d}" for i in rnd.sample(range(n - max(50, n // 15)), 100)]
    site = work / "site"
    site.mkdir()
    (site / "base.yaml").write_text(layer("base", "scratch", url, leaves[:60]))
    (site / "compute.yaml").write_text(layer("compute", "localhost/base:latest", url, leaves[60:]))
    cache = work / "cache"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    lock = [IMAGEGRAPH, "lock", str(site), "--update", "--state", str(work / "state" / "s.db")]
    subprocess.run(lock, env=env, check=True, capture_output=True)
    doc = (site / "imagegraph.lock").read_text()
    sizes = {
        f: sum(1 for _ in doc.split(f"layer: {f}")[1].split("layer:")[0].splitlines() if "sha256:" in _)
        for f in ("base.yaml", "compute.yaml")
    }

    # base's request for the helper, as lockfile/resolve build it
    primary = next((repo / "repodata").glob("*-primary.xml.gz"))
    req = json.dumps(
        {"arch": "x86_64", "repos": [{"alias": "BaseOS", "files": [str(primary)]}], "install": leaves[:60]}
    )
    reposdir = work / "reposd"
    reposdir.mkdir()
    (reposdir / "b.repo").write_text(f"[BaseOS]\nname=BaseOS\nbaseurl={url}\ngpgcheck=0\n")
    dnf_cli = [
        "dnf", "-q", f"--installroot={work / 'empty'}", f"--setopt=reposdir={reposdir}", "--noplugins",
        "--releasever=9", f"--setopt=cachedir={work / 'dnfcache'}", "install", "--assumeno", *leaves[:60],
    ]  # fmt: skip
    api = work / "api.py"
    api.write_text(
        "import dnf,sys\nb=dnf.Base()\n"
        f"b.conf.installroot={str(work / 'empty2')!r}\nb.conf.cachedir={str(work / 'dnfcache2')!r}\n"
        "b.conf.releasever='9'\n"
        f"b.repos.add_new_repo('BaseOS', b.conf, baseurl=[{url!r}], gpgcheck=False)\n"
        "b.fill_sack(load_system_repo=False)\n"
        f"[b.install(p) for p in {leaves[:60]!r}]\nb.resolve()\nprint(len(b.transaction.install_set))\n"
    )
    res: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("cold", "warm", "moved", "helper", "dnf-cli", "dnf-api")
    }
    for r in range(ROUNDS):
        write_repo(repo, n)  # back to the plain repository, no lock file, no metadata cache
        (site / "imagegraph.lock").unlink()
        shutil.rmtree(cache, ignore_errors=True)
        res["cold"].append(timed(lock, env))
        res["warm"].append(timed(lock, env))
        write_repo(repo, n, extra=1 + r)
        res["moved"].append(timed(lock, env))
        primary = next((repo / "repodata").glob("*-primary.xml.gz"))
        req = json.dumps(
            {
                "arch": "x86_64",
                "repos": [{"alias": "BaseOS", "files": [str(primary)]}],
                "install": leaves[:60],
            }
        )
        res["helper"].append(timed([SYSPY, str(HELPER)], env, req))
        shutil.rmtree(work / "dnfcache", ignore_errors=True)
        res["dnf-cli"].append(timed(["sh", "-c", " ".join(dnf_cli) + " >/dev/null 2>&1; true"], env))
        shutil.rmtree(work / "dnfcache2", ignore_errors=True)
        res["dnf-api"].append(timed([SYSPY, str(api)], env))
    print(f"{n} packages; locked: base {sizes['base.yaml']}, compute {sizes['compute.yaml']} packages")
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| run | wall median (s) | CPU median (s) |")
    for k, v in res.items():
        wall = statistics.median(w for w, _ in v)
        cpu = statistics.median(c for _, c in v)
        print(f"| {k} | {wall:.3f} | {cpu:.3f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
