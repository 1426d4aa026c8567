"""imagegraph/spec.py: loading, defaults, real-world forms, diagnostics with positions."""

from __future__ import annotations

from pathlib import Path

import pytest

from imagegraph.errors import SpecError
from imagegraph.spec import load_spec, read_spec

from .needs import requires
from .specdirs import BASE, write

# The workplace's shared examples sit beside the checkout; a CI clone may live elsewhere.
EXAMPLES = next(
    (
        p
        for p in (Path(__file__).resolve().parents[2] / "shared" / "examples", Path("/work/shared/examples"))
        if p.is_dir()
    ),
    Path(__file__).resolve().parents[2] / "shared" / "examples",
)


def test_defaults_and_real_world_forms(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "base.yaml", BASE))
    assert spec.publish_tags == ("9.5",)  # one string becomes a list
    assert spec.publish_registry == "registry.dist.si.usrc:5000/redondo"  # trailing / dropped
    assert [c.cmd for c in spec.cmds] == ["echo base", "echo bare string"]  # bare string accepted
    assert spec.cmds[1].loglevel == "INFO"
    assert spec.gpgcheck is True and spec.publish_local is False
    assert spec.s3_bucket == "boot-images" and spec.s3_prefix == ""
    assert spec.repos[0].alias == "Rocky_9_BaseOS"


def test_minimal_defaults(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "x.yaml", "options:\n  layer_type: base\n  pkg_manager: apt\n"))
    assert spec.name == "base" and spec.publish_tags == ("latest",) and spec.parent == "scratch"
    assert spec.pkg_manager == "apt"


def test_unknown_key_did_you_mean_with_position(tmp_path: Path) -> None:
    p = write(tmp_path, "x.yaml", "options:\n  layer_type: base\n  pkg_manager: dnf\npakages:\n  - vim\n")
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    (d,) = ei.value.diagnostics
    assert (d.line, d.column) == (4, 1)
    assert "pakages" in d.message and d.hint == "did you mean 'packages'?"
    assert str(d).startswith(f"{p}:4:1: error:")


def test_unknown_option_key(tmp_path: Path) -> None:
    p = write(tmp_path, "x.yaml", "options:\n  layer_type: base\n  pkg_manager: dnf\n  publish_tag: '1'\n")
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    (d,) = ei.value.diagnostics
    assert (d.line, d.column) == (4, 3) and "publish_tags" in d.hint


def test_all_errors_of_a_file_at_once(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "x.yaml",
        """
        options:
          layer_type: base
          pkg_manager: yum
          publish_local: "true'"
        packages: vim
        cmds:
          - 42
        """,
    )
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    lines = sorted(d.line for d in ei.value.diagnostics)
    assert lines == [3, 4, 5, 7], [str(d) for d in ei.value.diagnostics]


def test_dst_alias_warns(tmp_path: Path) -> None:
    write(tmp_path, "f.txt", "x")
    p = write(
        tmp_path,
        "x.yaml",
        "options:\n  layer_type: base\n  pkg_manager: dnf\ncopyfiles:\n  - src: f.txt\n    dst: /etc/f\n",
    )
    spec, diags = read_spec(p)
    assert spec is not None and spec.copyfiles[0].dest == "/etc/f"
    assert [d.severity for d in diags] == ["warning"] and "dst" in diags[0].message and diags[0].line == 6


def test_missing_copyfiles_source_names_line(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "x.yaml",
        "options:\n  layer_type: base\n  pkg_manager: dnf\ncopyfiles:\n  - src: '/data/nope.conf'\n    dest: /etc/x\n",
    )
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    (d,) = ei.value.diagnostics
    assert d.line == 5 and "/data/nope.conf" in d.message and "does not exist" in d.message


def test_ignored_keys_warn(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        "x.yaml",
        """
        options:
          layer_type: base
          pkg_manager: dnf
          s3_prefix: 'x/'
          registry_opts_pull: ['--tls-verify=false']
        repos:
          - alias: a
            url: http://x/
            priority: 5
        """,
    )
    spec, diags = read_spec(p)
    assert spec is not None
    msgs = " | ".join(d.message for d in diags)
    assert all(d.severity == "warning" for d in diags)
    assert (
        "s3_prefix is ignored" in msgs and "registry_opts_pull is ignored" in msgs and "zypper only" in msgs
    )


@pytest.mark.parametrize(
    "snippet, fragment",
    [
        ("  name: '../etc'\n", "image names"),
        ("  name: 'a/../b'\n", "image names"),
        ("  publish_tags: ['ok', '../x']\n", "tags are"),
        ('  publish_tags: "a\\x01b"\n', "tags are"),
        ("  publish_s3: http://s3\n  s3_prefix: '../escape/'\n", "S3 prefix"),
    ],
)
def test_names_that_escape_are_rejected(tmp_path: Path, snippet: str, fragment: str) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("options:\n  layer_type: base\n  pkg_manager: dnf\n" + snippet)
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    assert any(fragment in d.message for d in ei.value.diagnostics), [str(d) for d in ei.value.diagnostics]


def test_openscap_rejected(tmp_path: Path) -> None:
    p = write(tmp_path, "x.yaml", "options:\n  layer_type: base\n  pkg_manager: dnf\nopenscap:\n  - x\n")
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    assert "openscap is not supported" in ei.value.diagnostics[0].message


@pytest.mark.parametrize(
    "text",
    ["", "- a\n- b\n", "options: [\n", "options:\n  layer_type: base\n  layer_type: ansible\n", "\x00\x01"],
)
def test_broken_documents_are_diagnostics(tmp_path: Path, text: str) -> None:
    p = tmp_path / "x.yaml"
    p.write_text(text)
    spec, diags = read_spec(p)
    assert spec is None and diags and all(d.severity == "error" for d in diags)


def test_base_layer_needs_pkg_manager(tmp_path: Path) -> None:
    p = write(tmp_path, "x.yaml", "options:\n  layer_type: base\n")
    with pytest.raises(SpecError) as ei:
        load_spec(p)
    assert "pkg_manager is required" in ei.value.diagnostics[0].message


def _example_files() -> list[Path]:
    return sorted(EXAMPLES.rglob("*.yaml")) if EXAMPLES.is_dir() else []


@requires(EXAMPLES.is_dir(), "the shared examples are not beside this checkout")
@pytest.mark.parametrize("path", _example_files(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_shared_example_loads_or_fails_clearly(path: Path) -> None:
    spec, diags = read_spec(path)
    if spec is None:
        assert diags
        for d in diags:
            assert d.line >= 1 and d.file == str(path)
            # Missing /data/... copyfiles sources and the ansible example's `true'` are the known failures.
            assert "does not exist" in d.message or "must be of type boolean" in d.message, str(d)


@pytest.mark.parametrize(
    "text, where, words",
    [
        # the unclosed quote is reported where it opens, not at the end of the file
        (
            "options:\n  layer_type: base\n  name: 'rocky\n  pkg_manager: dnf\n"
            + "packages:\n"
            + "  - p\n" * 16,
            (3, 9),
            "a quoted string starts here and is never closed",
        ),
        ("options:\n  layer_type: base\n  pkg_manager: dnf\n   name: x\n", (4, 8), "unexpected ':' here"),
        ("options:\n  layer_type: base\npackages: [vim, git\ncmds: []\n", (3, 11), "a '[' list starts here"),
        ("options:\n  layer_type: base\n\tpkg_manager: dnf\n", (3, 1), "indent with spaces only"),
        ("options:\n  layer_type: base\n  layer_type: ansible\n", (3, 3), "key 'layer_type' appears twice"),
    ],
)
def test_yaml_errors_in_plain_words_where_they_start(tmp_path, text, where, words):
    p = tmp_path / "layer.yaml"
    p.write_text(text)
    spec, diags = read_spec(p)
    assert spec is None
    (d,) = diags
    assert (d.line, d.column) == where
    assert words in str(d)
    assert "while scanning" not in str(d) and "while parsing" not in str(d)


@pytest.mark.parametrize(
    "parent, gpgcheck, gpg, verified, diagnostic",
    [
        # from scratch: keyless -> unverified with a warning, as image-builder installs it
        ("scratch", None, None, False, ("warning", "installs unsigned packages from Local_BaseOS")),
        ("scratch", None, "http://m/key", True, None),  # a key -> verified
        (
            "scratch",
            "true",
            None,
            None,
            ("error", "gpgcheck is true but repository Local_BaseOS has no gpg key"),
        ),
        ("scratch", "true", "http://m/key", True, None),
        ("scratch", "false", "http://m/key", False, None),  # explicitly off: off for every repository
        # an image parent: gpgcheck as written (the image may trust the key already)
        ("reg/rocky:9", None, None, True, None),
        ("reg/rocky:9", "false", None, False, None),
    ],
)
def test_gpgcheck_rule(tmp_path, parent, gpgcheck, gpg, verified, diagnostic):
    text = f"options:\n  layer_type: base\n  pkg_manager: dnf\n  parent: '{parent}'\n"
    if gpgcheck:
        text += f"  gpgcheck: {gpgcheck}\n"
    text += "repos:\n  - alias: Local_BaseOS\n    url: http://m/baseos\n"
    if gpg:
        text += f"    gpg: {gpg}\n"
    p = tmp_path / "layer.yaml"
    p.write_text(text)
    spec, diags = read_spec(p)
    said = [(d.severity, d.message, d.line) for d in diags]
    if diagnostic is None:
        assert said == []
    else:
        ((severity, message, line),) = said
        assert severity == diagnostic[0] and message.startswith(diagnostic[1])
        assert line == text.splitlines().index("  - alias: Local_BaseOS") + 1
    if verified is None:
        assert spec is None
    else:
        assert spec.verifies(spec.repos[0]) is verified


def test_half_a_surrogate_pair_is_a_located_error_not_a_crash(tmp_path: Path) -> None:
    # YAML's \u escapes are 16-bit: "\ud83d\ude00" is two lone surrogates, which nothing can encode.
    p = tmp_path / "a.yaml"
    p.write_text('options:\n  layer_type: base\n  pkg_manager: dnf\ncmds:\n  - "echo \\ud83d\\ude00"\n')
    spec, diags = read_spec(p)
    assert spec is None
    (d,) = diags
    assert (d.line, d.column) == (5, 11) and "surrogate" in d.message and "\\U" in (d.hint or "")
    p.write_text('options:\n  layer_type: base\n  pkg_manager: dnf\ncmds:\n  - "echo \\U0001F600"\n')
    spec, diags = read_spec(p)
    assert spec is not None and spec.cmds[0].cmd == "echo \U0001f600"


@pytest.mark.parametrize("base", ["/srv/layers", "/srv/layers/", "/", "/a/./b/../c"])
def test_resolve_is_normpath_of_the_pathlib_join(base: str) -> None:
    import os

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from imagegraph.spec import _resolve

    @given(
        st.lists(st.sampled_from(["a", "b", ".", "..", "", "/", "//", "x y", "é"]), max_size=6).map("".join)
    )
    @settings(max_examples=200, deadline=None)
    def check(p: str) -> None:
        want = Path(os.path.normpath(p if p.startswith("/") else Path(base) / p))
        got = _resolve(Path(base), p)
        assert got == want and str(got) == str(want)

    check()
