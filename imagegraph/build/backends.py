"""The build backend table: which module builds a layer, and what it adds to the layer's key.

Every backend module has `NAME`, `VERSION` (bumped when a change to its build
steps changes what an image contains, so every layer it built rebuilds once)
and `key_inputs(spec) -> dict`: what it assumes where the spec is silent,
its part of the key document. Package managers (`dnf`, `zypper`, `apt`) also
have `install(work)` and `remove(work)`; `ansible` has `run_playbooks(work)`.
Adding a backend is one module and one line here.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from ..spec import LayerSpec
from . import ansible, apt, dnf, zypper

PACKAGE_MANAGERS: dict[str, ModuleType] = {m.NAME: m for m in (dnf, zypper, apt)}
LAYER_TYPES: dict[str, ModuleType] = {ansible.NAME: ansible}


def backend_of(spec: LayerSpec) -> ModuleType | None:
    """The module that builds `spec`: its layer type's, else its package manager's."""
    return LAYER_TYPES.get(spec.layer_type) or PACKAGE_MANAGERS.get(spec.pkg_manager or "")


def key_inputs(spec: LayerSpec) -> dict[str, Any]:
    """The backend's part of the key document: its name, version and effective defaults."""
    backend = backend_of(spec)
    if backend is None:  # the schema admits no other package manager; keyed by the name alone
        return {"name": spec.pkg_manager, "version": None}
    return {"name": backend.NAME, "version": backend.VERSION, **backend.key_inputs(spec)}
