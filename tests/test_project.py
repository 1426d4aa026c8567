"""imagegraph/project.py: directories, settings, the spec cache, copyfiles escapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imagegraph.errors import SpecError
from imagegraph.project import load_project

from .specdirs import seed_dir, write

MIN = "options:\n  layer_type: base\n  pkg_manager: dnf\n"


def test_only_top_level_specs_are_layers(tmp_path: Path) -> None:
    seed_dir(tmp_path)
    write(tmp_path, "play/site.yaml", "- hosts: all\n")  # a playbook in a sub-directory
    write(tmp_path, "imagegraph.yaml", "jobs: 2\n")
    write(tmp_path, "imagegraph.lock", "{}\n")
    p = load_project(tmp_path)
    assert sorted(p.layers) == ["base", "compute", "gpu"] and p.settings.jobs == 2


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
    assert (cache / "specs.pickle").exists()
    again = load_project(root, cache_dir=cache)
    assert again.layers["compute"] == first.layers["compute"]
    f = root / "compute.yaml"
    f.write_text(f.read_text().replace("  - vim\n", "  - vim\n  - htop\n"))
    assert "htop" in load_project(root, cache_dir=cache).layers["compute"].packages
    # A copied file that disappears is reported even when the spec comes from the cache.
    (root / "files" / "chrony.conf").unlink()
    with pytest.raises(SpecError, match="chrony.conf' does not exist"):
        load_project(root, cache_dir=cache)


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
