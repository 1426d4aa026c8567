"""The upstream lock file: what the package repositories and external parents looked like.

A layer's spec can stay the same while its repositories change under it
(security updates). `imagegraph lock` writes `imagegraph.lock` beside the
specs with a fingerprint of every repository the layers use and the manifest
digest of every external parent; keys include the locked fingerprints, so a
`lock --update` that sees a new repository revision changes exactly the keys
of the layers using that repository (and, through the parent chain, their
descendants). The file is meant to be committed: it records which upstream
state a build came from, and without `--update` it does not move.

Fingerprints:

- dnf / zypper (rpm-md): `<url>/repodata/repomd.xml`: its `<revision>` (for
  people) and the sha256 of the file (for keys). `$releasever` and
  `$basearch` are substituted as dnf would (the spec's releasever, this host's
  architecture).
- apt: `<url>/dists/<suite>/InRelease` (or `Release`): its `Date:` and sha256.
- a `.repo` file URL: the sha256 of its content.
- an external parent: the manifest digest of its reference; `plan` and `up`
  then use the locked digest instead of asking the registry (reproducible,
  fast, works offline).

Package sets (`layers:`): per layer and architecture, the exact packages its
package step installs, resolved by resolve.py on its parent's installed set,
one line each (`name epoch:version-release arch repo checksum`). A layer
with a set is keyed by it instead of its repositories' fingerprints; the
fingerprints then only say whether a re-resolve is needed. `request` (the
spec fields the set depends on) and `base` (the parent's set, and the dnf
module streams its image enabled) say when an entry is stale. `modules` lists
the module streams the layer's image leaves enabled (or disabled): its
children start from them, and its key includes them.

Fetches are retried (bounded, `IMAGEGRAPH_RETRY_*` like registry requests).
A repository that cannot be fetched is an error naming it and the layer files
that use it, and the lock file is not written: an unreachable repository is
never taken as unchanged. Credentials in repository URLs never reach the file
or a message: entries are keyed by alias and the redacted URL.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arch import host_arch
from .errors import Diagnostic, SpecError
from .project import LOCK_FILE
from .redact import redact
from .resolve import LockedPackage
from .retry import RetryPolicy, TransientError
from .spec import LayerSpec, Repo

LOCK_FORMAT = 1
HEADER = (
    "# imagegraph.lock: upstream fingerprints and resolved package sets that layer keys include.\n"
    "# Written by `imagegraph lock`, refreshed by `imagegraph lock --update`; commit it.\n"
)
DEFAULT_APT_SUITE = "bookworm"  # as imagegraph.build.apt
DEFAULT_APT_MIRROR = "http://deb.debian.org/debian"

Fetch = Callable[[str, str | None], bytes]


class FetchError(Exception):
    """A URL could not be fetched (after retries): `transient` when retrying might have helped."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


# ------------------------------------------------------------------- repositories


@dataclass(frozen=True)
class RepoSource:
    """One repository as a layer uses it, with the URL resolved as the package manager would."""

    alias: str
    kind: str  # rpm-md, apt, repo-file
    url: str  # resolved; may hold credentials: for fetching only, never stored or shown
    suite: str | None = None  # apt
    proxy: str | None = None
    priority: int | None = None  # a `.repo` file section's (the spec's own are read from spec.repos)
    hotfixes: bool = False  # a `.repo` file section's module_hotfixes=1

    @property
    def shown_url(self) -> str:
        return redact(self.url)

    @property
    def entry_id(self) -> tuple[str, str, str]:
        return (self.alias, self.shown_url, self.suite or "")

    def fingerprint_url(self) -> list[str]:
        """The URLs whose content is the fingerprint, in the order to try them."""
        base = self.url if self.url.endswith("/") else self.url + "/"
        if self.kind == "repo-file":
            return [self.url]
        if self.kind == "apt":
            return [f"{base}dists/{self.suite}/InRelease", f"{base}dists/{self.suite}/Release"]
        return [f"{base}repodata/repomd.xml"]


def host_basearch() -> str:
    """dnf's $basearch for this host (x86_64, aarch64, ppc64le, s390x)."""
    m = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64", "i686": "i386", "i586": "i386"}.get(m, m)


def substitute(url: str, releasever: str | None, basearch: str | None = None) -> str:
    """dnf's variable substitution for the two variables spec URLs use."""
    values = {"releasever": releasever or "", "basearch": basearch or host_basearch()}
    values["arch"] = values["basearch"]

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return values.get(name, m.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, url)


def repo_sources(spec: LayerSpec, basearch: str | None = None) -> list[RepoSource]:
    """The repositories a layer installs from when built for `basearch` (default: the host's;
    none for ansible layers). A dnf URL's `$basearch` is that arch's: one repository per arch."""
    if spec.layer_type == "ansible" or not spec.pkg_manager:
        return []
    out: list[RepoSource] = []
    if spec.pkg_manager == "apt":
        suite = next((r.suite for r in spec.repos if r.suite), None) or spec.releasever or DEFAULT_APT_SUITE
        # A scratch apt layer without repos bootstraps from the Debian archive (imagegraph.build.apt).
        repos = spec.repos or ((Repo(alias="debian", url=DEFAULT_APT_MIRROR),) if spec.is_scratch else ())
        for r in repos:
            out.append(RepoSource(r.alias, "apt", r.url, r.suite or suite, spec.proxy))
        return out
    for r in spec.repos:
        url = substitute(r.url, spec.releasever, basearch)
        kind = "repo-file" if r.url.endswith(".repo") else "rpm-md"
        out.append(RepoSource(r.alias, kind, url, None, spec.proxy))
    return out


def _repomd_revision(data: bytes) -> str | None:
    m = re.search(rb"<revision>\s*([^<\s]+)\s*</revision>", data)
    return m.group(1).decode(errors="replace") if m else None


def _release_date(data: bytes) -> str | None:
    m = re.search(rb"^Date:\s*(.+?)\s*$", data, re.MULTILINE)
    return m.group(1).decode(errors="replace") if m else None


def fingerprint_repo(src: RepoSource, fetch: Fetch) -> dict[str, Any]:
    """The lock entry for one repository (without `layers`); raises FetchError."""
    urls = src.fingerprint_url()
    data = None
    last: FetchError | None = None
    used = urls[0]
    for url in urls:
        try:
            data = fetch(url, src.proxy)
            used = url
            break
        except FetchError as exc:
            last = exc
            if exc.transient:
                break  # the server is down: the fallback URL will not answer either
    if data is None:
        assert last is not None
        raise last
    entry: dict[str, Any] = {"alias": src.alias, "url": src.shown_url, "type": src.kind}
    if src.kind == "apt":
        entry["suite"] = src.suite
        entry["file"] = used.rsplit("/", 1)[1]
        date = _release_date(data)
        if date:
            entry["date"] = date
    elif src.kind == "rpm-md":
        rev = _repomd_revision(data)
        if rev:
            entry["revision"] = rev
    entry["sha256"] = hashlib.sha256(data).hexdigest()
    return entry


def http_fetch(url: str, proxy: str | None = None) -> bytes:
    """GET a URL (file:// too), retrying transient failures with the one retry policy (`imagegraph.retry`)."""
    import requests

    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        from urllib.request import url2pathname  # lazily, with the thread pool: `plan` only reads

        try:
            return Path(url2pathname(parsed.path)).read_bytes()
        except OSError as exc:
            raise FetchError(f"cannot read {parsed.path}: {exc.strerror}") from exc
    proxies = {"http": proxy, "https": proxy} if proxy else None

    def once() -> bytes:
        try:
            resp = requests.get(url, timeout=(10, 60), proxies=proxies)
        except requests.RequestException as exc:
            raise TransientError(type(exc).__name__, redact(str(exc))) from exc
        if resp.status_code == 429 or resp.status_code >= 500:
            raise TransientError(f"HTTP {resp.status_code}", status=resp.status_code)
        if resp.status_code != 200:
            raise FetchError(f"HTTP {resp.status_code} for {redact(url)}")
        return resp.content

    policy = RetryPolicy.from_env()
    try:
        return policy.call(once)
    except TransientError as exc:
        raise FetchError(
            f"unreachable after {policy.attempts} attempts: {redact(str(exc))}", transient=True
        ) from exc


# ------------------------------------------------------------------------- the file


@dataclass
class LockFile:
    """The parsed lock file: repositories by (alias, redacted URL, suite), parents by reference."""

    path: Path
    repositories: dict[tuple[str, str, str], dict] = field(default_factory=dict)
    parents: dict[str, dict] = field(default_factory=dict)
    # (layer file, arch) -> {layer, arch, request, base, packages: [LockedPackage.line()]}
    layers: dict[tuple[str, str], dict] = field(default_factory=dict)
    resolve: bool = True  # False: `lock --no-resolve`, fingerprints only (remembered in the file)

    def layer_entry(self, spec: LayerSpec, arch: str | None = None) -> dict | None:
        """The resolved package set of a layer, if locked and still for this spec (else None)."""
        from .resolve import request_digest

        entry = self.layers.get((_layer_file(spec, self.path.parent), arch or host_basearch()))
        if entry is None or entry.get("request") != request_digest(
            spec, _repo_ids(spec, entry["arch"]), entry["arch"]
        ):
            return None  # a spec edited since `lock` ran: the lock no longer says what it installs
        return entry

    def stale_layers(self, lg: Any) -> list[str]:
        """Layer files whose resolved set `lock` (and so `up`) would resolve again: an entry made
        for another version of the spec, or none yet for a layer that installs packages."""
        if not (self.resolve and self.layers):
            return []
        root = self.path.parent
        out = []
        for lid in lg.order():
            spec = lg.spec(lid)
            installs = spec.packages or spec.packages_by_arch or spec.package_groups or spec.modules
            if unresolvable(spec) is not None or not installs:
                continue
            for a in lg.arches(lid):
                if self.layer_entry(spec, str(a)) is None:
                    out.append(_layer_file(spec, root))
                    break
        return out

    def locked_packages(self, spec: LayerSpec, arch: str | None = None) -> list[LockedPackage] | None:
        entry = self.layer_entry(spec, arch)
        return None if entry is None else [LockedPackage.parse(line) for line in entry["packages"]]

    def repo_entry(self, src: RepoSource) -> dict | None:
        return self.repositories.get(src.entry_id)

    def upstream_of(self, spec: LayerSpec, arch: str | None = None) -> dict[str, Any]:
        """Key inputs for a layer: its resolved package set when locked, else `repo:<alias>` -> sha256.

        With a resolved set, a repository that moved changes the key only when a package the
        layer installs changed (version, release, checksum), not when anything else in it did.
        """
        entry = self.layer_entry(spec, arch)  # arch: dnf's basearch, default this host's
        if entry is not None:
            if entry.get("modules"):  # the dnf module streams enabled in the image it leaves
                return {"packages": list(entry["packages"]), "modules": list(entry["modules"])}
            return {"packages": list(entry["packages"])}
        out = {}
        for src in repo_sources(spec, arch):
            entry = self.repo_entry(src)
            if entry and entry.get("sha256"):
                out[f"repo:{src.alias}"] = entry["sha256"]
        return out

    def parent_digest(self, ref: str) -> str | None:
        entry = self.parents.get(_normalize(ref))
        return entry.get("digest") if entry else None

    def to_document(self) -> dict:
        repos = [self.repositories[k] for k in sorted(self.repositories)]
        parents = [self.parents[k] for k in sorted(self.parents)]
        doc: dict[str, Any] = {"version": LOCK_FORMAT, "repositories": repos, "parents": parents}
        if not self.resolve:
            doc["resolve"] = False
        if self.layers:
            doc["layers"] = [self.layers[k] for k in sorted(self.layers)]
        return doc

    def text(self) -> str:
        import io

        try:  # libyaml's emitter: a lock of thousands of package lines in milliseconds
            import yaml

            return HEADER + yaml.dump(
                to_plain(self.to_document()),
                Dumper=yaml.CSafeDumper,
                default_flow_style=False,
                sort_keys=False,
                width=4096,
            )
        except (ImportError, AttributeError):
            pass
        from ruamel.yaml import YAML

        y = YAML()
        y.default_flow_style = False
        y.width = 4096  # one URL per line, however long
        buf = io.StringIO()
        y.dump(to_plain(self.to_document()), buf)
        return HEADER + buf.getvalue()

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.text())
        os.replace(tmp, self.path)


def to_plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    return obj


def _normalize(ref: str) -> str:
    from .reference import normalize_reference

    try:
        return normalize_reference(ref)
    except ValueError:
        return ref


def lock_path(root: Path) -> Path:
    return Path(root) / LOCK_FILE


def load_lock(root: Path) -> LockFile | None:
    """The project's lock file, or None when there is none. A malformed one is a spec error."""
    path = lock_path(root)
    if not path.is_file():
        return None
    from ruamel.yaml import YAML, YAMLError

    def bad(msg: str) -> SpecError:
        return SpecError(
            [Diagnostic(str(path), 0, 0, msg, hint="regenerate it: rm imagegraph.lock; imagegraph lock")]
        )

    try:
        from .yamlload import Unsupported, fast_load

        text = path.read_text(encoding="utf-8")
        doc = fast_load(text)  # libyaml; ruamel for what it cannot promise to read identically
        if isinstance(doc, Unsupported):
            doc = YAML(typ="safe").load(text)
        doc = doc or {}
    except (YAMLError, OSError, ValueError) as exc:  # ValueError: not UTF-8
        raise bad(f"cannot read the lock file: {exc}") from exc
    except Exception as exc:  # the YAML library raises assorted errors on hostile input
        raise bad(f"cannot read the lock file: {type(exc).__name__}") from exc
    if not isinstance(doc, dict) or doc.get("version") != LOCK_FORMAT:
        raise bad(f"not an imagegraph lock file of format {LOCK_FORMAT}")
    for section in ("repositories", "parents", "layers"):
        if not isinstance(doc.get(section) or [], list):
            raise bad(f"'{section}' must be a list")

    def strings(e: Any, *names: str) -> bool:
        return isinstance(e, dict) and all(isinstance(e.get(n), str) for n in names)

    if not isinstance(doc.get("resolve", True), bool):
        raise bad("'resolve' must be true or false")
    lock = LockFile(path, resolve=doc.get("resolve", True))
    for e in doc.get("repositories") or []:
        if not strings(e, "alias", "url", "sha256"):
            raise bad(f"repository entry without alias, url and sha256: {e!r}")
        lock.repositories[(str(e["alias"]), str(e["url"]), str(e.get("suite") or ""))] = dict(e)
    for e in doc.get("parents") or []:
        if not strings(e, "reference", "digest"):
            raise bad(f"parent entry without reference and digest: {e!r}")
        lock.parents[str(e["reference"])] = dict(e)
    for e in doc.get("layers") or []:
        lines = e.get("packages") or [] if isinstance(e, dict) else None
        if not strings(e, "layer", "arch", "request") or not isinstance(lines, list):
            raise bad(f"layer entry without layer, arch, request and packages: {e!r}")
        if not all(isinstance(x, str) for x in lines):
            raise bad(f"layer {e['layer']}: every package is one line of text")
        try:
            [LockedPackage.parse(line) for line in e.get("packages") or []]
        except ValueError as exc:
            raise bad(f"layer {e['layer']}: {exc}") from exc
        lock.layers[(str(e["layer"]), str(e["arch"]))] = {**e, "packages": list(e.get("packages") or [])}
    return lock


# --------------------------------------------------------------------------- locking


@dataclass
class LockChange:
    what: str  # "repository" or "parent"
    name: str  # alias or reference
    url: str  # redacted URL (repositories) or reference
    change: str  # added, updated, unchanged, removed
    old: str | None = None
    new: str | None = None
    layers: list[str] = field(default_factory=list)
    # what="packages": per package, "openssl 3.0.7-25.el9 -> 3.0.7-27.el9 (BaseOS)"; and the arch
    packages: list[str] = field(default_factory=list)
    arch: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v not in (None, [])}


@dataclass
class LockReport:
    """What `lock` found and did. Nothing is written when `errors` is not empty."""

    path: Path
    update: bool
    changes: list[LockChange] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    written: bool = False
    dry_run: bool = False
    notes: list[str] = field(default_factory=list)  # layers whose package set is not resolved, and why
    # The lock file as written (or, with dry_run, as it would be): what `plan` keys by after a re-resolve.
    lock: LockFile | None = None

    def of(self, change: str) -> list[LockChange]:
        return [c for c in self.changes if c.change == change]

    @property
    def exit_status(self) -> int:
        return 1 if self.errors else 0

    def to_json(self) -> dict:
        return {
            "path": str(self.path),
            "update": self.update,
            "dry_run": self.dry_run,
            "written": self.written,
            "notes": self.notes,
            "changes": [c.to_json() for c in self.changes],
            "errors": self.errors,
        }


def _layer_file(spec: LayerSpec, root: Path) -> str:
    try:
        return str(spec.path.relative_to(root))
    except ValueError:
        return str(spec.path)


def _repo_ids(spec: LayerSpec, arch: str | None = None) -> list[tuple[str, str]]:
    return [(s.alias, s.shown_url) for s in repo_sources(spec, arch)]


def _layer_files(specs: Iterable[LayerSpec], root: Path) -> list[str]:
    out = set()
    for s in specs:
        try:
            out.add(str(s.path.relative_to(root)))
        except ValueError:
            out.add(str(s.path))
    return sorted(out)


def lock(
    lg: Any,
    *,
    update: bool = False,
    fetch: Fetch | None = None,
    registry: Any = None,
    jobs: int = 8,
    dry_run: bool = False,
    resolve: bool | None = None,
) -> LockReport:
    """Fingerprint what the layers of `lg` use and write the lock file (see the module docstring).

    Without `update`, entries already in the file are kept as they are and only
    missing ones are fetched; with it, everything is fetched again. Entries no
    layer uses any more are dropped either way. Then each layer's package set
    is resolved (`resolve.py`) where it is missing, stale (the spec or the
    parent's set changed) or one of its repositories moved, unless `resolve`
    is False (`--no-resolve`: fingerprints only; None keeps the file's choice).
    `dry_run`: the report of what would change, nothing written.
    """
    root = lg.project.root
    old = load_lock(root) or LockFile(lock_path(root))
    report = LockReport(old.path, update, dry_run=dry_run)
    new = LockFile(old.path, resolve=old.resolve if resolve is None else resolve)
    fetch = fetch or http_fetch

    # Every repository and external parent, with the layers that use it.
    sources: dict[tuple[str, str, str], tuple[RepoSource, list[LayerSpec]]] = {}
    parents: dict[str, tuple[str, list[LayerSpec]]] = {}
    for lid in lg.order():
        spec = lg.spec(lid)
        for a in lg.arches(lid):  # `$basearch` in a URL: each arch the layer builds has its own
            for src in repo_sources(spec, str(a)):
                sources.setdefault(src.entry_id, (src, []))[1].append(spec)
        link = lg.parents[lid]
        if link.kind == "external":
            parents.setdefault(_normalize(link.ref), (link.ref, []))[1].append(spec)

    # A `.repo` file's repositories are fingerprinted (and resolved from) like the spec's own.
    expanded = _expand_repo_files(lg, fetch, report.errors) if new.resolve else {}
    for lid in lg.order():
        spec = lg.spec(lid)
        for a in lg.arches(lid):
            for src in repo_sources(spec, str(a)):
                for sub in expanded.get((src.entry_id, str(a)), ([], None))[0]:
                    sources.setdefault(sub.entry_id, (sub, []))[1].append(spec)

    from concurrent.futures import ThreadPoolExecutor

    todo = [k for k in sorted(sources) if update or k not in old.repositories]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {k: pool.submit(_try, fingerprint_repo, sources[k][0], fetch) for k in todo}
        fetched = {k: f.result() for k, f in futures.items()}

    for k in sorted(sources):
        src, specs = sources[k]
        files = _layer_files(specs, root)
        prev = old.repositories.get(k)
        if k in fetched:
            entry, err = fetched[k]
            if err is not None:
                report.errors.append(
                    f"repository {src.alias} ({src.shown_url}) used by {', '.join(files)}: {redact(err)}"
                )
                continue
        else:
            entry = dict(prev or {})
        entry["layers"] = files
        new.repositories[k] = entry
        old_fp = prev.get("sha256") if prev else None
        change = "added" if prev is None else ("updated" if old_fp != entry["sha256"] else "unchanged")
        report.changes.append(
            LockChange("repository", src.alias, src.shown_url, change, old_fp, entry["sha256"], files)
        )

    if parents:
        from .publish.registry_client import RegistryClient
        from .reference import parse_reference

        client = registry or RegistryClient()
        for norm in sorted(parents):
            ref, specs = parents[norm]
            files = _layer_files(specs, root)
            prev = old.parents.get(norm)
            if prev is not None and not update:
                digest = prev["digest"]
            else:
                client.configure_for(specs[0])
                digest = client.manifest_digest(ref)
                if digest is None:
                    why = client.errors.get(str(parse_reference(ref)), "no answer")
                    report.errors.append(
                        f"external parent {redact(ref)} used by {', '.join(files)}: "
                        f"cannot get its digest ({redact(why)})"
                    )
                    continue
            new.parents[norm] = {"reference": norm, "digest": digest, "layers": files}
            old_d = prev.get("digest") if prev else None
            change = "added" if prev is None else ("updated" if old_d != digest else "unchanged")
            report.changes.append(LockChange("parent", norm, norm, change, old_d, digest, files))

    for k, e in sorted(old.repositories.items()):
        if k not in sources:
            report.changes.append(LockChange("repository", k[0], k[1], "removed", e.get("sha256")))
    for k, e in sorted(old.parents.items()):
        if k not in parents:
            report.changes.append(LockChange("parent", k, k, "removed", e.get("digest")))

    if new.resolve and not report.errors:
        _resolve_layers(lg, old, new, report, fetch, expanded)

    if report.errors:
        return report  # never half-updated: an unreachable repository is not "unchanged"
    report.lock = new
    if dry_run:
        return report
    if not old.path.exists() or new.text() != old.path.read_text(encoding="utf-8", errors="replace"):
        new.write()
        report.written = True
    return report


def _try(fn: Callable, *args: Any) -> tuple[Any, str | None]:
    try:
        return fn(*args), None
    except FetchError as exc:
        return None, str(exc)


# ------------------------------------------------------------------------ package sets


def unresolvable(spec: LayerSpec) -> str | None:
    """Why a layer's package set is not resolved (its key keeps repository fingerprints), or None."""
    if spec.layer_type == "ansible":
        return "an ansible layer"
    if spec.pkg_manager not in ("dnf", "apt", "zypper"):
        return f"pkg_manager {spec.pkg_manager} is not resolved yet"
    if spec.modules:
        from .modulemd import unsupported

        if spec.pkg_manager != "dnf":
            return f"modules with pkg_manager {spec.pkg_manager}"
        return unsupported(spec.modules)
    return None


def package_diff(old: list[LockedPackage], new: list[LockedPackage]) -> list[str]:
    """Per package: `name old -> new (repo)`, `+name version (repo)`, `-name version`."""
    a = {p.ident: p for p in old}
    b = {p.ident: p for p in new}
    out = []
    for ident in sorted(set(a) | set(b)):
        o, n = a.get(ident), b.get(ident)
        if o is None:
            out.append(f"+{n.name} {n.version} ({n.repo})")
        elif n is None:
            out.append(f"-{o.name} {o.version}")
        elif o.evr != n.evr:
            out.append(f"{n.name} {o.version} -> {n.version} ({n.repo})")
        elif o.checksum != n.checksum or o.repo != n.repo:
            out.append(f"{n.name} {n.version} rebuilt ({n.repo})")
    return out


def module_diff(old: list[str], new: list[str]) -> list[str]:
    """The lock entry's module streams that changed: `module +name:stream`, `module -name:stream`."""
    return [f"module -{x}" for x in old if x not in new] + [f"module +{x}" for x in new if x not in old]


def repo_file_sources(
    src: RepoSource, text: str, releasever: str | None, basearch: str
) -> tuple[list[RepoSource], str | None]:
    """The rpm-md repositories a downloaded `.repo` file enables (its sections' first `baseurl`,
    with `$releasever`/`$basearch` substituted), or why they cannot be resolved."""
    import configparser

    cp = configparser.RawConfigParser(strict=False, interpolation=None)
    try:
        cp.read_string(text)
    except configparser.Error as exc:
        return [], f"its .repo file {src.shown_url} cannot be read: {str(exc).splitlines()[0]}"
    out = []
    for section in cp.sections():
        if section == "main" or cp.get(section, "enabled", fallback="1").strip() in ("0", "false", "no"):
            continue
        urls = cp.get(section, "baseurl", fallback="").replace(",", " ").split()
        if not urls:
            return [], f"repository {section} of {src.shown_url} has no baseurl (a mirrorlist or metalink)"
        if "$releasever" in urls[0] and not releasever:
            return [], f"repository {section} of {src.shown_url} uses $releasever and the spec sets none"
        prio = cp.get(section, "priority", fallback="").strip()
        url = substitute(urls[0], releasever, basearch)
        hotfixes = cp.get(section, "module_hotfixes", fallback="0").strip().lower() in ("1", "true", "yes")
        out.append(
            RepoSource(
                section, "rpm-md", url, None, src.proxy, int(prio) if prio.isdigit() else None, hotfixes
            )
        )
    if not out:
        return [], f"{src.shown_url} enables no repository"
    return out, None


def _expand_repo_files(
    lg: Any, fetch: Fetch, errors: list[str]
) -> dict[tuple[tuple[str, str, str], str], tuple[list[RepoSource], str | None]]:
    """(`.repo` source, arch) -> the repositories it names, for each layer's arches (downloaded once)."""
    texts: dict[str, str | None] = {}
    out: dict[tuple[tuple[str, str, str], str], tuple[list[RepoSource], str | None]] = {}
    for lid in lg.order():
        spec = lg.spec(lid)
        for a in lg.arches(lid):
            for src in repo_sources(spec, str(a)):
                if src.kind != "repo-file" or (src.entry_id, str(a)) in out:
                    continue
                if src.url not in texts:
                    try:
                        texts[src.url] = fetch(src.url, src.proxy).decode("utf-8", errors="replace")
                    except FetchError as exc:
                        errors.append(
                            f"repository {src.alias} ({src.shown_url}): cannot read the .repo file "
                            f"to resolve its repositories: {redact(str(exc))}"
                        )
                        texts[src.url] = None
                text = texts[src.url]
                if text is not None:
                    out[(src.entry_id, str(a))] = repo_file_sources(src, text, spec.releasever, str(a))
    return out


def _resolve_layers(
    lg: Any, old: LockFile, new: LockFile, report: LockReport, fetch: Fetch, expanded: dict | None = None
) -> None:
    """Fill `new.layers`, one entry per (layer, arch it builds); re-resolve where the entry is
    missing, stale or its repositories moved. Each arch resolves against its own metadata."""
    from .resolve import MetadataCache

    cache = MetadataCache(fetch)
    multi = any(len(lg.arches(lid)) > 1 or lg.arches(lid)[0] != host_arch() for lid in lg.order())
    arches = sorted({str(a) for lid in lg.order() for a in lg.arches(lid)})
    for arch in arches:
        _resolve_arch(lg, old, new, report, cache, arch, multi, expanded or {})
    for (file, arch), e in sorted(old.layers.items()):
        if (file, arch) not in new.layers:
            report.changes.append(
                LockChange("packages", file, file, "removed", _count(len(e["packages"])), arch=arch)
            )


def _resolve_arch(
    lg: Any,
    old: LockFile,
    new: LockFile,
    report: LockReport,
    cache: Any,
    arch: str,
    multi: bool,
    expanded: dict,
) -> None:
    """`_resolve_layers` for the layers that build `arch` (a child's arches are its parent's)."""
    from .modulemd import parse_state, state_lines
    from .resolve import ResolveError, base_digest, installed_after, request_digest, resolve_layer

    root = lg.project.root
    after: dict[str, list[LockedPackage] | None] = {}  # installed set each layer leaves
    mods_after: dict[str, dict[str, str | None]] = {}  # dnf module state each layer leaves
    # each layer's and its ancestors' repositories, with the spec that names them
    sources_of: dict[str, list[tuple[LayerSpec, RepoSource]]] = {}
    in_image: dict[str, list[tuple[LayerSpec, RepoSource]]] = {}  # repositories each built image carries
    for lid in lg.order():
        if arch not in {str(a) for a in lg.arches(lid)}:
            continue
        spec = lg.spec(lid)
        link = lg.parents[lid]
        file = _layer_file(spec, root)
        own, file_why, files = [], None, []
        for s in repo_sources(spec, arch):
            if s.kind != "repo-file":
                own.append((spec, s))
                continue
            files.append(s)
            subs, bad = expanded.get((s.entry_id, arch), ([], f"its .repo file {s.shown_url} was not read"))
            file_why = file_why or bad
            own += [(spec, sub) for sub in subs]
        # What the build can install from: its own repositories and those its parent image carries
        # (apt's sources.list, dnf's /etc/yum.repos.d; a scratch dnf build keeps its repos outside).
        carried = in_image.get(link.layer, []) if link.kind == "layer" else []
        usable = _dedupe(own + carried)
        in_image[lid] = usable if (spec.pkg_manager == "apt" or not spec.is_scratch) else []
        inherited = sources_of.get(link.layer, []) if link.kind == "layer" else []
        sources_of[lid] = _dedupe(usable + inherited)
        why = unresolvable(spec) or file_why
        if why is None and not usable and (spec.packages or spec.packages_by_arch or spec.package_groups):
            why = "it installs from repository files of the parent image's own"
        base: list[LockedPackage] | None
        mods: dict[str, str | None] = {}  # the parent's module state (its /etc/dnf/modules.d)
        if link.kind == "scratch":
            base = []
        elif link.kind == "layer":
            base = after.get(link.layer)
            mods = mods_after.get(link.layer, {})
            if base is None and why is None:
                why = f"its parent {lg.spec(link.layer).name}'s installed set is not resolved"
        elif why is None:
            base, mods, why = _external_base(spec, link, new, arch)
        else:
            base = None
        if why is not None or base is None:
            after[lid] = None
            report.notes.append(f"{file}{f' ({arch})' if multi else ''}: packages not resolved: {why}")
            continue
        request = request_digest(spec, _repo_ids(spec, arch), arch)
        based = base_digest(base, state_lines(mods))
        prev = old.layers.get((file, arch))
        moved = any(
            (new.repositories.get(s.entry_id) or {}).get("sha256")
            != (old.repositories.get(s.entry_id) or {}).get("sha256")
            for s in [x for _, x in usable] + files
        )
        if prev and prev["request"] == request and prev.get("base") == based and not moved:
            entry = dict(prev)
            packages = [LockedPackage.parse(line) for line in entry["packages"]]
            erased = [tuple(x.rsplit(".", 1)) for x in entry.get("replaces", [])]
            left = parse_state(entry.get("modules") or [])
        else:
            try:
                repos = [_repo_data(cache, sp, s, arch) for sp, s in usable]
                lookup = [_repo_data(cache, sp, s, arch) for sp, s in sources_of[lid][len(usable) :]]
                res = resolve_layer(spec, repos, lookup, base, arch, mods)
            except (FetchError, ResolveError) as exc:
                where = f"layer {file}{f' ({arch})' if multi else ''}"
                report.errors.append(f"{where}: cannot resolve its packages: {redact(str(exc))}")
                after[lid] = None
                continue
            packages, erased, left = res.packages, res.erased, res.modules
            entry = {"layer": file, "arch": arch, "request": request, "base": based}
            if erased:
                entry["replaces"] = sorted(f"{n}.{a}" for n, a in erased)
            if left:  # the module streams enabled (or disabled) in the image the layer leaves
                entry["modules"] = state_lines(left)
            entry["packages"] = [p.line() for p in packages]
        new.layers[(file, arch)] = entry
        after[lid] = installed_after(base, packages, spec, erased)
        mods_after[lid] = left
        was = [LockedPackage.parse(line) for line in prev["packages"]] if prev else []
        diff = package_diff(was, packages) + module_diff(
            (prev or {}).get("modules") or [], entry.get("modules") or []
        )
        change = "added" if prev is None else ("updated" if diff else "unchanged")
        report.changes.append(
            LockChange("packages", file, file, change, None, _count(len(packages)), [file], diff, arch)
        )


def _dedupe(pairs: list[tuple[LayerSpec, RepoSource]]) -> list[tuple[LayerSpec, RepoSource]]:
    seen: set[tuple[str, str, str]] = set()
    out = []
    for sp, s in pairs:
        if s.entry_id not in seen:
            seen.add(s.entry_id)
            out.append((sp, s))
    return out


def _count(n: int) -> str:
    return f"{n} package{'' if n == 1 else 's'}"


def _external_base(
    spec: LayerSpec, link: Any, new: LockFile, arch: str | None = None
) -> tuple[list[LockedPackage] | None, dict[str, str | None], str | None]:
    """An external parent's installed set and dnf module state (its /etc/dnf/modules.d), read
    from the image at its locked digest (for a multi-arch index, its `arch` image), or why not."""
    from .reference import parse_reference
    from .resolve import ResolveError, image_contents

    digest = (new.parents.get(_normalize(link.ref)) or {}).get("digest")
    if not digest:
        return None, {}, "an external parent without a locked digest"
    try:
        ref = str(parse_reference(link.ref).with_digest(digest))
        seen = image_contents(ref, spec.registry_opts_pull, arch=arch)
    except (ResolveError, ValueError) as exc:
        return None, {}, str(exc)
    want = "deb" if spec.pkg_manager == "apt" else "rpm"
    if seen.format != want:
        return None, {}, f"its parent's packages are {seen.format}, not {want}"
    return seen.packages, seen.modules, None


def _repo_data(cache: Any, spec: LayerSpec, src: RepoSource, arch: str) -> Any:
    from .resolve import deb_arch

    repo = next((r for r in spec.repos if r.alias == src.alias), None)
    if src.kind == "apt":
        components = (repo.components if repo else ()) or ("main",)
        return cache.deb_repo(src.alias, src.url, src.suite or "", components, deb_arch(arch), src.proxy)
    return cache.repo(src.alias, src.url, src.proxy, repo.priority if repo else src.priority, src.hotfixes)
