"""The depsolve behind `imagegraph lock` for rpm layers: libsolv (dnf's own solver), metadata only.

Run as a script by the system Python (`/usr/bin/python3 -m`-less: `python3 solvhelper.py`),
since libsolv's bindings (`python3-solv`) are a distribution package the
project's virtualenv does not see; it imports nothing from imagegraph. It
reads one JSON request on stdin and writes one JSON answer on stdout:

request:  {"arch": "x86_64", "disttype": "rpm" | "deb", "recommends": true,
           "repos":     [{"alias", "files", "priority"}],     # what the layer installs from
                                                              #   (rpm: primary.xml; deb: Packages)
           "lookup":    [{"alias", "files"}],                 # ancestors' repositories: metadata
                                                              #   of the installed set only
           "installed": [{"name", "evr", "arch"}],            # the parent's installed set
           "install":   ["pkg spec", ...],                     # names, provides, globs, name.arch
           "modules":   {"include", "exclude", "names", "hotfix"}}  # dnf's modular filtering (optional)
answer:   {"ok": true, "packages": [{"name", "evr", "arch", "repo", "checksum"}],
           "erased": [{"name", "evr", "arch"}], "bare": ["name-evr.arch", ...]}
          {"ok": false, "problems": ["..."]}

The installed set becomes libsolv's installed repository: each package
carries the dependencies its repository metadata lists (found by exact
name, evr and arch in the layer's or an ancestor's repositories; `bare`
names those found nowhere, which then provide only themselves). As `dnf
install` does, weak dependencies are installed and installed packages are
kept unless a request needs them upgraded.
"""

from __future__ import annotations

import json
import sys


def _load(pool, entry, deb):  # noqa: ANN001, ANN202 (no imagegraph typing here)
    import hashlib
    import os

    import solv

    repo = pool.add_repo(entry["alias"])
    repo.priority = -int(entry.get("priority") or 99)  # dnf: a lower number wins; libsolv: higher
    # libsolv's own binary form, beside the (checksum-named) metadata: loads many times faster
    files = entry["files"]
    key = hashlib.sha256(("deb:" if deb else "rpm:").encode() + "\0".join(files).encode()).hexdigest()[:32]
    cached = os.path.join(os.path.dirname(files[0]), f"{key}.solv") if files else None
    if cached and os.path.exists(cached):
        f = solv.xfopen(cached)
        if f is not None and repo.add_solv(f):
            f.close()
            return repo
        repo.empty()
    for path in files:
        f = solv.xfopen(path)
        if f is None:
            raise OSError(f"cannot open {path}")
        if deb:
            repo.add_debpackages(f, 0)
        else:
            repo.add_rpmmd(f, None, 0)
        f.close()
    if cached:
        tmp = f"{cached}.{os.getpid()}.tmp"
        w = solv.xfopen(tmp, "w")
        if w is not None and repo.write(w):
            w.close()
            os.replace(tmp, cached)
    return repo


def _apt_preferences(pool, repos):  # noqa: ANN001, ANN202
    """apt's choices where libsolv alone would pick by name order: a dependency is met by the
    package it names before one that merely provides that name (libsystemd0, not libelogind0,
    for `libsystemd0 (>= 243)`), and by the first alternative of `a | b` (usrmerge before
    usr-is-merged). Substitutes are disfavoured, first alternatives favoured."""
    import solv

    real = {s.name for r in repos for s in r.solvables}
    jobs, first = [], set()
    for r in repos:
        for s in r.solvables:
            for d in s.lookup_deparray(solv.SOLVABLE_PROVIDES):
                name = str(d).split(" ", 1)[0]
                if name != s.name and name in real:
                    jobs.append(pool.Job(solv.Job.SOLVER_SOLVABLE | solv.Job.SOLVER_DISFAVOR, s.id))
                    break
            for d in s.lookup_deparray(solv.SOLVABLE_REQUIRES):
                text = str(d)
                if " | " in text:
                    first.add(text.split(" | ", 1)[0].split(" ", 1)[0].strip("()"))
    for name in sorted(first & real):
        jobs.append(pool.Job(solv.Job.SOLVER_SOLVABLE_NAME | solv.Job.SOLVER_FAVOR, pool.str2id(name)))
    return jobs


def _module_filter(pool, repos, mod):  # noqa: ANN001, ANN202
    """Hide what dnf's modular filtering hides (modulemd.py computes the sets): artifacts of
    inactive streams, and packages named as (or providing the name of) an active stream's
    artifacts that are not such artifacts themselves; `hotfix` repositories are left alone."""
    include, exclude = set(mod.get("include") or ()), set(mod.get("exclude") or ())
    names, hotfix = set(mod.get("names") or ()), set(mod.get("hotfix") or ())
    if not (exclude or names):
        return
    ours = {r.name for r in repos} - hotfix
    hidden = set()

    def nevra(s):  # noqa: ANN001, ANN202
        return f"{s.name}-{s.evr if ':' in s.evr else '0:' + s.evr}.{s.arch}"

    for name in names:  # by name and by provide: whatprovides has both
        for s in pool.whatprovides(pool.Dep(name)):
            if s.repo.name in ours and nevra(s) not in include:
                hidden.add(s.id)
    excluded_names = {a.rsplit("-", 2)[0] for a in exclude}
    for r in repos:
        if r.name not in ours:
            continue
        for s in r.solvables:
            if s.name in excluded_names and nevra(s) in exclude:
                hidden.add(s.id)
    if hidden:
        pool.set_considered_list([s.id for s in pool.solvables_iter() if s.id not in hidden])


def solve(req: dict) -> dict:
    import solv

    deb = req.get("disttype") == "deb"
    pool = solv.Pool()
    # Debian's libsolv defaults to deb (arch "all", not noarch): say which, always.
    pool.setdisttype(solv.Pool.DISTTYPE_DEB if deb else solv.Pool.DISTTYPE_RPM)
    pool.setarch(req.get("arch") or ("amd64" if deb else "x86_64"))
    repos = [_load(pool, r, deb) for r in req.get("repos", [])]
    lookup = [_load(pool, r, deb) for r in req.get("lookup", [])]

    by_nevra = {}
    for repo in repos + lookup:
        for s in repo.solvables:
            by_nevra.setdefault((s.name, s.evr, s.arch), s)
    system = pool.add_repo("@System")
    bare = []
    keys = (solv.SOLVABLE_PROVIDES, solv.SOLVABLE_REQUIRES, solv.SOLVABLE_CONFLICTS, solv.SOLVABLE_OBSOLETES)
    for p in req.get("installed", []):
        src = by_nevra.get((p["name"], p["evr"], p["arch"]))
        s = system.add_solvable()
        s.name, s.evr, s.arch = p["name"], p["evr"], p["arch"]
        s.add_deparray(solv.SOLVABLE_PROVIDES, pool.Dep(p["name"]).Rel(solv.REL_EQ, pool.Dep(p["evr"])))
        if src is None:
            bare.append(f"{p['name']}-{p['evr']}.{p['arch']}")
            continue
        for k in keys:
            for d in src.lookup_deparray(k):
                s.add_deparray(k, d)
    system.internalize()
    for repo in lookup:
        repo.free(True)  # only the installed packages' metadata was wanted from them
    pool.installed = system
    pool.addfileprovides()
    pool.createwhatprovides()
    if req.get("modules"):
        _module_filter(pool, repos, req["modules"])

    flags = (
        solv.Selection.SELECTION_NAME
        | solv.Selection.SELECTION_PROVIDES
        | solv.Selection.SELECTION_GLOB
        | solv.Selection.SELECTION_CANON
        | solv.Selection.SELECTION_DOTARCH
        | solv.Selection.SELECTION_REL
    )
    jobs, problems = [], []
    if deb:
        jobs += _apt_preferences(pool, repos)
    for spec in req.get("install", []):
        sel = pool.select(spec, flags)
        if sel.isempty():
            problems.append(f"no package matches {spec!r}")
            continue
        jobs += sel.jobs(solv.Job.SOLVER_INSTALL)
    if problems:
        return {"ok": False, "problems": problems}
    solver = pool.Solver()
    if not req.get("recommends", True):  # apt-get --no-install-recommends, mmdebstrap
        solver.set_flag(solv.Solver.SOLVER_FLAG_IGNORE_RECOMMENDED, 1)
    found = solver.solve(jobs)
    if found:
        return {"ok": False, "problems": [str(p) for p in found]}
    trans = solver.transaction()
    packages = []
    for s in trans.newsolvables():
        chk = s.lookup_checksum(solv.SOLVABLE_CHECKSUM)
        packages.append(
            {
                "name": s.name,
                "evr": s.evr,
                "arch": s.arch,
                "repo": s.repo.name,
                "checksum": f"{chk.typestr()}:{chk.hex()}" if chk else "",
            }
        )
    # Installed packages the transaction takes away (upgraded, obsoleted): gone from the image.
    erased = [{"name": s.name, "evr": s.evr, "arch": s.arch} for s in trans.steps() if s.repo == system]
    packages.sort(key=lambda p: (p["name"], p["arch"], p["evr"]))
    return {"ok": True, "packages": packages, "erased": erased, "bare": sorted(bare)}


def main() -> int:
    req = json.load(sys.stdin)
    try:
        ans = solve(req)
    except Exception as exc:  # reported as data: the caller names the layer
        ans = {"ok": False, "problems": [f"{type(exc).__name__}: {exc}"]}
    json.dump(ans, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
