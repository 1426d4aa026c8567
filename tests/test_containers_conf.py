"""registries.conf with its drop-ins (containers-registries.conf(5), .d(5)), and credentials per repository.

The merge rules are checked on files; the effect on the HTTP client against the
real docker-registry: a registry only registries.conf.d marks insecure is spoken
to over http, and two repositories on one htpasswd registry authenticate with
their own auth.json entries, not with whichever the host used first.
"""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.publish.containers_conf import RegistriesConf, registries_conf_paths, repository_prefixes
from imagegraph.publish.registry_client import RegistryClient
from imagegraph.publish.registry_errors import RegistryError
from imagegraph.redact import redact
from imagegraph.retry import RetryPolicy
from imagegraph.spec import LayerSpec

FAST = RetryPolicy(attempts=2, initial_wait=0.05, max_wait=0.1)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A system and a user configuration tree of our own (nothing from this machine's /etc)."""
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF", raising=False)
    # buildah's containers/image reads ~/.config here even when XDG_CONFIG_HOME says otherwise
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "elsewhere"))
    return {
        "system": tmp_path / "etc" / "registries.conf",
        "system_d": tmp_path / "etc" / "registries.conf.d",
        "user": tmp_path / "home" / ".config" / "containers" / "registries.conf",
        "user_d": tmp_path / "home" / ".config" / "containers" / "registries.conf.d",
    }


def _paths(h: dict[str, Path]) -> list[Path]:
    return registries_conf_paths(system=h["system"], system_d=h["system_d"])


def test_which_files_are_read_and_in_what_order(homes: dict[str, Path], monkeypatch) -> None:
    h = homes
    b = _write(h["system_d"] / "b.conf", "")
    a = _write(h["system_d"] / "a.conf", "")
    _write(h["system_d"] / "c.conf.rpmsave", "")  # only *.conf counts
    (h["system_d"] / "d.conf").mkdir()  # sub-directories are ignored
    ua = _write(h["user_d"] / "0.conf", "")
    # no per-user registries.conf: the system file, the system drop-ins, then the user's
    assert _paths(h) == [h["system"], a, b, ua]
    # $CONTAINERS_REGISTRIES_CONF replaces the main file only
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", "/elsewhere.conf")
    assert _paths(h) == [Path("/elsewhere.conf"), a, b, ua]
    monkeypatch.delenv("CONTAINERS_REGISTRIES_CONF")
    # a per-user registries.conf: only the per-user drop-ins are read after it
    _write(h["user"], "")
    assert _paths(h) == [h["user"], ua]


def test_drop_ins_replace_tables_with_the_same_prefix_and_add_the_others(homes: dict[str, Path]) -> None:
    h = homes
    _write(
        h["system"],
        '[[registry]]\nlocation = "a.example:5000"\ninsecure = true\n'
        '[[registry]]\nlocation = "b.example"\ninsecure = false\n'
        '[registries.insecure]\nregistries = ["v1.example"]\n',
    )
    # alpha-numerical order: 20 comes after 10 and wins for the same prefix
    _write(h["system_d"] / "10-a.conf", '[[registry]]\nlocation = "a.example:5000"\ninsecure = true\n')
    _write(
        h["system_d"] / "20-a.conf", '[[registry]]\nprefix = "a.example:5000"\nlocation = "a.example:5000"\n'
    )
    _write(h["system_d"] / "30-b.conf", '[[registry]]\nlocation = "b.example"\ninsecure = true\n')
    _write(
        h["user_d"] / "lab.conf",
        '[[registry]]\nprefix = "*.lab.example"\nlocation = "mirror.example"\ninsecure = true\n',
    )
    _write(h["system_d"] / "zz-broken.conf", "[[registry]\n")  # refused with a warning, the rest stands
    conf = RegistriesConf.load(_paths(h))
    assert not conf.insecure("a.example:5000")  # the later drop-in's table has no insecure
    assert conf.insecure("b.example") and conf.insecure("B.Example")
    assert conf.insecure("v1.example")  # v1 format in the main file
    assert conf.insecure("build.lab.example") and conf.insecure("build.lab.example:5000")
    assert conf.insecure("mirror.example")
    assert not conf.insecure("lab.example") and not conf.insecure("c.example")
    assert str(h["system_d"] / "zz-broken.conf") not in conf.files
    assert str(h["system_d"] / "30-b.conf") in conf.files


HOSTS = ["a.example", "b.example:5000", "c.example"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(HOSTS), st.booleans(), max_size=3),  # one table per prefix a file
        min_size=1,
        max_size=5,
    )
)
def test_the_last_file_with_a_prefix_decides(files: list[dict[str, bool]]) -> None:
    expected: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, tables in enumerate(files):
            text = "".join(
                f'[[registry]]\nlocation = "{h}"\ninsecure = {str(v).lower()}\n' for h, v in tables.items()
            )
            paths.append(_write(Path(tmp) / f"{i:02}.conf", text))
            expected.update(tables)
        conf = RegistriesConf.load(paths)
    for h in HOSTS:
        assert conf.insecure(h) == expected.get(h, False), (h, files)


def test_a_registry_only_a_drop_in_marks_insecure_is_spoken_to_over_http(
    registry, homes: dict[str, Path], monkeypatch
) -> None:
    # `127.1` is 127.0.0.1 to the resolver but not a loopback name to the client,
    # so nothing but registries.conf can make it insecure (plain http).
    host = f"127.1:{registry.port}"
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(_write(homes["system"], "")))
    assert RegistryClient(retry=FAST, auth_files=[]).tags(f"{host}/ns/app") is None
    _write(homes["user_d"] / "50-test.conf", f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
    client = RegistryClient(retry=FAST, auth_files=[])
    assert client.tags(f"{host}/ns/app") == set(), client.errors
    assert client.schemes(host) == ["http"]  # what answered is remembered
    digest = client.put_blob(f"{host}/ns/app", b"drop-in")
    assert (
        RegistryClient(retry=FAST, auth_files=[], registries_conf=client.registries_conf).put_blob(
            f"{host}/ns/app", b"drop-in"
        )
        == digest
    )


def _auth(user: str, password: str) -> dict:
    return {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize("first", ["good", "bad"])
def test_credentials_are_per_repository_not_per_host(auth_registry, tmp_path: Path, first: str) -> None:
    host = auth_registry.host
    authfile = tmp_path / "auth.json"
    authfile.write_text(
        json.dumps(
            {
                "auths": {
                    f"{host}/good": _auth(auth_registry.username, auth_registry.password),
                    f"{host}/bad": _auth(auth_registry.username, "pw-wrong-for-bad-7"),
                }
            }
        )
    )
    client = RegistryClient(retry=FAST, auth_files=[authfile])

    def good() -> None:
        assert client.tags(f"{host}/good/app") == set()  # logged in; nothing pushed there yet

    def bad() -> None:
        with pytest.raises(RegistryError) as err:
            client.tags(f"{host}/bad/app")
        assert err.value.status == 401
        assert "pw-wrong-for-bad-7" not in str(err.value)

    for check in (good, bad) if first == "good" else (bad, good):
        check()
    good()  # still its own credentials after the other repository's failure
    assert redact(f"x {auth_registry.password} pw-wrong-for-bad-7") == "x *** ***"


def test_layer_options_apply_to_their_own_repository(tmp_path: Path) -> None:
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {"reg.example": _auth("from-file", "pw-file-3")}}))
    spec = LayerSpec(
        path=Path("x.yaml"),
        layer_type="base",
        name="c",
        parent="reg.example/base/p:1",
        publish_registry="reg.example/ns",
        registry_opts_push=("--creds", "pusher:pw-push-3"),
    )
    client = RegistryClient(retry=FAST, auth_files=[authfile])
    client.configure_for(spec)
    assert client.credentials("reg.example/ns/c").username == "pusher"
    assert client.credentials("reg.example/base/p").username == "from-file"  # the parent: no --creds
    other = RegistryClient(retry=FAST, auth_files=[])
    other.configure_registry("reg.example", ["--creds", "all:pw-all-3"])  # given for the host: all of it
    assert other.credentials("reg.example/any/thing").username == "all"
    assert repository_prefixes("h:1/a/b") == ["h:1/a/b", "h:1/a", "h:1"]


def test_a_basic_host_gets_each_repositorys_credentials_unasked(auth_registry, tmp_path: Path) -> None:
    # per repository, yet no extra 401 round trip per repository once the host asked for Basic
    host = auth_registry.host
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {host: _auth(auth_registry.username, auth_registry.password)}}))
    client = RegistryClient(retry=FAST, auth_files=[authfile])
    assert client.tags(f"{host}/one/app") == set()
    assert client.request_count == 2  # the challenge, then the answer
    for i in range(5):
        assert client.tags(f"{host}/r{i}/app") == set()
    assert client.request_count == 7
