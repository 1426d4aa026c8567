"""One OCI image index (manifest list) per layer: every architecture's image under one tag.

Each architecture's image is pushed on its own, under its own key tag. When
every architecture of a layer has succeeded, `publish_index` writes one index
that lists each of those manifests with its platform, pushes it once under an
immutable index tag (derived from the member keys, so the same set of builds
always gets the same tag), and points each human tag at it. Until then the
human tags stay where they were: a failed architecture never leaves a tag
pointing at a list that lacks it.

buildah writes the index (`buildah manifest create/add/push`), so it carries
exactly the manifests and platforms buildah and podman would; the human tags
are then copied over the registry API, as for single-arch images.
"""

from __future__ import annotations

import json
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..arch import Arch
from ..keytag import index_key as index_key
from ..keytag import index_tag
from ..runner import Runner
from .registry_client import RegistryClient
from .registry_errors import RegistryError

INDEX_MEDIA_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass(frozen=True)
class IndexPublication:
    """Where an index went: its digest, the tags naming it, and each platform's member."""

    repository: str
    digest: str
    tags: tuple[str, ...]
    platforms: dict[str, str]  # "linux/arm64" -> member manifest digest

    def to_json(self) -> dict:
        return {
            "repository": self.repository,
            "digest": self.digest,
            "tags": list(self.tags),
            "platforms": self.platforms,
        }


def publish_index(
    repository: str,
    members: dict[Arch, tuple[str, str]],
    tags: Sequence[str],
    runner: Runner,
    *,
    opts: Sequence[str] = (),
    client: RegistryClient | None = None,
) -> IndexPublication:
    """Write the index of `members` (arch -> (build key, member reference in `repository`)).

    The members must already be in `repository` (pushed under their key tags).
    The index is pushed under `index_tag`, then every tag in `tags` is pointed at
    it. Raises RegistryError (or CommandError from buildah) on failure; the
    working list in local storage is removed either way.
    """
    words = [w for o in opts for w in shlex.split(str(o))]
    keys = {a: k for a, (k, _) in members.items()}
    itag = index_tag(keys)
    local = f"localhost/imagegraph-index/{repository.rsplit('/', 1)[-1]}:{itag}"
    tls = [w for w in words if w.startswith("--tls-verify")]
    auth = [w for w in words if w.startswith(("--authfile", "--creds", "--cert-dir"))]
    runner.run(["buildah", "manifest", "rm", local], step="index", check=False, cleanup=True)
    runner.run(["buildah", "manifest", "create", local], step="index")
    try:
        for arch, (_key, ref) in sorted(members.items()):
            runner.run(
                [
                    "buildah",
                    "manifest",
                    "add",
                    *tls,
                    *auth,
                    "--arch",
                    arch.oci,
                    "--os",
                    "linux",
                    local,
                    f"docker://{ref}",
                ],
                step="index",
            )
        with tempfile.TemporaryDirectory(prefix="ig-index-") as tmp:
            digestfile = Path(tmp) / "digest"
            runner.run(
                [
                    "buildah",
                    "manifest",
                    "push",
                    *words,
                    "--digestfile",
                    str(digestfile),
                    local,
                    f"docker://{repository}:{itag}",
                ],
                step="index",
            )
            digest = digestfile.read_text().strip()
        inspected = json.loads(runner.output(["buildah", "manifest", "inspect", local], step="index"))
    finally:
        runner.run(["buildah", "manifest", "rm", local], step="index", check=False, cleanup=True)
    platforms = {
        f"{m['platform']['os']}/{m['platform']['architecture']}": m["digest"]
        for m in inspected.get("manifests", [])
    }
    if len(platforms) != len(members):
        raise RegistryError(
            f"{repository}:{itag}", f"the index lists {sorted(platforms)}, expected {len(members)}"
        )
    client = client or RegistryClient()
    wanted = [t for t in dict.fromkeys(tags) if t != itag]
    for t in wanted:
        client.put_tag(repository, digest, t)
    runner.note(
        "index",
        f"{repository}:{itag} ({digest}) lists {', '.join(sorted(platforms))}; tagged {', '.join(wanted) or '-'}",
    )
    return IndexPublication(repository, digest, (*wanted, itag), platforms)
