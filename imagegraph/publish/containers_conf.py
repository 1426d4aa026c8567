"""What the container tools' configuration says about a registry: credentials, TLS, options.

Read the way buildah/podman/skopeo read it, so the HTTP client
(`registry_client.py`) and `buildah push` agree:

* **Auth files**, in their order: `--authfile` from the layer opts,
  `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
  `/run/containers/<uid>/auth.json`, `$XDG_CONFIG_HOME/containers/auth.json`
  (default `~/.config`), `$DOCKER_CONFIG/config.json` or
  `~/.docker/config.json`; `--creds` in the opts wins over files. Within a
  file the most specific key (`host/ns/repo`, then `host/ns`, then `host`)
  wins, so two repositories on one host may have different credentials.
  Credential helpers (`credHelpers`, `credsStore`) are not run. Every
  password loaded is registered with `imagegraph.redact`.

* **registries.conf** as containers-registries.conf(5) and
  containers-registries.conf.d(5) define it: the main file is
  `$CONTAINERS_REGISTRIES_CONF`, else `~/.config/containers/registries.conf`
  when it exists (then only the per-user drop-ins are read), else
  `/etc/containers/registries.conf`; then the `*.conf` drop-ins of
  `/etc/containers/registries.conf.d` and of the per-user
  `registries.conf.d`, each directory in alpha-numerical order. A later
  file's top-level settings replace earlier ones; its `[[registry]]` tables
  replace those with the same prefix and add the others. Only `insecure`
  matters here (with `prefix`, `location` and `*.domain` wildcards); the v1
  format's `[registries.insecure]` is read from the main file.

* **buildah options** (`registry_opts_push` / `_pull`): `--tls-verify`,
  `--authfile`, `--creds`, `--cert-dir`, `--retry`, parsed into `RegistryOpts`.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import os
import re
import shlex
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..log import get_logger
from ..redact import add_secret
from ..reference import canonical_host

__all__ = [
    "Credentials",
    "RegistriesConf",
    "RegistryEntry",
    "RegistryOpts",
    "auth_file_paths",
    "find_credentials",
    "is_loopback",
    "parse_opts",
    "registries_conf_paths",
    "repository_prefixes",
    "split_opts",
]

_log = get_logger(component="registry")

SYSTEM_REGISTRIES_CONF = Path("/etc/containers/registries.conf")
SYSTEM_REGISTRIES_CONF_D = Path("/etc/containers/registries.conf.d")

# ----------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    """A user name and password for a registry, and where they came from (for messages)."""

    username: str
    password: str = field(repr=False)
    source: str = ""  # the file (or "--creds") they came from

    def basic_header(self) -> str:
        """The `Authorization: Basic ...` value (registered as a secret)."""
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        add_secret(token)
        return f"Basic {token}"


def _config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config"))


def auth_file_paths(explicit: str | Path | None = None) -> list[Path]:
    """The auth files buildah/podman/skopeo read, in the order they read them."""
    paths: list[Path] = []
    if explicit:
        paths.append(Path(explicit))
    if os.environ.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(os.environ["REGISTRY_AUTH_FILE"]))
    if os.environ.get("XDG_RUNTIME_DIR"):
        paths.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(Path(f"/run/containers/{os.getuid()}/auth.json"))
    paths.append(_config_home() / "containers" / "auth.json")
    docker_config = os.environ.get("DOCKER_CONFIG")
    paths.append(
        Path(docker_config) / "config.json" if docker_config else Path.home() / ".docker" / "config.json"
    )
    seen: set[Path] = set()
    return [p for p in paths if not (p in seen or seen.add(p))]


def _auth_key(key: str) -> str:
    """An `auths` key as a comparable `host[/path]` (docker's keys are URLs)."""
    k = re.sub(r"^[a-z]+://", "", key.strip()).rstrip("/")
    k = re.sub(r"/v[12]$", "", k)
    host, sep, path = k.partition("/")
    return canonical_host(host) + (sep + path if path else "")


def _read_auths(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _log.warning("cannot read registry auth file", file=str(path), error=str(exc))
        return {}
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        return {}
    return {_auth_key(k): v for k, v in auths.items() if isinstance(v, dict)}


def _decode_entry(entry: dict, source: str) -> Credentials | None:
    user = password = None
    if entry.get("auth"):
        try:
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        add_secret(entry["auth"])
    elif entry.get("username"):
        user, password = entry.get("username"), entry.get("password", "")
    if not user:
        return None
    add_secret(password)
    return Credentials(user, password or "", source)


def repository_prefixes(name: str) -> list[str]:
    """`host/ns/repo` -> [`host/ns/repo`, `host/ns`, `host`]: most specific first."""
    parts = name.split("/")
    return ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]


def find_credentials(name: str, files: Sequence[Path]) -> Credentials | None:
    """Credentials for repository `name` (`host/ns/repo`) from the first file that has any.

    Within a file the most specific key wins: `host/ns/repo`, `host/ns`, `host`.
    """
    candidates = repository_prefixes(name)
    for path in files:
        auths = _read_auths(path)
        for c in candidates:
            if c in auths:
                creds = _decode_entry(auths[c], str(path))
                if creds:
                    return creds
    return None


# ----------------------------------------------------------------- registries.conf


@dataclass(frozen=True)
class RegistryEntry:
    """One `[[registry]]` table: `prefix` (defaults to `location`), `location`, `insecure`."""

    prefix: str
    location: str
    insecure: bool = False
    source: str = ""

    def matches_host(self, host: str) -> bool:
        """Whether requests to `host` (host[:port]) are covered by this entry."""
        loc_host = self.location.split("/", 1)[0].lower()
        if loc_host == host:
            return True
        pre = self.prefix.split("/", 1)[0].lower()
        if pre.startswith("*."):
            return host.split(":", 1)[0].endswith(pre[1:])
        return pre == host


@dataclass(frozen=True)
class RegistriesConf:
    """The merged registries.conf: entries by prefix, and which files were read."""

    entries: tuple[RegistryEntry, ...] = ()
    files: tuple[str, ...] = ()

    def insecure(self, host: str) -> bool:
        """Whether `host` is marked `insecure = true` (plain http, unverified TLS)."""
        host = host.lower()
        return any(e.insecure and e.matches_host(host) for e in self.entries)

    @classmethod
    def load(cls, paths: Sequence[Path] | None = None) -> RegistriesConf:
        """Read and merge `paths` in order (default `registries_conf_paths()`).

        A file that does not parse is skipped with a warning (the container
        tools refuse it too; the push will then say so).
        """
        merged: dict[str, RegistryEntry] = {}
        read: list[str] = []
        for i, path in enumerate(registries_conf_paths() if paths is None else paths):
            try:
                data = tomllib.loads(Path(path).read_text())
            except FileNotFoundError:
                continue
            except (OSError, tomllib.TOMLDecodeError) as exc:
                _log.warning("cannot read registries.conf", file=str(path), error=str(exc))
                continue
            read.append(str(path))
            for entry in _entries(data, str(path), v1=i == 0):
                merged[entry.prefix] = entry  # same prefix: the later file's table replaces it
        return cls(tuple(merged.values()), tuple(read))


def _entries(data: Mapping, source: str, *, v1: bool) -> Iterable[RegistryEntry]:
    for table in data.get("registry", []) or []:
        if not isinstance(table, dict):
            continue
        location = str(table.get("location") or "").strip().rstrip("/")
        prefix = str(table.get("prefix") or location).strip().rstrip("/")
        if not prefix:
            continue
        yield RegistryEntry(prefix, location or prefix, bool(table.get("insecure")), source)
    if v1:  # v1: [registries.insecure] registries = [...]
        registries = data.get("registries")
        insecure = registries.get("insecure") if isinstance(registries, dict) else None
        names = insecure.get("registries") if isinstance(insecure, dict) else None
        for r in names or []:
            yield RegistryEntry(str(r), str(r), True, source)


def _drop_ins(directory: Path) -> list[Path]:
    try:
        return sorted(p for p in directory.iterdir() if p.suffix == ".conf" and p.is_file())
    except OSError:
        return []


def registries_conf_paths(
    *, system: Path = SYSTEM_REGISTRIES_CONF, system_d: Path = SYSTEM_REGISTRIES_CONF_D
) -> list[Path]:
    """The registries.conf files containers/image reads, in the order it merges them."""
    # containers/image looks under $HOME/.config here, whatever XDG_CONFIG_HOME says (auth.json differs)
    user_conf = Path.home() / ".config" / "containers" / "registries.conf"
    user_d = Path.home() / ".config" / "containers" / "registries.conf.d"
    override = os.environ.get("CONTAINERS_REGISTRIES_CONF")
    if override:
        return [Path(override), *_drop_ins(system_d), *_drop_ins(user_d)]
    if user_conf.exists():
        return [user_conf, *_drop_ins(user_d)]
    return [system, *_drop_ins(system_d), *_drop_ins(user_d)]


def is_loopback(registry: str) -> bool:
    """Whether `registry` (host[:port]) names this machine (`localhost`, 127.0.0.0/8, ::1)."""
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry[1 : registry.find("]")]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class RegistryOpts:
    """What buildah push/pull options say that the HTTP client must honour too."""

    insecure: bool = False
    verify: bool = False  # --tls-verify=true said explicitly: verify even a loopback registry
    authfile: str | None = None
    creds: Credentials | None = None
    cert_dir: str | None = None
    retry_given: bool = False


def split_opts(opts: Iterable[str]) -> list[str]:
    """Options as buildah gets them: each item split the way a shell would."""
    words: list[str] = []
    for item in opts:
        words.extend(shlex.split(str(item)))
    return words


@functools.lru_cache(maxsize=256)
def parsed_opts(opts: tuple[str, ...]) -> RegistryOpts:
    """`parse_opts`, once per distinct option list: planning configures the client for every
    question it asks (thousands per plan), and shlex is slow."""
    return parse_opts(opts)


def parse_opts(opts: Iterable[str]) -> RegistryOpts:
    """Read buildah registry options; a `--creds` password is registered as a secret."""
    words = split_opts(opts)
    values: dict[str, str] = {}
    retry_given = False
    i = 0
    while i < len(words):
        w = words[i]
        name, eq, value = w.partition("=")
        if name in ("--tls-verify", "--dest-tls-verify", "--src-tls-verify") and not eq:
            # a bare boolean flag, or followed by true/false
            if i + 1 < len(words) and words[i + 1].lower() in ("true", "false"):
                value = words[i + 1]
                i += 1
            else:
                value = "true"
            eq = "="
        elif (
            name in ("--authfile", "--creds", "--cert-dir", "--retry", "--retry-delay")
            and not eq
            and i + 1 < len(words)
        ):
            value = words[i + 1]
            eq = "="
            i += 1
        if eq:
            values[name] = value
        retry_given = retry_given or name in ("--retry", "--retry-delay")
        i += 1
    tls = values.get("--tls-verify", values.get("--dest-tls-verify", values.get("--src-tls-verify", "true")))
    creds = None
    if values.get("--creds"):
        user, _, password = values["--creds"].partition(":")
        add_secret(password)
        creds = Credentials(user, password, "--creds")
    return RegistryOpts(
        insecure=tls.lower() == "false",
        verify=any(
            values.get(k, "").lower() == "true"
            for k in ("--tls-verify", "--dest-tls-verify", "--src-tls-verify")
        ),
        authfile=values.get("--authfile"),
        creds=creds,
        cert_dir=values.get("--cert-dir"),
        retry_given=retry_given,
    )
