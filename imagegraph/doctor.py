"""`doctor`: what building and publishing a directory's layers needs from this host.

Host tools the layers need (with versions), container storage, binfmt
handlers, and, unless offline, registry and S3 reachability and whether
credentials are found (where from, never what they are). Each miss says
what to install. `preflight` is the cheap part (tools on PATH only), which
`up` runs before planning so a missing buildah fails in a second, naming
the tool, instead of as a build step.
"""

from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .errors import ImagegraphError
from .graph import LayerGraph
from .runner import Runner


class CheckStatus(StrEnum):
    OK = "ok"
    MISSING = "missing"  # a tool that is needed is not installed
    FAILED = "failed"  # present but not working (storage, an unreachable registry)
    UNKNOWN = "unknown"  # could not be told (offline, no answer to a question that has one)
    INFO = "info"  # not needed by these layers; shown for the record


class CheckKind(StrEnum):
    TOOL = "tool"
    STORAGE = "storage"
    BINFMT = "binfmt"
    REGISTRY = "registry"
    S3 = "s3"


@dataclass(frozen=True)
class Check:
    kind: CheckKind
    name: str
    status: CheckStatus
    detail: str = ""
    version: str | None = None
    fix: str | None = None  # what to install or set
    needed_by: tuple[str, ...] = ()  # layer ids

    def to_json(self) -> dict:
        return {
            "kind": str(self.kind),
            "name": self.name,
            "status": str(self.status),
            "detail": self.detail,
            "version": self.version,
            "fix": self.fix,
            "needed_by": list(self.needed_by),
        }


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status in (CheckStatus.MISSING, CheckStatus.FAILED)]

    @property
    def exit_status(self) -> int:
        return 1 if self.problems else 0

    def to_json(self) -> dict:
        return {"ok": not self.problems, "checks": [c.to_json() for c in self.checks]}


# tool -> (Debian package, why)
TOOLS: dict[str, tuple[str, str]] = {
    "buildah": ("buildah", "builds every layer"),
    "skopeo": ("skopeo", "inspects and copies images"),
    "mksquashfs": ("squashfs-tools", "makes SquashFS images for publish_s3 / publish_dir"),
    "dnf": ("dnf", "installs RPMs from scratch (pkg_manager dnf)"),
    "rpm": ("rpm", "RPM databases for dnf and zypper layers"),
    "zypper": ("zypper", "installs RPMs from scratch (pkg_manager zypper)"),
    "mmdebstrap": ("mmdebstrap", "Debian roots from scratch (pkg_manager apt)"),
    "ansible-playbook": ("ansible-core", "layer_type ansible"),
    "qemu-system-x86_64": ("qemu-system-x86", "boot tests"),
    "qemu-system-aarch64": ("qemu-system-arm", "boot tests of aarch64 layers"),
    "sbatch": ("slurm-client", "the Slurm executor"),
    "squeue": ("slurm-client", "the Slurm executor"),
    "scancel": ("slurm-client", "the Slurm executor"),
    "scontrol": ("slurm-client", "the Slurm executor"),
}


def needed_tools(
    lg: LayerGraph, layers: set[str] | None = None, executor: str | None = None
) -> dict[str, list[str]]:
    """Tool -> the layers that need it (every layer needs buildah); `executor` (`up --executor`)
    overrides imagegraph.yaml's `executor.kind`."""
    need: dict[str, list[str]] = {}

    def add(tool: str, lid: str) -> None:
        need.setdefault(tool, []).append(lid)

    chosen = lg.order(layers)
    for lid in chosen:
        spec = lg.spec(lid)
        add("buildah", lid)
        if spec.layer_type == "ansible":
            add("ansible-playbook", lid)
        elif spec.is_scratch and spec.pkg_manager in ("dnf", "zypper"):
            add(spec.pkg_manager, lid)
            add("rpm", lid)
        elif spec.is_scratch and spec.pkg_manager == "apt":
            add("mmdebstrap", lid)
        if spec.publish_s3 or spec.publish_dir:
            add("mksquashfs", lid)
        if spec.boot_test.enabled:
            from .boottest import MACHINES

            for a in spec.boot_test.arches or lg.arches(lid):
                add(MACHINES[a].qemu if a in MACHINES else "qemu-system-x86_64", lid)
    if chosen and (executor or lg.project.settings.executor.kind) == "slurm":
        for tool in ("sbatch", "squeue", "scontrol", "scancel"):
            need[tool] = list(chosen)
    return need


def _missing_tool(tool: str, layers: list[str]) -> Check:
    package, why = TOOLS.get(tool, (tool, ""))
    return Check(
        CheckKind.TOOL,
        tool,
        CheckStatus.MISSING,
        f"not found on PATH; {why}" if why else "not found on PATH",
        fix=f"apt-get install {package}",
        needed_by=tuple(layers),
    )


def preflight(lg: LayerGraph, layers: set[str] | None = None, executor: str | None = None) -> list[Check]:
    """The tools the selected layers need that are not on PATH (no process is started)."""
    need = needed_tools(lg, layers, executor)
    return [_missing_tool(t, ls) for t, ls in need.items() if shutil.which(t) is None]


_VERSION = re.compile(r"\d+(?:\.\d+)+[\w.+~-]*")


def _version(tool: str) -> str | None:
    flag = "-version" if tool == "mksquashfs" else "--version"
    res = Runner().run([tool, flag], step="doctor", check=False, capture=True, timeout=20, loglevel="DEBUG")
    m = _VERSION.search(res.stdout + " " + " ".join(res.tail))
    return m[0] if m else None


def _tool_checks(need: dict[str, list[str]]) -> list[Check]:
    out = []
    tools = list(dict.fromkeys([*need, "buildah", "skopeo", "mksquashfs", "qemu-system-x86_64"]))
    found = [t for t in tools if shutil.which(t)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        versions = dict(zip(found, pool.map(_version, found), strict=True))
    for tool in tools:
        layers = need.get(tool, [])
        if tool not in versions:
            miss = _missing_tool(tool, layers)
            out.append(
                miss
                if layers
                else Check(
                    CheckKind.TOOL,
                    tool,
                    CheckStatus.INFO,
                    "not installed; not needed by these layers",
                    fix=miss.fix,
                )
            )
            continue
        out.append(
            Check(
                CheckKind.TOOL,
                tool,
                CheckStatus.OK,
                shutil.which(tool) or "",
                version=versions[tool],
                needed_by=tuple(layers),
            )
        )
    return out


def _storage_check() -> Check:
    import json

    if shutil.which("buildah") is None:
        return Check(CheckKind.STORAGE, "container storage", CheckStatus.UNKNOWN, "buildah is missing")
    res = Runner().run(
        ["buildah", "info"], step="doctor", check=False, capture=True, timeout=60, loglevel="DEBUG"
    )
    if res.returncode != 0:
        return Check(
            CheckKind.STORAGE,
            "container storage",
            CheckStatus.FAILED,
            "`buildah info` failed: " + (" ".join(res.tail[-2:]) or f"exit {res.returncode}"),
            fix="check /etc/containers/storage.conf (or $CONTAINERS_STORAGE_CONF)",
        )
    try:
        store = json.loads(res.stdout).get("store", {})
    except ValueError:
        return Check(
            CheckKind.STORAGE, "container storage", CheckStatus.UNKNOWN, "`buildah info` is not JSON"
        )
    root = Path(store.get("GraphRoot", ""))
    driver = store.get("GraphDriverName", "?")
    if not root.is_dir() or not os.access(root, os.W_OK):
        return Check(
            CheckKind.STORAGE,
            "container storage",
            CheckStatus.FAILED,
            f"{root} ({driver}) is not a writable directory",
            fix="run as root, or fix graphroot in storage.conf",
        )
    free = shutil.disk_usage(root).free / 2**30
    status = CheckStatus.OK if free >= 5 else CheckStatus.FAILED
    return Check(
        CheckKind.STORAGE,
        "container storage",
        status,
        f"{root} ({driver}), {free:.1f} GiB free",
        fix=None if status == CheckStatus.OK else "free disk space under the storage root (5 GiB or more)",
    )


def _binfmt_check() -> list[Check]:
    """Whether each foreign architecture can run in a build chroot (arch.py: binfmt_misc + qemu-user).

    Information until layers ask for other arches: today every layer builds for the host's.
    """
    from .arch import Arch, emulation, host_arch

    host = host_arch()
    out = []
    for arch in (Arch.X86_64, Arch.AARCH64):
        if arch == host:
            continue
        e = emulation(arch, host=host)
        detail = f"runs under {e.handler} (flags {e.flags})" if e.usable else e.problem
        out.append(Check(CheckKind.BINFMT, f"{arch} emulation", CheckStatus.INFO, detail, fix=e.fix or None))
    return out


def _registry_checks(lg: LayerGraph, timeout: float) -> list[Check]:
    """One check per registry host: publish registries list a repository's tags, registries of
    external parents answer a HEAD for the parent's manifest."""
    from .publish.registry_client import RegistryClient
    from .publish.registry_errors import RegistryError
    from .reference import parse_reference, target_repository
    from .retry import RetryPolicy

    client = RegistryClient(
        retry=RetryPolicy(attempts=1),
        timeout=(timeout, timeout),
        retry_timeouts=False,
        warn_unreachable=False,
    )
    # host -> what to ask ("tags" of a repository, or the "manifest" of a parent) -> layers
    asks: dict[str, dict[tuple[str, str], list[str]]] = {}
    for lid in lg.order():
        spec = lg.spec(lid)
        client.configure_for(spec)
        if spec.publish_registry:
            ref = target_repository(spec)
            asks.setdefault(ref.registry, {}).setdefault(("tags", ref.name), []).append(lid)
        link = lg.parents[lid]
        if link.kind == "external":
            try:
                parent = parse_reference(link.ref)
            except ValueError:
                continue
            asks.setdefault(parent.registry, {}).setdefault(("manifest", link.ref), []).append(lid)

    def check(host: str) -> Check:
        users = asks[host]
        layers = tuple(dict.fromkeys(lid for ls in users.values() for lid in ls))
        kind, what = next(iter(users))
        creds = client.credentials(parse_reference(what).name if kind == "manifest" else what)
        who = (
            f"credentials for {creds.username} from {creds.source}" if creds else "no credentials (anonymous)"
        )
        try:
            found = client.tags(what) if kind == "tags" else client.manifest_digest(what)
        except RegistryError as exc:
            return Check(CheckKind.REGISTRY, host, CheckStatus.FAILED, f"{exc}; {who}", needed_by=layers)
        key = what if kind == "tags" else str(parse_reference(what))
        why = client.errors.get(key, "")
        if found is None and why != "not found":
            return Check(
                CheckKind.REGISTRY,
                host,
                CheckStatus.FAILED,
                f"{(why or 'did not answer').removeprefix('registry unreachable: ')}; {who}",
                fix="check the address, the firewall, or that the registry runs",
                needed_by=layers,
            )
        detail = f"answers ({_plural(len(users), 'question')}, first: {kind} of {what}"
        detail += ": not found)" if found is None else ")"
        return Check(CheckKind.REGISTRY, host, CheckStatus.OK, f"{detail}; {who}", needed_by=layers)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(check, asks))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _s3_checks(lg: LayerGraph, timeout: float) -> list[Check]:
    targets: dict[tuple[str, str], list[str]] = {}
    for lid in lg.order():
        spec = lg.spec(lid)
        if spec.publish_s3:
            targets.setdefault((spec.publish_s3, spec.s3_bucket), []).append(lid)
    if not targets:
        return []
    import botocore.session

    from .publish.s3 import S3Settings, credentials, make_client
    from .retry import RetryPolicy

    settings = S3Settings(
        botocore_attempts=1, retry=RetryPolicy(attempts=1), connect_timeout=timeout, read_timeout=timeout
    )
    # Where the credentials come from (S3_ACCESS/S3_SECRET, env, shared-credentials-file, ...),
    # never what they are.
    if credentials() is not None:
        who = "credentials from S3_ACCESS/S3_SECRET"
    else:
        found = botocore.session.get_session().get_credentials()
        who = f"credentials from {found.method}" if found is not None else "no credentials found"

    def check(target: tuple[str, str]) -> Check:
        endpoint, bucket = target
        name = f"{endpoint} bucket {bucket}"
        layers = tuple(targets[target])
        try:
            client = make_client(endpoint, settings)
            client.head_bucket(Bucket=bucket)
        except Exception as exc:  # botocore raises many kinds; each is "not usable" here
            text = str(exc).splitlines()[0][:200]
            return Check(
                CheckKind.S3,
                name,
                CheckStatus.FAILED,
                text,
                fix="check the endpoint, the bucket and AWS_* credentials",
                needed_by=layers,
            )
        return Check(CheckKind.S3, name, CheckStatus.OK, f"bucket reachable; {who}", needed_by=layers)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(check, targets))


def run_doctor(lg: LayerGraph | None, *, offline: bool = False, timeout: float = 5.0) -> DoctorReport:
    """Every check; `lg` None checks only the host (no directory given)."""
    need = needed_tools(lg) if lg is not None else {"buildah": []}
    report = DoctorReport(_tool_checks(need))
    report.checks.append(_storage_check())
    report.checks.extend(_binfmt_check())
    if lg is not None:
        if offline:
            for kind, what in ((CheckKind.REGISTRY, "registries"), (CheckKind.S3, "S3")):
                report.checks.append(Check(kind, what, CheckStatus.UNKNOWN, "not asked (--offline)"))
        else:
            report.checks.extend(_registry_checks(lg, timeout))
            report.checks.extend(_s3_checks(lg, timeout))
    return report


class PreflightError(ImagegraphError):
    """`up` cannot start: a tool the selected layers need is missing. Nothing was built."""

    def __init__(self, root: Path, missing: list[Check]):
        self.missing = missing
        lines = [
            f"  {c.name}: {c.detail} (needed by {', '.join(c.needed_by)})"
            + (f"; install: {c.fix}" if c.fix else "")
            for c in missing
        ]
        super().__init__(
            f"cannot build {root}: missing {', '.join(c.name for c in missing)}\n"
            + "\n".join(lines)
            + "\nnothing was built; `imagegraph doctor` checks everything"
        )
