"""imagegraph/lockfile.py and its use by plan: upstream fingerprints, pinned parents, --max-age.

No buildah here: repositories are directories with a repomd.xml (or a Release file) served over
HTTP on 127.0.0.1; the real dnf repository round trip is in tests/test_unattended.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imagegraph.duration import format_age, format_duration, parse_duration
from imagegraph.graph import build_graph
from imagegraph.key import compute_keys
from imagegraph.lockfile import RepoSource, load_lock, lock, repo_sources, substitute
from imagegraph.plan import Action, StaticInventory, make_plan
from imagegraph.project import load_project
from imagegraph.state import State
from tests.rpmrepo import serve

from .specdirs import write

EXE = [sys.executable, "-m", "imagegraph.cli"]
SECRET = "Lk9-sekrit-pw"


def repomd(revision: str) -> str:
    return f'<?xml version="1.0"?>\n<repomd><revision>{revision}</revision></repomd>\n'


def make_upstream(d: Path) -> Path:
    """Two rpm-md repositories and one apt suite under one served directory."""
    (d / "baseos/9/x86_64/repodata").mkdir(parents=True)
    (d / "baseos/9/x86_64/repodata/repomd.xml").write_text(repomd("100"))
    (d / "extras/repodata").mkdir(parents=True)
    (d / "extras/repodata/repomd.xml").write_text(repomd("7"))
    (d / "debian/dists/bookworm").mkdir(parents=True)
    (d / "debian/dists/bookworm/Release").write_text("Origin: Debian\nDate: Sat, 01 Jun 2024 10:00:00 UTC\n")
    return d


def layer(name: str, parent: str, repos: list[tuple[str, str]], pm: str = "dnf", extra: str = "") -> str:
    text = (
        f"options:\n  layer_type: base\n  name: {name}\n  pkg_manager: {pm}\n  parent: '{parent}'\n"
        f"  releasever: '9'\n{extra}"
    )
    if repos:
        text += "repos:\n" + "".join(f"  - alias: {a}\n    url: '{u}'\n" for a, u in repos)
    return text + "packages: [vim]\n"


@pytest.fixture
def upstream(tmp_path: Path):
    server = serve(make_upstream(tmp_path / "www"))
    yield tmp_path / "www", server.url
    server.stop()


@pytest.fixture
def site(tmp_path: Path, upstream):
    """base (BaseOS) -> compute (Extras) -> gpu;  other (Extras only, from scratch)."""
    www, url = upstream
    creds = url.replace("http://", f"http://igtest:{SECRET}@")
    root = tmp_path / "layers"
    local = "  publish_local: true\n"
    write(
        root,
        "base.yaml",
        layer("base", "scratch", [("Rocky_9_BaseOS", creds + "baseos/$releasever/$basearch/")], extra=local),
    )
    write(
        root,
        "compute.yaml",
        layer("compute", "localhost/base:latest", [("Extras", url + "extras/")], extra=local),
    )
    write(root, "gpu.yaml", layer("gpu", "localhost/compute:latest", []))
    write(root, "other.yaml", layer("other", "scratch", [("Extras", url + "extras/")]))
    return root, www, url


def graph(root: Path):
    return build_graph(load_project(root))


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMAGEGRAPH_RETRY_ATTEMPTS": "2", "IMAGEGRAPH_RETRY_INITIAL_WAIT": "0.05"}
    return subprocess.run([*EXE, *args], capture_output=True, text=True, env=env, timeout=120)


# ---------------------------------------------------------------------------- sources


def test_substitution_and_sources(tmp_path: Path) -> None:
    assert (
        substitute("https://x/$releasever/BaseOS/$basearch/os/", "9", "aarch64")
        == "https://x/9/BaseOS/aarch64/os/"
    )
    assert substitute("https://x/${releasever}/${basearch}/", "8", "x86_64") == "https://x/8/x86_64/"
    assert substitute("https://x/$unknown/", "9", "x86_64") == "https://x/$unknown/"
    write(
        tmp_path,
        "a.yaml",
        layer("a", "scratch", [("R", "https://u:p@h/r/$releasever/"), ("F", "https://h/f.repo")]),
    )
    write(tmp_path, "d.yaml", layer("d", "scratch", [], pm="apt"))
    lg = graph(tmp_path)
    a = repo_sources(lg.spec("a"))
    assert [(s.alias, s.kind, s.url) for s in a] == [
        ("R", "rpm-md", "https://u:p@h/r/9/"),
        ("F", "repo-file", "https://h/f.repo"),
    ]
    assert a[0].shown_url == "https://***@h/r/9/" and a[0].fingerprint_url() == [
        "https://u:p@h/r/9/repodata/repomd.xml"
    ]
    (d,) = repo_sources(lg.spec("d"))  # apt without repos: the Debian archive, suite from releasever
    assert d.kind == "apt" and d.suite == "9" and d.fingerprint_url()[0].endswith("/dists/9/InRelease")
    assert (
        RepoSource("x", "apt", "http://m/debian", "bookworm").fingerprint_url()[1]
        == "http://m/debian/dists/bookworm/Release"
    )


# ----------------------------------------------------------------------------- locking


def test_lock_writes_stable_redacted_file_and_keeps_entries(site) -> None:
    root, www, url = site
    r = cli("lock", str(root), "--no-resolve")
    assert r.returncode == 0, r.stderr
    text = (root / "imagegraph.lock").read_text()
    assert SECRET not in text and SECRET not in r.stdout + r.stderr
    lk = load_lock(root)
    assert lk is not None
    entries = {k[0]: e for k, e in lk.repositories.items()}
    assert set(entries) == {"Rocky_9_BaseOS", "Extras"}
    assert entries["Rocky_9_BaseOS"]["revision"] == "100" and entries["Rocky_9_BaseOS"]["url"].startswith(
        "http://***@"
    )
    assert "/baseos/9/" in entries["Rocky_9_BaseOS"]["url"]  # $releasever / $basearch substituted
    assert entries["Extras"]["layers"] == ["compute.yaml", "other.yaml"]
    # Writing again changes nothing (stable ordering, no timestamps).
    assert (
        cli("lock", str(root), "--no-resolve").returncode == 0
        and (root / "imagegraph.lock").read_text() == text
    )

    # Upstream moves. Without --update the file does not move; with it, one entry is updated.
    (www / "extras/repodata/repomd.xml").write_text(repomd("8"))
    r = cli("lock", str(root), "--no-resolve", "--json")
    assert r.returncode == 0 and not json.loads(r.stdout)["written"]
    assert (root / "imagegraph.lock").read_text() == text
    r = cli("lock", str(root), "--no-resolve", "--update", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["written"] and [c["name"] for c in doc["changes"] if c["change"] == "updated"] == ["Extras"]
    entries = {k[0]: e for k, e in load_lock(root).repositories.items()}
    assert entries["Extras"]["revision"] == "8" and entries["Rocky_9_BaseOS"]["revision"] == "100"


def test_unreachable_repository_is_an_error_and_the_file_stays(site) -> None:
    root, www, url = site
    assert cli("lock", str(root), "--no-resolve").returncode == 0
    before = (root / "imagegraph.lock").read_bytes()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # nothing listens there once the socket is closed
    p = root / "other.yaml"
    p.write_text(p.read_text().replace(url + "extras/", f"http://me:{SECRET}@127.0.0.1:{dead}/gone/"))
    r = cli("lock", str(root), "--no-resolve", "--update")
    assert r.returncode == 1
    out = r.stdout + r.stderr
    assert "repository Extras" in out and "other.yaml" in out and "unreachable after 2 attempts" in out
    assert "left unchanged" in out and SECRET not in out
    assert (root / "imagegraph.lock").read_bytes() == before
    # A 404 is an error too, at once.
    p.write_text(p.read_text().replace(f"http://me:{SECRET}@127.0.0.1:{dead}/gone/", url + "nothing-here/"))
    r = cli("lock", str(root), "--no-resolve", "--update")
    assert r.returncode == 1 and "HTTP 404" in r.stdout + r.stderr
    assert (root / "imagegraph.lock").read_bytes() == before


def test_lock_fetches_only_missing_entries_without_update(site) -> None:
    root, www, url = site
    calls: list[str] = []

    def fetch(u: str, proxy: str | None) -> bytes:
        calls.append(u)
        return b"<repomd><revision>1</revision></repomd>"

    lock(graph(root), fetch=fetch, resolve=False)
    assert len(calls) == 2
    calls.clear()
    assert not lock(graph(root), fetch=fetch, resolve=False).written and calls == []
    lock(graph(root), fetch=fetch, update=True, resolve=False)
    assert len(calls) == 2


# ------------------------------------------------------------------------ keys and plan


def plan(root: Path, state: State, inv: StaticInventory, **kw):
    lk = load_lock(root)
    kw.setdefault("offline", not inv.reachable)  # unreachable and not offline would be unknown
    return make_plan(
        graph(root),
        state,
        inv,
        upstream_of=lk.upstream_of if lk else None,
        locked_digest=lk.parent_digest if lk else None,
        **kw,
    )


def record(p, state: State, inv: StaticInventory, when: float | None = None) -> None:
    for lid, lp in p.layers.items():
        image = f"sha256:{lp.key[:12]}"
        t = when or time.time()
        state.record_build(
            run_id="r",
            layer=lid,
            key=lp.key,
            inputs=lp.inputs,
            image_id=image,
            image_ref=None,
            spec_file=lp.file,
            parent_key=None,
            started=t - 3,
            finished=t,
        )
        inv.images.add(image)
        for target, spec in lp.targets.items():
            if target == "local":
                inv.images.update(f"localhost/{spec['name']}:{t}" for t in spec["tags"])
            state.record_publication(
                run_id="r", layer=lid, key=lp.key, target=target, spec=spec, locations=[]
            )


def test_no_lock_file_keeps_upstream_empty(site) -> None:
    root, _, _ = site
    keys = compute_keys(graph(root), graph(root).order())
    assert all(k.inputs["upstream"] == {} for k in keys.values())


def test_upstream_change_rebuilds_exactly_its_users(site, tmp_path: Path) -> None:
    root, www, url = site
    assert cli("lock", str(root), "--no-resolve").returncode == 0
    state, inv = State(tmp_path / "s.db"), StaticInventory(reachable=False)
    first = plan(root, state, inv)
    assert first.layers["base"].inputs["upstream"] == {
        "repo:Rocky_9_BaseOS": load_lock(root).upstream_of(first.graph.spec("base"))["repo:Rocky_9_BaseOS"]
    }
    record(first, state, inv)
    assert not plan(root, state, inv).pending

    (www / "baseos/9/x86_64/repodata/repomd.xml").write_text(repomd("101"))
    assert not plan(root, state, inv).pending  # locked: an upstream move alone changes nothing
    assert cli("lock", str(root), "--no-resolve", "--update").returncode == 0
    p = plan(root, state, inv)
    acts = {lid: lp.action for lid, lp in p.layers.items()}
    assert acts == {
        "base": Action.BUILD,
        "compute": Action.BUILD,
        "gpu": Action.BUILD,
        "other": Action.UP_TO_DATE,
    }
    (r,) = p.layers["base"].reasons
    assert r.code == "upstream-changed" and r.message == "upstream repository Rocky_9_BaseOS changed"
    assert p.layers["compute"].reasons[0].code == "parent-rebuilds"

    (www / "extras/repodata/repomd.xml").write_text(repomd("9"))
    record(p, state, inv)
    assert cli("lock", str(root), "--no-resolve", "--update").returncode == 0
    p = plan(root, state, inv)
    assert {lid for lid, lp in p.layers.items() if lp.pending} == {"compute", "gpu", "other"}
    assert [r.message for r in p.layers["other"].reasons] == ["upstream repository Extras changed"]


def test_locked_parent_digest_wins_over_the_registry(tmp_path: Path) -> None:
    root = tmp_path / "l"
    ref = "registry.example.org/bci/bci-base:15.7"
    write(root, "suse.yaml", f"options:\n  layer_type: base\n  pkg_manager: zypper\n  parent: {ref}\n")
    locked, live = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    write(
        root,
        "imagegraph.lock",
        f"version: 1\nrepositories: []\nparents:\n  - reference: {ref}\n    digest: '{locked}'\n",
    )
    state = State(tmp_path / "s.db")
    p = plan(root, state, StaticInventory(reachable=True, digests={ref: live}))
    lp = p.layers["suse"]
    assert lp.inputs["parent"] == {"kind": "image", "digest": locked}
    assert any(n.code == "parent-locked" for n in lp.notes)
    # Offline with a lock: still keyed by the locked digest.
    off = plan(root, state, StaticInventory(reachable=False))
    assert off.layers["suse"].key == lp.key


def test_malformed_lock_file_is_a_spec_error(tmp_path: Path) -> None:
    root = tmp_path / "l"
    write(root, "a.yaml", layer("a", "scratch", []))
    write(root, "imagegraph.lock", "version: 1\nrepositories:\n  - alias: x\n")
    r = cli("plan", str(root), "--offline")
    assert r.returncode == 2 and "imagegraph.lock" in r.stderr


# ------------------------------------------------------------------------------ max age


def test_max_age_rebuilds_old_layers(site, tmp_path: Path) -> None:
    root, _, _ = site
    state, inv = State(tmp_path / "s.db"), StaticInventory(reachable=False)
    now = time.time()
    p = plan(root, state, inv)
    record(p, state, inv, when=now - 9 * 86400)
    assert not plan(root, state, inv, max_age=parse_duration("10d"), now=now).pending
    p = plan(root, state, inv, max_age=parse_duration("7d"), now=now)
    (r,) = p.layers["base"].reasons
    assert r.code == "too-old" and r.message == "last built 9 days ago, older than --max-age 7d"
    assert p.layers["compute"].reasons[0].code == "parent-rebuilds"
    assert {lp.action for lp in p.layers.values()} == {Action.BUILD}


def test_durations() -> None:
    assert (
        parse_duration("7d") == 7 * 86400 and parse_duration("12h") == 43200 and parse_duration("30m") == 1800
    )
    assert parse_duration("1d12h") == 129600 and parse_duration("1w") == 604800
    for bad in ("", "7", "7x", "d", "-1d", "0m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert (
        format_duration(604800) == "7d"
        and format_duration(129600) == "1d12h"
        and format_duration(1800) == "30m"
    )
    assert (
        format_age(9.5 * 86400) == "9 days" and format_age(3600) == "1 hour" and format_age(5) == "5 seconds"
    )
    r = cli("plan", "/nonexistent", "--max-age", "soon")
    assert r.returncode == 2 and "not a duration" in r.stderr
