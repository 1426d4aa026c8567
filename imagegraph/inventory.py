"""What exists out there: local images, registry tags and digests, S3 objects, directory targets.

The planner, gc and boot-test ask an `Inventory`; every answer is an
`Answer` that is `present`, `absent` or `unknown`. Unknown means the store
could not be read (a failing or timing-out `buildah images`, a registry or
S3 endpoint that did not answer, an unreadable directory) and carries the
tool's or server's words in `error`: it is never taken for absent. For a
pointer (a human tag, an S3 object, a directory tag) `holds` says what it
points at: a manifest digest, an image ID or a layer key.

`LiveInventory` asks the real world cheaply: one `buildah images` through
the Runner for all local images; one tag list per registry repository and
one HEAD per human tag (in parallel, in `prefetch`; key tags are immutable,
so only human tags need their digests); one listing per S3 prefix (the key
is in each object's metadata); each directory tag's `manifest.json`.
`StaticInventory` is the same answers given as data (tests).

This is the one core module that reaches the publish backends, and only
their query side (`RegistryClient`, `S3Index`, `find_published`).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import RegistryTLSError
from .key import key_tag
from .publish.registry_errors import RegistryError
from .redact import redact
from .reference import parse_reference, target_repository
from .runner import CommandError, Runner
from .spec import LayerSpec

if TYPE_CHECKING:
    from .publish.registry_client import RegistryClient
    from .publish.s3 import S3Index
# The S3 client (boto3), the artifact layouts and buildah's environment load when first asked:
# planning offline or without S3 targets must not pay for them.

LOCAL_TIMEOUT = 120.0  # seconds a `buildah images` may take before its answer is unknown


class Presence(StrEnum):
    PRESENT = "present"
    ABSENT = "absent"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Answer:
    """One inventory answer; `holds` is what a pointer points at, `error` why it is unknown."""

    presence: Presence
    holds: str | None = None
    error: str | None = None
    # Absent although something is there: what is wrong with it ("the object there was not written
    # by imagegraph", "its kernel or initramfs was replaced ..."), for the plan's reason.
    why: str | None = None

    @property
    def present(self) -> bool:
        return self.presence == Presence.PRESENT

    @property
    def unknown(self) -> bool:
        return self.presence == Presence.UNKNOWN

    def to_json(self) -> dict:
        return {
            k: v
            for k, v in {
                "presence": str(self.presence),
                "holds": self.holds,
                "error": self.error,
                "why": self.why,
            }.items()
            if v
        }


PRESENT = Answer(Presence.PRESENT)
ABSENT = Answer(Presence.ABSENT)


def unknown(error: str) -> Answer:
    return Answer(Presence.UNKNOWN, error=redact(error))


@dataclass(frozen=True)
class TagList:
    """A repository's tags, or why they are unknown (`tags` is None then)."""

    tags: frozenset[str] | None
    error: str | None = None

    @property
    def unknown(self) -> bool:
        return self.tags is None


def local_key_ref(spec: LayerSpec, key: str) -> str:
    """Where a build of `key` is committed in local container storage."""
    return f"localhost/imagegraph/{spec.name}:{key_tag(key)}"


def local_tag_ref(spec: LayerSpec, tag: str) -> str:
    """A `publish_local` tag in local container storage."""
    return f"localhost/{spec.name}:{tag}"


class Inventory(Protocol):
    """What exists outside the state (module docstring)."""

    def local_image(self, image_id: str | None, ref: str | None = None) -> Answer: ...

    def local_names(self, image_id: str) -> tuple[str, ...]: ...

    def registry_tags(self, spec: LayerSpec) -> TagList: ...

    def tag_digest(self, spec: LayerSpec, tag: str) -> Answer: ...

    def external_digest(self, ref: str, spec: LayerSpec) -> str | None: ...

    def external_platforms(self, ref: str, spec: LayerSpec) -> frozenset[str] | None: ...

    def artifacts(self, spec: LayerSpec, key: str, target: str) -> dict[str, Answer]: ...


# ----------------------------------------------------------------------- static


@dataclass
class StaticInventory:
    """An inventory given as data (tests). `reachable=False`: registries and S3 answer unknown."""

    images: set[str] = field(default_factory=set)  # image IDs and refs present locally
    names: dict[str, str] = field(default_factory=dict)  # ref -> image ID, for pointers
    tags: dict[str, set[str]] = field(default_factory=dict)  # repository -> tags
    tag_digests: dict[str, str] = field(default_factory=dict)  # repository:tag -> digest
    digests: dict[str, str] = field(default_factory=dict)  # external parent ref -> digest
    platforms: dict[str, frozenset[str]] = field(default_factory=dict)  # external ref -> os/arch set
    # (layer image name, target) -> present, or a dict tag -> Answer
    artifacts_by: dict[tuple[str, str], bool | dict[str, Answer]] = field(default_factory=dict)
    reachable: bool = True
    local_error: str | None = None  # set: local storage answers unknown

    def local_image(self, image_id: str | None, ref: str | None = None) -> Answer:
        if self.local_error:
            return unknown(self.local_error)
        for x in (image_id, ref):
            if x and (x in self.images or x in self.names):
                return Answer(Presence.PRESENT, holds=self.names.get(x))
        return ABSENT

    def local_names(self, image_id: str) -> tuple[str, ...]:
        return tuple(n for n, i in self.names.items() if i == image_id)

    def registry_tags(self, spec: LayerSpec) -> TagList:
        if not self.reachable:
            return TagList(None, "registry unreachable")
        return TagList(frozenset(self.tags.get(f"{spec.publish_registry}/{spec.name}", set())))

    def tag_digest(self, spec: LayerSpec, tag: str) -> Answer:
        if not self.reachable:
            return unknown("registry unreachable")
        d = self.tag_digests.get(f"{spec.publish_registry}/{spec.name}:{tag}")
        return Answer(Presence.PRESENT, holds=d) if d else ABSENT

    def external_digest(self, ref: str, spec: LayerSpec) -> str | None:
        return self.digests.get(ref) if self.reachable else None

    def external_platforms(self, ref: str, spec: LayerSpec) -> frozenset[str] | None:
        return self.platforms.get(ref) if self.reachable else None

    def artifacts(self, spec: LayerSpec, key: str, target: str) -> dict[str, Answer]:
        if target == "s3" and not self.reachable:
            return {t: unknown("S3 unreachable") for t in spec.publish_tags}
        got = self.artifacts_by.get((spec.name, target), True)
        if isinstance(got, dict):
            return dict(got)
        return {t: PRESENT if got else ABSENT for t in spec.publish_tags}


# ------------------------------------------------------------------------- live


class LiveInventory:
    """Asks the real world, cheaply (module docstring). With `offline`, registries and S3 answer unknown."""

    def __init__(self, offline: bool = False, runner: Runner | None = None, timeout: float = 5.0):
        self.offline = offline
        self.timeout = timeout  # seconds planning waits for a registry or S3 to connect, and again to answer
        self.runner = runner or Runner()
        self._lock = threading.Lock()
        self._local_lock = threading.Lock()
        self._local: dict[str, str] | None = None  # id or name -> image ID
        self._local_error: str | None = None
        self._registry: RegistryClient | None = None
        self._digests: dict[str, Answer] = {}  # repository:tag -> its digest (a plan's lifetime)
        self._external: dict[str, str | None] = {}  # external parent reference -> digest, once per run
        self._platforms: dict[str, frozenset[str] | None] = {}  # external parent -> its os/arch platforms
        self._s3: S3Index | None = None

    # -- local storage

    def start_local(self) -> None:
        """Start asking local storage (`buildah images`) now, in a thread, so that the answer is
        there when `prefetch` wants it: `plan` starts it before it loads the specs."""
        threading.Thread(target=self._read_local, name="inventory-local").start()

    def _read_local(self) -> None:
        with self._local_lock:  # its own lock: registry questions go on while buildah answers
            if self._local is not None or self._local_error is not None:
                return
            from .build.container import buildah_env

            try:
                res = self.runner.run(
                    ["buildah", "images", "--json", "--no-trunc"],
                    step="inventory",
                    env=buildah_env(),
                    capture=True,
                    check=False,
                    loglevel="DEBUG",
                    timeout=LOCAL_TIMEOUT,
                )
            except CommandError as exc:  # buildah cannot even start
                self._local_error = str(exc)
                return
            if res.returncode != 0:
                tail = " ".join(line.strip() for line in res.tail[-3:] if line.strip())
                self._local_error = (
                    f"`buildah images` failed (exit status {res.returncode}): {tail or 'no output'}"
                )
                return
            try:
                listing = json.loads(res.stdout or "[]") or []
                found: dict[str, str] = {}
                for img in listing:
                    # One spelling for IDs whatever the caller has: full hex, sha256:hex or the short form.
                    iid = str(img.get("id", "")).removeprefix("sha256:")
                    for alias in (iid, f"sha256:{iid}", iid[:12], *(img.get("names") or [])):
                        found[alias] = iid
            except (ValueError, AttributeError, TypeError) as exc:
                self._local_error = (
                    f"`buildah images --json` printed something that is not an image list: {exc}"
                )
                return
            self._local = found

    def local_image(self, image_id: str | None, ref: str | None = None) -> Answer:
        self._read_local()
        if self._local is None:
            return unknown(self._local_error or "local images unknown")
        for x in (image_id, ref):
            if x and x in self._local:
                return Answer(Presence.PRESENT, holds=self._local[x])
        return ABSENT

    def local_names(self, image_id: str) -> tuple[str, ...]:
        self._read_local()
        iid = (self._local or {}).get(image_id)
        return tuple(n for n, i in (self._local or {}).items() if iid and i == iid and "/" in n)

    # -- registries

    def registry(self) -> RegistryClient:
        with self._lock:
            if self._registry is None:
                from .publish.registry_client import planning_client

                self._registry = planning_client(self.timeout)
            return self._registry

    def registries_of(self, specs: list[LayerSpec]) -> dict[str, int]:
        """The registries `prefetch` asks, with how many repositories each (for a status line)."""
        if self.offline:
            return {}
        repos: dict[str, set[str]] = {}
        for spec in specs:
            if spec.publish_registry:
                ref = target_repository(spec)
                repos.setdefault(ref.registry, set()).add(ref.name)
        return {host: len(names) for host, names in repos.items()}

    def registry_problems(self) -> dict[str, str]:
        """Why each registry host that did not answer did not: host -> reason."""
        return self._registry.down_reasons() if self._registry is not None else {}

    def prefetch(
        self,
        specs: Sequence[LayerSpec],
        tags: Sequence[tuple[LayerSpec, str]] = (),
        workers: int = 16,
        external: Sequence[tuple[str, LayerSpec]] = (),
    ) -> None:
        """Ask everything the plan needs at once, in parallel: local images, tag lists, tag digests.

        One tag list per repository, then one HEAD per human tag that exists
        and per extra `(spec, tag)` asked for (key tags whose digest the state
        has no record of), and the `external` (reference, spec) parents' digests,
        once per reference; the answers are cached, and the plan then reads them.
        An untrusted TLS certificate raises RegistryTLSError naming every layer
        file it affects and the option to set.
        """
        from .publish.registry_errors import TLSVerifyError

        tls: dict[str, tuple[str, list[LayerSpec]]] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inventory") as pool:
            if not self.offline:
                # S3 first: its client (botocore's import and S3's models, ~0.25 s of CPU) and its
                # requests are the longest chain of a plan; the registry and local storage go beside.
                s3_targets: dict[tuple[str, str, str], list[LayerSpec]] = {}
                for spec in specs:
                    if spec.publish_s3:
                        where = (spec.publish_s3, spec.s3_bucket, spec.s3_prefix or "")
                        s3_targets.setdefault(where, []).append(spec)
                for group in s3_targets.values():
                    pool.submit(self._warm_s3, group)
            local = pool.submit(self._read_local)
            if not self.offline:
                client = self.registry()
                repos: dict[str, LayerSpec] = {}
                users: dict[str, list[LayerSpec]] = {}
                for spec in specs:
                    if spec.publish_registry:
                        client.configure_for(spec)
                        name = target_repository(spec).name
                        repos.setdefault(name, spec)
                        users.setdefault(name, []).append(spec)
                refs: dict[str, LayerSpec] = {}
                for ref, spec in external:
                    if ref not in self._external and ref not in refs:
                        client.configure_for(spec)
                        refs[ref] = spec
                digests = {ref: pool.submit(client.manifest_digest, ref) for ref in refs}
                # A host whose scheme is not known yet (https, then http for an insecure one) is
                # asked once first: each of its repositories would otherwise try https at the same
                # time, a TLS context and a failed handshake each (~30 ms of CPU apiece).
                first: dict[str, str] = {}
                for repo, spec in repos.items():
                    host = target_repository(spec).registry
                    if len(client.schemes(host)) > 1:
                        first.setdefault(host, repo)
                early = {repo: pool.submit(self.registry_tags, repos[repo]) for repo in first.values()}
                wait(early.values())  # its answer (or error) is read below, in the repositories' order
                futures = {
                    repo: early.get(repo) or pool.submit(self.registry_tags, spec)
                    for repo, spec in repos.items()
                }
                lists = {}
                for repo, fut in futures.items():
                    try:
                        lists[repo] = fut.result()
                    except TLSVerifyError as exc:
                        reason, affected = tls.setdefault(exc.host, (exc.reason, []))
                        affected.extend(users[repo])
                        lists[repo] = TagList(None, redact(str(exc)))
                for ref, dfut in digests.items():
                    try:
                        self._external[ref] = dfut.result()
                    except TLSVerifyError:
                        pass  # external_digest asks again and names the spec that wants it
                heads = [(spec, t) for spec in repos.values() for t in spec.publish_tags] + list(tags)
                listed = [
                    (spec, t)
                    for spec, t in heads
                    if (found := lists.get(target_repository(spec).name)) and found.tags and t in found.tags
                ]
                list(pool.map(lambda st: self.tag_digest(*st), listed))
            local.result()
        if tls:
            raise RegistryTLSError(
                [
                    (host, reason, [str(s.path) for s in affected], "registry_opts_push")
                    for host, (reason, affected) in tls.items()
                ]
            )

    def registry_tags(self, spec: LayerSpec) -> TagList:
        if self.offline:
            return TagList(None, "offline")
        from .publish.registry_errors import TLSVerifyError

        client = self.registry()
        client.configure_for(spec)
        repo = target_repository(spec).name
        try:
            tags = client.tags(repo)
        except TLSVerifyError:
            raise  # the plan stops and names the files and the option (prefetch, RegistryTLSError)
        except RegistryError as exc:
            return TagList(None, redact(str(exc)))
        if tags is None:
            return TagList(
                None, redact(client.errors.get(repo) or f"registry {spec.publish_registry} did not answer")
            )
        return TagList(frozenset(tags))

    def tag_digest(self, spec: LayerSpec, tag: str) -> Answer:
        if self.offline:
            return unknown("offline")
        ref = f"{target_repository(spec).name}:{tag}"
        with self._lock:
            if ref in self._digests:
                return self._digests[ref]
        client = self.registry()
        client.configure_for(spec)
        try:
            digest = client.manifest_digest(ref)
        except RegistryError as exc:
            return unknown(str(exc))
        if digest:
            ans = Answer(Presence.PRESENT, holds=digest)
        else:
            why = client.errors.get(str(parse_reference(ref)))
            ans = ABSENT if why == "not found" else unknown(why or f"{ref}: no answer")
        if not ans.unknown:  # one answer per plan; an unknown one may be asked again
            with self._lock:
                self._digests[ref] = ans
        return ans

    def external_digest(self, ref: str, spec: LayerSpec) -> str | None:
        if self.offline:
            return None
        if ref not in self._external:  # children of one external parent ask once
            from .publish.registry_errors import TLSVerifyError

            client = self.registry()
            client.configure_for(spec)
            try:
                self._external[ref] = client.manifest_digest(ref)
            except TLSVerifyError as exc:
                raise RegistryTLSError(
                    [(exc.host, exc.reason, [str(spec.path)], "registry_opts_pull")]
                ) from exc
        return self._external[ref]

    def external_platforms(self, ref: str, spec: LayerSpec) -> frozenset[str] | None:
        """The platforms an external parent offers (multi-arch layers only ask); None: unknown."""
        if self.offline:
            return None
        from .publish.registry_errors import RegistryError

        if ref not in self._platforms:  # every arch's node asks: once per reference
            client = self.registry()
            client.configure_for(spec)
            try:
                self._platforms[ref] = client.platforms(ref)
            except (RegistryError, ValueError, KeyError):
                self._platforms[ref] = None  # unknown is not "lacks it": the pull checks, at build time
        return self._platforms[ref]

    # -- S3 and directories

    def _s3_index(self) -> S3Index:
        with self._lock:
            if self._s3 is None:
                from .publish.s3 import S3Index, S3Settings

                # The registries' planning timeout bounds S3 too: a hung endpoint costs one timeout.
                self._s3 = S3Index(settings=S3Settings.quick(self.timeout))
            return self._s3

    def _warm_s3(self, specs: list[LayerSpec]) -> None:
        """List one S3 target and read its layers' SquashFS metadata into the index's cache.

        Run by `prefetch` beside the registry and local-storage questions, so
        the plan's S3 answers (`artifacts`) come from the cache instead of
        one request after another once the keys are known. The keys are not
        known yet: every candidate object of each tag is read. Decides
        nothing; what cannot be asked is asked (and reported) again by the plan.
        """
        from .publish.s3layout import find_published

        index = self._s3_index()

        def warm(spec: LayerSpec, tags: Sequence[str]) -> None:
            with contextlib.suppress(Exception):
                find_published(index, spec, "", tags)

        warm(specs[0], ())  # the listings, once (every spec of the group shares them)
        # Then the HEADs of every layer's tags at once, not one round trip after another.
        wanted = [(spec, [tag]) for spec in specs for tag in spec.publish_tags]
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="inventory-s3") as heads:
            list(heads.map(lambda st: warm(*st), wanted))

    def artifacts(self, spec: LayerSpec, key: str, target: str) -> dict[str, Answer]:
        if target == "dir":
            return dir_answers(spec, key)
        if self.offline:
            return {t: unknown("offline") for t in spec.publish_tags}
        return s3_answers(self._s3_index(), spec, key)


def dir_answers(spec: LayerSpec, key: str) -> dict[str, Answer]:
    """Per tag: present when `<publish_dir>/<name>/<tag>/` is a complete publication of `key`
    with today's SquashFS options and kernel choice.

    Otherwise absent, holding the key its manifest names (if any); unknown
    when the directory cannot be read (permissions, I/O errors).
    """
    from .publish.dirlayout import MANIFEST_NAME, dir_artifacts_present

    out: dict[str, Answer] = {}
    for tag in spec.publish_tags:
        path = Path(spec.publish_dir or "") / spec.name / tag / MANIFEST_NAME
        try:
            doc = json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError):
            out[tag] = ABSENT
            continue
        except OSError as exc:
            out[tag] = unknown(f"cannot read {path}: {exc.strerror or exc}")
            continue
        except ValueError:
            out[tag] = ABSENT  # a broken manifest holds nothing usable
            continue
        held = doc.get("key") if isinstance(doc, dict) else None
        held = held if isinstance(held, str) else None
        if held != key:
            out[tag] = Answer(Presence.ABSENT, holds=held, why=None if held else "its manifest names no key")
        elif not _dir_options_match(spec, doc):
            out[tag] = Answer(
                Presence.ABSENT, holds=key, why="published with other SquashFS or kernel options"
            )
        elif not dir_artifacts_present(spec, key, [tag]):
            out[tag] = Answer(
                Presence.ABSENT, holds=key, why="a file its manifest names is missing or has another size"
            )
        else:
            out[tag] = Answer(Presence.PRESENT, holds=key)
    return out


def _dir_options_match(spec: LayerSpec, doc: dict) -> bool:
    """The manifest was written with today's SquashFS options and kernel choice (S3 has them in metadata)."""
    sq = spec.squashfs
    want = {"compression": sq.compression, "level": sq.level, "block_size": sq.block_size}
    if doc.get("squashfs") != want:
        return False
    if spec.kernel_version and doc.get("kver") != spec.kernel_version:
        return False
    return not (spec.rootfs_only and doc.get("boot"))


def s3_answers(index: S3Index, spec: LayerSpec, key: str) -> dict[str, Answer]:
    """Per tag: present when S3 holds a complete publication of `key` (object metadata).

    Otherwise absent, holding the key of the rootfs object found under the
    tag's name (if any); unknown when S3 cannot be asked.
    """
    from .publish.s3layout import find_published

    found = find_published(index, spec, key, spec.publish_tags)
    if found is None:
        why = index.unreachable(spec.publish_s3 or "") or f"S3 {spec.publish_s3} did not answer"
        return {t: unknown(why) for t in spec.publish_tags}
    out: dict[str, Answer] = {}
    for tag, keys in found.items():
        if keys is not None:
            out[tag] = Answer(Presence.PRESENT, holds=key)
        else:
            out[tag] = s3_tag_answer(index, spec, key, tag)
    return out


def s3_tag_answer(index: S3Index, spec: LayerSpec, key: str, tag: str) -> Answer:
    """Absent: what the SquashFS object under a tag's name holds instead of a complete publication
    of `key` (another layer key, or why an object of `key` itself does not count)."""
    from .publish.s3 import META_KEY
    from .publish.s3layout import META_OPTIONS, artifact_options

    ours: dict | None = None
    foreign = False
    for _cand, meta in _s3_tag_objects(index, spec, tag):
        held = meta.get(META_KEY) if meta else None
        if held and held != key:
            return Answer(Presence.ABSENT, holds=held)
        if held == key:
            ours = meta
        elif meta is not None:
            foreign = True
    if ours is not None:
        if ours.get(META_OPTIONS) != artifact_options(spec):
            return Answer(Presence.ABSENT, holds=key, why="published with other SquashFS or kernel options")
        return Answer(
            Presence.ABSENT,
            holds=key,
            why="its kernel or initramfs was replaced after it was published",
        )
    if foreign:
        return Answer(Presence.ABSENT, why="the object there was not written by imagegraph")
    return ABSENT


def _s3_tag_objects(index: S3Index, spec: LayerSpec, tag: str) -> Iterator[tuple[str, dict | None]]:
    """(key, user metadata or None) of each object that could be a tag's SquashFS."""
    from .publish.s3layout import artifact_keys

    endpoint, bucket, prefix = spec.publish_s3 or "", spec.s3_bucket, spec.s3_prefix or ""
    listing = index.objects(endpoint, bucket, prefix) or {}
    if spec.s3_layout == "versioned":
        candidates = [k for k in [artifact_keys(spec, tag, "", "").rootfs] if k in listing]
    else:
        suffix = f"-{spec.name}-{tag}"
        candidates = sorted(k for k in listing if k.endswith(suffix) and "/" not in k[len(prefix) :])
    for cand in candidates:
        yield cand, index.metadata(endpoint, bucket, cand)


def s3_tag_key(index: S3Index, spec: LayerSpec, tag: str) -> str | None:
    """The layer key in the metadata of the SquashFS object a tag's name points at, if any."""
    from .publish.s3 import META_KEY

    for _cand, meta in _s3_tag_objects(index, spec, tag):
        if meta and meta.get(META_KEY):
            return meta[META_KEY]
    return None
