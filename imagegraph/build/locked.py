"""Installing a layer's locked package set (imagegraph.lock), shared by the package backends."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import BuildError
from ..runner import CommandError
from .work import Work


def gone_error(layer: str, gone: list[str]) -> BuildError:
    """The failure of a build whose locked versions the mirror no longer offers."""
    return BuildError(
        layer,
        "packages",
        f"locked package{'s' if len(gone) > 1 else ''} {', '.join(gone)} no longer offered by "
        "the repositories: run `imagegraph lock --update` (or `imagegraph up --update-lock`)",
    )


def install_locked(
    work: Work, install: Callable[[list[str]], object], missing: Callable[[list[str]], list[str]]
) -> None:
    """`install(packages)` for exactly the locked list, as the `packages` step.

    `missing(output lines)` names the locked versions the package manager did
    not find; when it names any, the build fails saying to update the lock.
    """
    locked = list(work.locked or ())
    with work.step("packages", f"{len(locked)} locked packages"):
        if not locked:
            return  # the parent has all of them already
        try:
            install(locked)
        except CommandError as exc:
            gone = missing(exc.tail)
            if not gone:
                raise
            raise gone_error(work.spec.name, gone) from exc
