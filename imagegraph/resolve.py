"""Resolving a layer's package set without installing anything: what `imagegraph lock` records.

For a dnf layer, `resolve_layer` depsolves the spec's `package_groups` (their
mandatory and default members, from the repository's comps) and `packages`
(for zypper, each pattern is the package providing `pattern() = <name>`, as
zypper's `-t pattern` picks it) against the layer's repositories for the
node's architecture (each arch of a multi-arch layer has its own set), with the installed set of its parent image
as the base; for an apt layer its `packages` (without recommends, as the
build; from scratch mmdebstrap's minbase first, then usr-is-merged), with
apt's choices where libsolv's would differ (solvhelper.py). A dnf layer's
`modules:` operations and the module state its parent leaves pick the active
module streams, and dnf's modular filtering hides packages before the
depsolve (modulemd.py; the repository's modules.yaml is read like its
primary). It returns the
exact packages the package step would install
(`LockedPackage`: name, epoch:version-release, arch, repository alias and
the package checksum from the repository metadata). The solver is libsolv,
dnf's own, through the system Python's `python3-solv` (`solvhelper.py` runs
as a subprocess: the bindings are a distribution package).

Metadata only: `repomd.xml`, then the primary (and comps) files it names,
each downloaded once per run and kept in the user's cache under its
checksum, so a re-resolve of an unchanged repository reads no primary file
over the network. Nothing is installed, no package is downloaded.

The base: a scratch parent has none; a layer parent's installed set is its
own base plus what its lock entry resolved, minus what its transaction
replaced and its `remove_packages`; an external parent's is read from the
image at its locked digest (`image_installed`). Layers whose parent's set
cannot be known (an ansible parent, an unreadable image) are not resolved:
their keys keep the repository fingerprints (lockfile.py decides).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arch import normalize_arch
from .cachedir import ensure_dir, user_cache_dir
from .redact import redact
from .spec import LayerSpec, packages_for_arch

SYSTEM_PYTHON = os.environ.get("IMAGEGRAPH_SYSTEM_PYTHON", "/usr/bin/python3")
HELPER = Path(__file__).with_name("solvhelper.py")

Fetch = Callable[[str, str | None], bytes]


class ResolveError(Exception):
    """A layer's package set cannot be resolved (no such package, conflicts, metadata unreadable)."""


@dataclass(frozen=True, order=True)
class LockedPackage:
    """One package of a resolved set; `evr` always carries its epoch (`0:1.0-1`)."""

    name: str
    evr: str
    arch: str
    repo: str = ""
    checksum: str = ""

    @property
    def ident(self) -> tuple[str, str]:
        return (self.name, self.arch)

    @property
    def version(self) -> str:
        """As people write it: without a zero epoch."""
        return self.evr.removeprefix("0:")

    @property
    def nevra(self) -> str:
        """What `dnf install` takes to mean exactly this package."""
        return f"{self.name}-{self.evr}.{self.arch}"

    def line(self) -> str:
        """The lock file's one line per package."""
        return " ".join(x for x in (self.name, self.evr, self.arch, self.repo, self.checksum) if x)

    @classmethod
    def parse(cls, line: str) -> LockedPackage:
        parts = str(line).split()
        if len(parts) < 3:
            raise ValueError(f"not 'name epoch:version-release arch repo checksum': {line!r}")
        return cls(*parts[:5])

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "evr": self.evr,
            "arch": self.arch,
            "repo": self.repo,
            "checksum": self.checksum,
        }


def locked_nevras(inputs: dict) -> tuple[str, ...] | None:
    """The exact packages a key document's locked set installs (None: the layer has no locked set)."""
    lines = (inputs.get("upstream") or {}).get("packages")
    if not isinstance(lines, list):
        return None
    pkgs = [LockedPackage.parse(line) for line in lines]
    if inputs.get("pkg_manager") == "apt":
        return tuple(f"{p.name}={p.evr}" for p in pkgs)
    if inputs.get("pkg_manager") == "zypper":  # a capability: name.arch = [epoch:]version-release
        return tuple(f"{p.name}.{p.arch}={p.version}" for p in pkgs)
    return tuple(p.nevra for p in pkgs)


def with_epoch(evr: str) -> str:
    return evr if re.match(r"^\d+:", evr) else f"0:{evr}"


def solver_evr(evr: str) -> str:
    """libsolv's spelling: no epoch when it is 0."""
    return evr.removeprefix("0:")


# ------------------------------------------------------------------ repository metadata


@dataclass
class RepoData:
    """One repository's metadata files, local paths: rpm-md primary (+ comps), or apt Packages."""

    alias: str
    files: list[Path]
    comps: Path | None = None
    priority: int | None = None
    modules: Path | None = None  # modules.yaml (modulemd v2 + modulemd-defaults v1)
    hotfixes: bool = False  # module_hotfixes=1: dnf's modular filtering leaves it alone


def _release_sha256(release: bytes) -> dict[str, str]:
    """path -> sha256 from an apt Release / InRelease file's SHA256 section."""
    out: dict[str, str] = {}
    section = False
    for raw in release.decode(errors="replace").splitlines():
        if not raw.startswith(" "):
            section = raw.strip() == "SHA256:"
            continue
        parts = raw.split()
        if section and len(parts) == 3:
            out[parts[2]] = parts[0]
    return out


def _repomd_files(repomd: bytes) -> dict[str, tuple[str, str]]:
    """data type -> (href, checksum) from a repomd.xml."""
    import xml.etree.ElementTree as ET  # `plan` reads lock files without parsing any XML

    root = ET.fromstring(repomd)
    out = {}
    for data in root:
        if not data.tag.endswith("data"):
            continue
        loc = next((c for c in data if c.tag.endswith("location")), None)
        chk = next((c for c in data if c.tag.endswith("}checksum") or c.tag == "checksum"), None)
        if loc is not None:
            out[data.get("type", "")] = (
                loc.get("href", ""),
                (chk.text or "").strip() if chk is not None else "",
            )
    return out


def metadata_cache() -> Path:
    base = user_cache_dir()
    path = (base / "repodata") if base else Path(tempfile.gettempdir()) / f"imagegraph-repodata-{os.getuid()}"
    ensure_dir(path)
    return path


class MetadataCache:
    """Repository metadata fetched once per run (per repomd) and kept by checksum across runs."""

    def __init__(self, fetch: Fetch, directory: Path | None = None):
        self.fetch = fetch
        self.dir = directory or metadata_cache()
        self._repomd: dict[str, bytes] = {}
        self.downloads = 0

    def repomd(self, url: str, proxy: str | None) -> bytes:
        if url not in self._repomd:
            self._repomd[url] = self.fetch(url, proxy)
        return self._repomd[url]

    def _file(self, base: str, href: str, checksum: str, proxy: str | None) -> Path:
        name = checksum or hashlib.sha256(href.encode()).hexdigest()
        # Packages.xz and friends keep their suffix: libsolv's xfopen decompresses by it
        base_name = Path(href).name
        dest = self.dir / (base_name if base_name.startswith(name) else f"{name}-{base_name}")
        if dest.is_file() and checksum:
            return dest
        data = self.fetch(base + href, proxy)
        self.downloads += 1
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return dest

    def repo(
        self, alias: str, url: str, proxy: str | None, priority: int | None = None, hotfixes: bool = False
    ) -> RepoData:
        base = url if url.endswith("/") else url + "/"
        files = _repomd_files(self.repomd(base + "repodata/repomd.xml", proxy))
        if "primary" not in files:
            raise ResolveError(f"repository {alias} ({redact(url)}): repomd.xml names no primary metadata")
        primary = self._file(base, *files["primary"], proxy)
        comps = None
        group = files.get("group") or files.get("group_gz")
        if group:
            comps = self._file(base, *group, proxy)
        modules = self._file(base, *files["modules"], proxy) if "modules" in files else None
        return RepoData(alias, [primary], comps, priority, modules, hotfixes)

    def deb_repo(
        self, alias: str, url: str, suite: str, components: Iterable[str], arch: str, proxy: str | None
    ) -> RepoData:
        """An apt repository's Packages indices of `suite` for `arch` (from its Release file)."""
        base = (url if url.endswith("/") else url + "/") + f"dists/{suite}/"
        release, last = None, None
        for name in ("InRelease", "Release"):
            try:
                release = self.repomd(base + name, proxy)
                break
            except Exception as exc:  # FetchError: try the other name, as apt does
                last = exc
        if release is None:
            raise ResolveError(f"repository {alias} ({redact(url)}): no Release file for {suite}: {last}")
        sums = _release_sha256(release)
        files = []
        for comp in components:
            stem = f"{comp}/binary-{arch}/Packages"
            found = next((stem + ext for ext in (".xz", ".gz", "") if stem + ext in sums), None)
            if found is None:
                raise ResolveError(f"repository {alias} ({redact(url)}): {suite}'s Release lists no {stem}")
            files.append(self._file(base, found, sums[found], proxy))
        return RepoData(alias, files)


def _read_maybe_compressed(path: Path) -> bytes:
    import gzip
    import lzma

    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":  # zstd (modules.yaml.zst): no stdlib module before 3.14
        import subprocess

        try:
            return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise ResolveError(f"cannot decompress {path.name} (zstd): {exc}") from exc
    return data


def group_members(repos: Iterable[RepoData], group: str) -> list[str]:
    """A comps group's mandatory and default packages, by id or name (`@` prefix allowed), as dnf."""
    import xml.etree.ElementTree as ET

    want = group.removeprefix("@").lower()
    for r in repos:
        if r.comps is None:
            continue
        root = ET.fromstring(_read_maybe_compressed(r.comps))
        for g in root.iter("group"):
            names = [(g.findtext("id") or "").lower()] + [(n.text or "").lower() for n in g.findall("name")]
            if want in names:
                return [
                    (p.text or "").strip()
                    for p in g.iter("packagereq")
                    if p.get("type", "mandatory") in ("mandatory", "default")
                ]
    raise ResolveError(f"no group {group!r} in the repositories' comps")


# ------------------------------------------------------------------ external parents


@dataclass
class ImageContents:
    """What an external parent holds that a child's depsolve starts from."""

    format: str  # rpm | deb
    packages: list[LockedPackage]
    modules: dict[str, str | None] = field(default_factory=dict)  # its /etc/dnf/modules.d


def image_installed(
    ref: str, pull_opts: Iterable[str] = (), runner: Any = None, arch: str | None = None
) -> tuple[str, list[LockedPackage]]:
    """An external parent's installed set: (format rpm|deb, packages) (see `image_contents`)."""
    seen = image_contents(ref, pull_opts, runner, arch)
    return seen.format, seen.packages


def image_contents(
    ref: str, pull_opts: Iterable[str] = (), runner: Any = None, arch: str | None = None
) -> ImageContents:
    """An external parent's installed set, read from its package database, and its dnf module
    state (/etc/dnf/modules.d: the streams it enabled, which its children's dnf keeps).

    `ref` should carry the locked digest (`name@sha256:...`): the answer is then kept in the
    user's cache under it, since an image by digest never changes. The image is pulled when it
    is not in local storage, mounted, and read by the host's rpm or dpkg-query (packages.py):
    nothing inside it runs. `arch` (dnf's basearch; default the host's) picks the image of a
    multi-arch index. Raises ResolveError when it cannot be read.
    """
    from .arch import host_arch, normalize_arch
    from .build.container import buildah_env
    from .modulemd import read_modules_d, state_lines
    from .packages import InventoryStatus, read_inventory
    from .rootfs import resolve_in_root
    from .runner import CommandError, Runner

    target = normalize_arch(arch) if arch else host_arch()
    # The platform is always named and the image always asked for: with `--pull=missing` and no
    # `--arch`, buildah takes whichever image of the reference is local (another arch's, pulled
    # for that arch's entry) with only a warning.
    plat = ["--arch", target.oci, "--os", "linux"]
    ident = ref if target == host_arch() else f"{ref} {target}"
    cached = metadata_cache() / "images" / (hashlib.sha256(ident.encode()).hexdigest() + ".json")
    if "@sha256:" in ref and cached.is_file():
        doc = json.loads(cached.read_text())
        if "modules" in doc:  # a cache entry from before modules were read is read again
            from .modulemd import parse_state

            pkgs = [LockedPackage.parse(x) for x in doc["packages"]]
            return ImageContents(doc["format"], pkgs, parse_state(doc["modules"]))
    runner = runner or Runner()
    name = f"imagegraph-lock-{os.getpid()}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"
    env = buildah_env()
    try:
        runner.run(
            ["buildah", "from", "--pull=always", *plat, *pull_opts, "--name", name, ref],
            step="lock",
            env=env,
            capture=True,
        )
        got = runner.output(
            ["buildah", "inspect", "--format", "{{.OCIv1.Architecture}}", name], step="lock", env=env
        ).strip()
        if got != target.oci:  # buildah only warns when the reference offers no such platform
            raise ResolveError(f"{redact(ref)} offers no {target} image (got {got or 'no architecture'})")
        mount = Path(runner.output(["buildah", "mount", name], step="lock", env=env).strip())
        inv = read_inventory(mount, runner, step="lock")
        modules_d = resolve_in_root(mount, "/etc/dnf/modules.d")
        modules = read_modules_d(modules_d) if modules_d else {}
    except (CommandError, OSError) as exc:
        raise ResolveError(
            f"cannot read the installed packages of {redact(ref)}: {redact(str(exc))[:300]}"
        ) from exc
    finally:
        runner.run(["buildah", "rm", name], step="lock", env=env, check=False, capture=True)
    if inv.status != InventoryStatus.KNOWN or inv.format is None:
        raise ResolveError(f"{redact(ref)} has no package database that can be read ({inv.reason})")
    fmt = str(inv.format)
    pkgs = sorted(
        LockedPackage(p.name, with_epoch(p.version) if fmt == "rpm" else p.version, p.arch, "@parent")
        for p in inv.packages
    )
    if "@sha256:" in ref:
        ensure_dir(cached.parent)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        doc = {"format": fmt, "packages": [p.line() for p in pkgs], "modules": state_lines(modules)}
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, cached)
    return ImageContents(fmt, pkgs, modules)


# ----------------------------------------------------------------------------- solving


@dataclass
class Resolution:
    packages: list[LockedPackage]
    erased: list[tuple[str, str]] = field(default_factory=list)  # (name, arch) the transaction replaced
    bare: list[str] = field(default_factory=list)  # installed packages without metadata anywhere
    modules: dict[str, str | None] = field(default_factory=dict)  # the module state it leaves (modulemd.py)


def solve(
    repos: list[RepoData],
    lookup: list[RepoData],
    installed: Iterable[LockedPackage],
    install: list[str],
    arch: str,
    deb: bool = False,
    recommends: bool = True,
    modules: dict | None = None,
) -> Resolution:
    """One depsolve through the libsolv helper; raises ResolveError with the solver's words.
    `modules`: dnf's modular filtering (`modulemd.filtering`), applied before the depsolve."""
    import subprocess

    req = {
        "arch": arch,
        "disttype": "deb" if deb else "rpm",
        "recommends": recommends,
        "repos": [
            {"alias": r.alias, "files": [str(f) for f in r.files], "priority": r.priority} for r in repos
        ],
        "lookup": [{"alias": r.alias, "files": [str(f) for f in r.files]} for r in lookup],
        "installed": [{"name": p.name, "evr": solver_evr(p.evr), "arch": p.arch} for p in installed],
        "install": install,
    }
    if modules:
        req["modules"] = modules
    try:
        proc = subprocess.run(
            [SYSTEM_PYTHON, str(HELPER)],
            input=json.dumps(req),
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ResolveError(f"cannot run the depsolver ({SYSTEM_PYTHON}): {exc}") from exc
    if proc.returncode != 0 or not proc.stdout.strip():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "No module named 'solv'" in proc.stderr:
            tail = "python3-solv is not installed (apt-get install python3-solv)"
        raise ResolveError(f"the depsolver failed: {tail}")
    ans = json.loads(proc.stdout)
    if not ans.get("ok"):
        raise ResolveError("; ".join(ans.get("problems") or ["unsolvable"]))
    return Resolution(
        packages=sorted(
            LockedPackage(
                p["name"], p["evr"] if deb else with_epoch(p["evr"]), p["arch"], p["repo"], p["checksum"]
            )
            for p in ans["packages"]
        ),
        erased=[(p["name"], p["arch"]) for p in ans.get("erased", [])],
        bare=ans.get("bare", []),
    )


def installed_after(
    base: Iterable[LockedPackage],
    entry_packages: Iterable[LockedPackage],
    spec: LayerSpec,
    erased: Iterable[tuple[str, str]] = (),
) -> list[LockedPackage]:
    """The installed set a layer leaves to its children: base, upgraded by its set, minus removals."""
    gone = set(erased)
    by = {p.ident: p for p in base if p.ident not in gone}
    for p in entry_packages:
        by[p.ident] = p  # an upgrade replaces the installed package of the same name and arch
    removed = set(spec.remove_packages)
    return sorted(p for p in by.values() if p.name not in removed)


def base_digest(base: Iterable[LockedPackage], modules: Iterable[str] = ()) -> str:
    """The installed set a layer was resolved on (its parent's, from the lock), and its parent's
    dnf module state (`modulemd.state_lines`; none leaves the digest as it always was)."""
    text = "\n".join(p.line() for p in sorted(base))
    if mods := list(modules):
        text += "\nmodules:\n" + "\n".join(mods)
    return hashlib.sha256(text.encode()).hexdigest()


def request_digest(spec: LayerSpec, repos: list[tuple[str, str]], arch: str) -> str:
    """What of the spec a layer's resolution depends on: when it moves, the lock entry is stale."""
    doc = {
        "arch": arch,
        "pkg_manager": spec.pkg_manager,
        "releasever": spec.releasever,
        "repos": sorted(repos),
        "package_groups": list(spec.package_groups),
        "packages": list(packages_for_arch(spec, normalize_arch(arch))),  # this arch's list
        "remove_packages": list(spec.remove_packages),
        "modules": [[s, list(i)] for s, i in spec.modules],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def resolve_layer(
    spec: LayerSpec,
    repos: list[RepoData],
    lookup: list[RepoData],
    base: list[LockedPackage],
    arch: str,
    module_state: dict[str, str | None] | None = None,
) -> Resolution:
    """What `spec`'s package step installs on `base` (see the module docstring); for dnf, with
    the module state its parent leaves (`module_state`) and its own `modules:` operations, after
    dnf's modular filtering of the repositories (modulemd.py)."""
    packages = packages_for_arch(spec, normalize_arch(arch))  # packages_by_arch: this arch's too
    if spec.pkg_manager == "apt":
        # `name=version` is apt's pin; libsolv spells it as a relation
        install = [p.replace("=", " = ", 1) if "=" in p else p for p in packages]
        if spec.is_scratch:  # mmdebstrap --variant=minbase: Essential:yes, Priority:required, apt
            install = minbase(repos) + install
        if not install:
            return Resolution([])
        res = solve(repos, lookup, base, install, deb_arch(arch), deb=True, recommends=False)
        if spec.is_scratch and not any(p.name == "usr-is-merged" for p in res.packages):
            # mmdebstrap's merged-/usr hook installs usr-is-merged after the packages, when the suite has it
            try:
                more = solve(
                    repos, [], res.packages, ["usr-is-merged"], deb_arch(arch), deb=True, recommends=False
                )
            except ResolveError:
                return res  # an older suite: no such package
            res = Resolution(sorted(res.packages + more.packages), res.erased, res.bare)
        return res
    install: list[str] = []
    meta, state, filt = None, dict(module_state or {}), None
    if spec.pkg_manager == "dnf":
        from .modulemd import ModuleError, apply_operations, filtering

        meta = module_metadata(repos)
        try:  # repos -> modules -> groups -> packages, as the build runs them
            state, install = apply_operations(spec.modules, state, meta)
        except ModuleError as exc:
            raise ResolveError(str(exc)) from exc
        filt = filtering(meta, state) if meta else None
    for g in spec.package_groups:
        if spec.pkg_manager == "zypper":  # `zypper install -t pattern g`: the package that provides it
            install.append(f"pattern() = {g}")
        else:
            install += group_members(repos, g)
    install += list(packages)
    res = solve(repos, lookup, base, install, arch, modules=filt) if install else Resolution([])
    if meta:
        from .modulemd import state_after

        state = state_after(meta, state, [(p.name, p.evr, p.arch) for p in res.packages])
    res.modules = state
    return res


_module_cache: dict[tuple[tuple[str, str, bool], ...], Any] = {}


def module_metadata(repos: Iterable[RepoData]) -> Any:
    """The `modulemd.ModuleMetadata` of the repositories' modules.yaml files: parsed once, then
    kept as JSON beside the (checksum-named) file in the metadata cache, and once per run."""
    from .modulemd import ModuleError, ModuleMetadata, merge_doc, parse_modules, to_doc

    repos = list(repos)
    key = tuple((r.alias, str(r.modules), r.hotfixes) for r in repos if r.modules is not None or r.hotfixes)
    if key in _module_cache:
        return _module_cache[key]
    meta = ModuleMetadata()
    for r in repos:
        if r.hotfixes:
            meta.hotfix_repos.add(r.alias)
        if r.modules is None:
            continue
        parsed = r.modules.with_name(r.modules.name + ".json")
        source = hashlib.sha256(r.modules.read_bytes()).hexdigest()  # a file without a checksum may change
        try:
            doc = json.loads(parsed.read_text())
            if doc.get("source") != source:
                raise ValueError("stale")
        except (OSError, ValueError):
            text = _read_maybe_compressed(r.modules).decode("utf-8", errors="replace")
            try:
                doc = {**to_doc(parse_modules(text, r.alias)), "source": source}
            except ModuleError as exc:
                raise ResolveError(str(exc)) from exc
            tmp = parsed.with_name(f".{parsed.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, parsed)
        merge_doc(meta, doc, r.alias)
    _module_cache[key] = meta
    return meta


def minbase(repos: Iterable[RepoData]) -> list[str]:
    """What mmdebstrap's minbase variant installs before `--include`: Essential:yes and
    Priority:required packages of the indices, and apt."""
    import re as re_

    names = {"apt"}
    stanza = re_.compile(rb"^Package: (\S+)$(.*?)(?:\n\n|\Z)", re_.M | re_.S)
    for r in repos:
        for f in r.files:
            for m in stanza.finditer(_read_maybe_compressed(f)):
                body = m.group(2)
                if b"\nEssential: yes" in body or b"\nPriority: required" in body:
                    names.add(m.group(1).decode())
    return sorted(names)


def deb_arch(basearch: str) -> str:
    """dnf's $basearch -> Debian's architecture name."""
    from .arch import normalize_arch

    return normalize_arch(basearch).debian
