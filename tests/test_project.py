"""imagegraph/project.py: directories, settings, the spec cache, copyfiles escapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imagegraph.errors import SpecError
from imagegraph.project import SpecCache, load_project

from .specdirs import seed_dir, write

MIN = "options:\n  layer_type: base\n  pkg_manager: dnf\n"


def test_only_top_level_specs_are_layers(tmp_path: Path) -> None:
    seed_dir(tmp_path)
    write(tmp_path, "play/site.yaml", "- hosts: all\n")  # a playbook in a sub-directory
    write(tmp_path, "imagegraph.yaml", "jobs: 2\n")
    write(tmp_path, "imagegraph.lock", "{}\n")
    p = load_project(tmp_path)
    assert sorted(p.layers) == ["base", "compute", "gpu"] and p.settings.jobs == 2


def test_a_directory_without_specs_names_the_ones_below_that_have_some(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # image-builder checkouts keep specs one or two levels down (image-configs/, examples-*/)
    write(tmp_path, "site/image-configs/base.yaml", MIN)
    write(tmp_path, "examples-a/base.yaml", MIN)
    write(tmp_path, "docs/notes.txt", "not a spec\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as ei:
        load_project(tmp_path)
    (d,) = ei.value.diagnostics
    assert d.message == "no layer specs (*.yaml) found here"
    assert d.hint == "give a directory of specs: examples-a, site/image-configs"
    empty = tmp_path / "docs"
    with pytest.raises(SpecError) as ei:
        load_project(empty)
    assert ei.value.diagnostics[0].hint == "give the directory that holds the layer specs"


def test_top_level_yaml_list_is_skipped_with_a_warning(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", MIN)
    write(tmp_path, "site.yml", "# a playbook\n- hosts: all\n")
    p = load_project(tmp_path)
    assert list(p.layers) == ["a"] and "playbook" in p.warnings[0].message


def test_every_file_is_reported(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", MIN + "pakages: []\n")
    write(tmp_path, "b.yaml", "options: [\n")
    write(tmp_path, "c.yaml", MIN)
    with pytest.raises(SpecError) as ei:
        load_project(tmp_path)
    assert {Path(d.file).name for d in ei.value.diagnostics} == {"a.yaml", "b.yaml"}


def test_settings_are_validated_with_positions(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", MIN)
    write(tmp_path, "imagegraph.yaml", "jobs: 2\nregistry_alias: {}\n")
    with pytest.raises(SpecError) as ei:
        load_project(tmp_path)
    (d,) = ei.value.diagnostics
    assert d.line == 2 and "registry_aliases" in (d.hint or "")


def test_defaults_apply_unless_the_spec_sets_them(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", MIN)
    write(tmp_path, "b.yaml", MIN + "  releasever: '8'\n")
    write(tmp_path, "imagegraph.yaml", "defaults:\n  releasever: '9'\n  s3_layout: versioned\n")
    p = load_project(tmp_path)
    assert p.layers["a"].releasever == "9" and p.layers["b"].releasever == "8"
    assert p.layers["a"].s3_layout == "versioned"


def test_relative_sources_may_not_escape(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    write(tmp_path, "secret.txt", "x")
    write(root, "a.yaml", MIN + "copyfiles:\n  - src: ../secret.txt\n    dest: /x\n")
    (root / "files").mkdir()
    os.symlink(tmp_path / "secret.txt", root / "files" / "link")
    write(root, "b.yaml", MIN + "copyfiles:\n  - src: files/link\n    dest: /x\n")
    write(
        root, "c.yaml", MIN + f"copyfiles:\n  - src: {tmp_path / 'secret.txt'}\n    dest: /x\n"
    )  # absolute: as written
    with pytest.raises(SpecError) as ei:
        load_project(root)
    bad = sorted((Path(d.file).name, d.line) for d in ei.value.diagnostics)
    assert bad == [("a.yaml", 5), ("b.yaml", 5)]
    assert all("leaves the layer directory" in d.message for d in ei.value.diagnostics)
    write(root, "imagegraph.yaml", "allow_outside_sources: true\n")
    assert sorted(load_project(root).layers) == ["a", "b", "c"]


def test_cache_is_used_and_invalidated(tmp_path: Path) -> None:
    root = seed_dir(tmp_path / "layers")
    cache = tmp_path / "cache"
    cache.mkdir()
    first = load_project(root, cache_dir=cache)
    n = len(first.layers)
    assert (cache / "specs.pickle").exists()
    assert (first.spec_cache["hits"], first.spec_cache["parsed"]) == (0, n)
    again = load_project(root, cache_dir=cache)
    assert again.layers["compute"] == first.layers["compute"]
    # Every spec came from the cache, none was parsed: a hit, told apart from a miss.
    assert (again.spec_cache["hits"], again.spec_cache["parsed"]) == (n, 0)
    f = root / "compute.yaml"
    f.write_text(f.read_text().replace("  - vim\n", "  - vim\n  - htop\n"))
    edited = load_project(root, cache_dir=cache)
    assert "htop" in edited.layers["compute"].packages
    assert (edited.spec_cache["hits"], edited.spec_cache["parsed"]) == (n - 1, 1)
    # The edited file's old entry is dropped: the cache holds one entry per current spec.
    assert len(SpecCache(cache / "specs.pickle").entries) == n
    # A copied file that disappears is reported even when the spec comes from the cache.
    (root / "files" / "chrony.conf").unlink()
    with pytest.raises(SpecError, match="chrony.conf' does not exist"):
        load_project(root, cache_dir=cache)


def test_path_map_resolves_image_builder_paths_and_is_in_no_key(tmp_path: Path) -> None:
    from imagegraph.key import ParentInput, build_inputs, key_of

    def key(root: Path) -> str:
        spec = load_project(root).layers["base"]
        return key_of(build_inputs(spec, ParentInput("scratch")))

    layer = (
        "options:\n  layer_type: base\n  pkg_manager: dnf\n"
        "copyfiles:\n  - src: /data/image-configs/files/motd\n    dest: /etc/motd\n"
    )
    keys = []
    for where, target in (("a", "."), ("b", "configs")):
        root = tmp_path / where
        files = root / target / "files" if target != "." else root / "files"
        files.mkdir(parents=True)
        (files / "motd").write_text("hi\n")
        (root / "base.yaml").write_text(layer)
        (root / "imagegraph.yaml").write_text(f"path_map:\n  /data/image-configs/: {target}\n")
        spec = load_project(root).layers["base"]
        assert spec.copyfiles[0].source == files / "motd"
        keys.append(key(root))
    assert keys[0] == keys[1]  # the map is in no key ...
    (tmp_path / "b" / "configs" / "files" / "motd").write_text("changed\n")
    assert key(tmp_path / "b") != keys[0]  # ... the content it resolves to is


def test_missing_sources_load_as_unbuildable_when_allowed(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(
        "options:\n  layer_type: base\n  pkg_manager: dnf\n"
        "copyfiles:\n  - src: /data/image-configs/files/motd\n    dest: /etc/motd\n"
    )
    with pytest.raises(SpecError) as ei:
        load_project(tmp_path)
    (d,) = ei.value.diagnostics
    assert (d.line, d.column, d.kind) == (5, 10, "source")
    assert "does not exist" in d.message and d.hint and "create it" in d.hint
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "motd").write_text("hi\n")
    with pytest.raises(SpecError) as ei:
        load_project(tmp_path)
    assert "`path_map: {/data/image-configs: .}`" in (ei.value.diagnostics[0].hint or "")
    p = load_project(tmp_path, sources_required=False)
    assert list(p.layers) == ["base"] and [d.line for d in p.unbuildable["base"]] == [5]


def _parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Paths the loader actually parses (a cache hit parses nothing)."""
    import imagegraph.project as project_mod

    seen: list[Path] = []
    real = project_mod.read_spec

    def counting(path, *a, **kw):
        seen.append(Path(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(project_mod, "read_spec", counting)
    return seen


@pytest.mark.parametrize(
    "missing, fix",
    [
        ("copyfiles", lambda root: write(root, "files/motd", "hello\n")),
        ("key_paths", lambda root: write(root, "extra/site.conf", "x\n")),
    ],
)
def test_a_fixed_source_error_does_not_come_back_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str, fix
) -> None:
    root = tmp_path / "layers"
    if missing == "copyfiles":
        write(root, "a.yaml", MIN + "copyfiles:\n  - src: files/motd\n    dest: /etc/motd\n")
    else:
        write(root, "a.yaml", MIN + "  key_paths: [extra/site.conf]\n")
    cache = root / ".imagegraph" / "cache"
    cache.mkdir(parents=True)
    parsed = _parses(monkeypatch)
    for _ in range(2):  # a miss, then a hit: both report the missing file
        with pytest.raises(SpecError, match="does not exist"):
            load_project(root, cache_dir=cache)
    assert parsed == [root / "a.yaml"], "the second load was not a cache hit"
    fix(root)
    p = load_project(root, cache_dir=cache)  # a hit: the spec did not change, the host did
    assert list(p.layers) == ["a"] and len(parsed) == 1


def test_dir_spelling_and_working_directory_do_not_change_what_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = seed_dir(tmp_path / "site" / "layers")
    write(
        root,
        "out.yaml",
        MIN
        + "  name: out\n  publish_dir: ../out\ncopyfiles:\n  - {src: ./files/../files/chrony.conf, dest: /x}\n",
    )
    cache = root / ".imagegraph" / "cache"
    cache.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(root)
    seen = []
    for cwd, spelling in [
        (root, "."),
        (root.parent, "layers"),
        (root.parent, "layers/"),
        (root.parent, "./layers"),
        (tmp_path / "elsewhere", str(root)),
        (tmp_path / "elsewhere", "../site/layers"),
        (tmp_path, "link"),
    ]:
        monkeypatch.chdir(cwd)
        p = load_project(spelling, cache_dir=root / ".imagegraph" / "cache")
        seen.append((p.root, p.layers))
        assert p.root == root.resolve()
        assert p.layers["out"].publish_dir == (tmp_path / "site" / "out").resolve()
        assert p.layers["out"].copyfiles[0].source == root.resolve() / "files" / "chrony.conf"
        assert all(s.path.is_absolute() for s in p.layers.values())
    assert all(s == seen[0] for s in seen)


@given(
    real=st.lists(st.sampled_from(["a", "b", "ab", "a.b"]), max_size=4),
    base=st.lists(st.sampled_from(["a", "b", "ab"]), max_size=3),
)
def test_relative_is_path_relative_to(real: list[str], base: list[str]) -> None:
    """project._relative (string work on resolved paths) answers as PurePath.relative_to does."""
    from pathlib import PurePosixPath

    from imagegraph.project import _relative

    r, b = "/" + "/".join(real), "/" + "/".join(base)
    try:
        want: str | None = str(PurePosixPath(r).relative_to(b))
    except ValueError:
        want = None
    assert _relative(r, b) == want


def test_executor_settings(tmp_path: Path) -> None:
    from imagegraph.project import ExecutorKind

    write(tmp_path, "a.yaml", MIN)
    write(
        tmp_path,
        "imagegraph.yaml",
        "executor:\n  kind: slurm\n  partition: build\n  sbatch_args: ['--mem=4G']\n  time_limit: '2:00:00'\n"
        "  graphroot: /local/ig\n  arches:\n    aarch64: {partition: arm, constraint: a64fx}\n",
    )
    ex = load_project(tmp_path).settings.executor
    assert ex.kind == ExecutorKind.SLURM and ex.partition == "build" and ex.sbatch_args == ("--mem=4G",)
    assert ex.time_limit == "2:00:00" and ex.graphroot == "/local/ig" and ex.job_name_prefix == "ig-"
    assert ex.arches == {"aarch64": {"partition": "arm", "constraint": "a64fx"}}
    write(tmp_path, "imagegraph.yaml", "executor:\n  kind: slurm\n  partiton: build\n  graphroot: local/ig\n")
    with pytest.raises(SpecError) as ei:
        load_project(tmp_path)
    msgs = [str(d) for d in ei.value.diagnostics]
    assert any(
        "imagegraph.yaml:3:3" in m and "'executor.partiton'" in m and "did you mean 'partition'" in m
        for m in msgs
    )
    assert any("imagegraph.yaml:4:" in m and "executor.graphroot" in m for m in msgs)


def test_real_paths_are_os_realpath(tmp_path: Path) -> None:
    """RealPaths (directories resolved once per load) answers exactly as os.path.realpath."""
    from imagegraph.project import RealPaths

    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "linkdir").symlink_to("d")
    (tmp_path / "d" / "linkfile").symlink_to("f")
    (tmp_path / "d" / "up").symlink_to("../linkdir/f")
    (tmp_path / "d" / "dangling").symlink_to("nowhere/x")
    (tmp_path / "d" / "loop").symlink_to("loop")
    names = ["f", "linkfile", "up", "dangling", "loop", "missing", "e", ".", "..", "e/../f", ""]
    real = RealPaths()
    for base in (
        tmp_path / "d",
        tmp_path / "linkdir",
        tmp_path / "linkdir" / "e" / "..",
        Path("/") / str(tmp_path)[1:],
    ):
        for name in names:
            for p in (f"{base}/{name}", f"/{base}/{name}", f"{base}//{name}"):
                assert real(p) == os.path.realpath(p), p
                assert real(Path(p)) == os.path.realpath(Path(p)), p
    assert real("relative/x") == os.path.realpath("relative/x")


def test_spec_files_are_the_regular_files_and_links_to_them(tmp_path: Path) -> None:
    """Read from the directory's entry types (no stat per file): the same list as Path.is_file
    picks, symlinks followed."""
    from imagegraph.project import NOT_LAYERS, spec_files

    (tmp_path / "a.yaml").write_text("x")
    (tmp_path / "b.yaml").mkdir()
    (tmp_path / "f.yml").write_text("x")
    (tmp_path / ".hidden.yaml").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    os.symlink(tmp_path / "a.yaml", tmp_path / "c.yaml")
    os.symlink(tmp_path / "nowhere", tmp_path / "d.yaml")
    os.symlink(tmp_path / "b.yaml", tmp_path / "e.yaml")
    for name in NOT_LAYERS:
        (tmp_path / name).write_text("x")
    want = sorted(
        (
            p
            for p in tmp_path.iterdir()
            if p.is_file()
            and p.suffix in (".yaml", ".yml")
            and p.name not in NOT_LAYERS
            and not p.name.startswith(".")
        ),
        key=lambda p: p.name,
    )
    assert spec_files(tmp_path) == want
    assert [p.name for p in want] == ["a.yaml", "c.yaml", "f.yml"]
