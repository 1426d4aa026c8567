"""imagegraph/cause.py + runner.py: a failure quotes the lines that explain it, from real tools.

dnf, zypper and apt run for real on the host (into throwaway roots, or `apt-get -s`), against
the repository made at test time; the quote must lead with the tool's reason and drop dnf's
configuration dump.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagegraph.cause import is_cause, quote, without_config_dumps
from imagegraph.log import clean_line
from imagegraph.runner import CommandError, Runner


def test_config_dumps_are_dropped_and_causes_lead() -> None:
    tail = ["Problem repository: [a]", "baseurl: file:///x", "cost: 1000", "enabled: 1", "gpgkey: ", "done"]
    assert without_config_dumps(tail) == ["Problem repository: [a]", "done"]
    # two key: value lines are ordinary output, and `error:`/`warning:` lines are never a dump
    assert without_config_dumps(["a: 1", "b: 2", "x"]) == ["a: 1", "b: 2", "x"]
    assert without_config_dumps(["error: x", "warning: y", "error: z"]) == [
        "error: x",
        "warning: y",
        "error: z",
    ]
    assert quote(["Error: boom"], ["line", "Error: boom", "last"]) == ["Error: boom", "line", "last"]
    # messages of a tool in a row are not a dump (the same key, or a value with its own ': ')
    cps = ["cp: cannot stat 'a': No such file or directory"] * 3
    assert without_config_dumps(cps) == cps
    same = ["mkdir: x", "mkdir: y", "mkdir: z"]
    assert without_config_dumps(same) == same


@pytest.mark.parametrize(
    "line",
    [
        "No match for argument: ig-nope",
        "Error: Unable to find a match: ig-nope",
        "Problem repository: [repo_a]",
        "  - nothing provides libfoo needed by bar-1.0",
        "No provider of 'ig-nope' found.",
        "E: Unable to locate package ig-nope",
        'time="2026-01-01" level=error msg="exit status 1"',
        "Error: creating build container: image not known",
    ],
)
def test_cause_lines(line: str) -> None:
    assert is_cause(line)


@pytest.mark.parametrize(
    "line", ["sslverify: 1", "Installing: ig-hello", "Complete!", "Reading package lists..."]
)
def test_not_cause_lines(line: str) -> None:
    assert not is_cause(line)


def test_carriage_returns_and_ansi_are_stripped_from_events_not_from_the_log() -> None:
    assert clean_line("\x1b[1;32mok\x1b[0m\r") == "ok"
    assert clean_line(" 10%\r 50%\r100%") == "100%"
    events = io.StringIO()
    from imagegraph import log as logmod

    logmod.configure("json", "INFO", stream=events)
    logfile = io.StringIO()
    Runner("l", logfile).run(
        ["printf", "I: step\\r\\n\\033[31mred\\033[0m\\n"], step="s", stdout_level="INFO"
    )
    lines = [json.loads(x) for x in events.getvalue().splitlines()]
    said = [e["event"] for e in lines if e.get("step") == "s"]
    assert said == ["I: step", "red"]
    assert "I: step\r\n" in logfile.getvalue() and "\x1b[31mred\x1b[0m" in logfile.getvalue()


def _dnf(root: Path, reposdir: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    home = root.parent / "home"
    home.mkdir(exist_ok=True)
    (home / ".rpmmacros").write_text("%_dbpath /var/lib/rpm\n")
    return [
        "dnf",
        f"--installroot={root}",
        f"--setopt=reposdir={reposdir}",
        "--noplugins",
        "-y",
        "--releasever=9",
        *args,
    ], {"HOME": str(home)}


@pytest.fixture
def dnf_repo(rpm_repo, tmp_path: Path):
    if not shutil.which("dnf"):
        pytest.skip("dnf is needed (scripts/install-system-deps.sh)")

    def make(gpgcheck: int) -> Path:
        reposdir = tmp_path / f"repos{gpgcheck}"
        reposdir.mkdir()
        (reposdir / "a.repo").write_text(
            f"[repo_a]\nname=repo_a\nbaseurl={rpm_repo.url}\nenabled=1\ngpgcheck={gpgcheck}\n"
        )
        return reposdir

    return make


def test_real_dnf_gpg_refusal_quotes_the_reason_not_the_dump(dnf_repo, tmp_path: Path) -> None:
    argv, env = _dnf(tmp_path / "root", dnf_repo(1), "install", "ig-hello")
    with pytest.raises(CommandError) as ei:
        Runner("t").run(argv, step="packages", env=env)
    quoted = ei.value.tail
    assert any("You have enabled checking of packages via GPG keys" in t for t in quoted[:3])
    assert "Problem repository: [repo_a]" in quoted
    assert not any(t.startswith(("sslverify:", "timeout:", "baseurl:")) for t in quoted)
    assert "Problem repository: [repo_a]" in str(ei.value)


def test_real_dnf_missing_package(dnf_repo, tmp_path: Path) -> None:
    argv, env = _dnf(tmp_path / "root", dnf_repo(0), "install", "ig-hello", "ig-nope")
    with pytest.raises(CommandError) as ei:
        Runner("t").run(argv, step="packages", env=env)
    assert ei.value.tail[0] == "No match for argument: ig-nope"


def test_real_zypper_missing_package(rpm_repo, tmp_path: Path) -> None:
    if not shutil.which("zypper"):
        pytest.skip("zypper is needed (scripts/install-system-deps.sh)")
    base = [
        "zypper",
        "--non-interactive",
        "--root",
        str(tmp_path / "root"),
        "--reposd-dir",
        str(tmp_path / "repos"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    env = {"HOME": str(tmp_path)}
    r = Runner("t")
    r.run([*base, "addrepo", "--no-gpgcheck", rpm_repo.url, "repo_a"], step="repos", env=env)
    with pytest.raises(CommandError) as ei:
        r.run([*base, "install", "ig-nope"], step="packages", env=env)
    assert ei.value.returncode == 104
    # zypper writes these two lines to different streams, so their order in the merged
    # output is whichever pipe the reader drained first
    assert set(ei.value.tail[:2]) == {
        "'ig-nope' not found in package names. Trying capabilities.",
        "No provider of 'ig-nope' found.",
    }


def test_real_apt_missing_package() -> None:
    with pytest.raises(CommandError) as ei:
        # -s: a simulation, nothing is installed on the host
        Runner("t").run(["apt-get", "install", "-s", "ig-nope-no-such-package"], step="packages")
    assert ei.value.tail[0] == "E: Unable to locate package ig-nope-no-such-package"


def test_real_buildah_failure_quotes_its_error() -> None:
    if not shutil.which("buildah"):
        pytest.skip("buildah is needed (scripts/install-system-deps.sh)")
    with pytest.raises(CommandError) as ei:
        Runner("t").run(["buildah", "from", "--pull=never", "localhost/ig-no-such-image:1"], step="from")
    assert ei.value.tail[0].startswith("Error: ")
    assert "ig-no-such-image" in ei.value.tail[0]


_lines = st.lists(
    st.one_of(
        st.sampled_from(
            [
                "Error: Unable to find a match: x",
                "No match for argument: x",
                "E: Unable to locate package x",
                "sslverify: 1",
                "timeout: 30",
                "baseurl: http://m/x",
                "cp: cannot stat 'a': No such file or directory",
                "Installing: x",
                "",
            ]
        ),
        st.text(alphabet="abc :-_E", max_size=12),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(_lines)
def test_quote_leads_with_causes_and_loses_only_dumps(lines: list[str]) -> None:
    causes = [ln for ln in lines if is_cause(ln)]
    quoted = quote(causes, lines)
    lead = list(dict.fromkeys(c for c in causes if c.strip()))[-12:]
    assert quoted[: len(lead)] == lead
    kept = without_config_dumps(lines)
    # nothing but configuration dumps is dropped, and a dump is never a cause
    assert all(ln in quoted or not ln.strip() for ln in kept)
    assert all(not is_cause(ln) for ln in lines if ln not in kept)
