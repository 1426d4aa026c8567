"""imagegraph: `make` for diskless boot images.

The core is importable and returns objects; the CLI only parses and renders:

    from imagegraph import load_project, build_graph, make_plan, LiveInventory, State, run_up
    project = load_project("layers")
    state = State("layers/.imagegraph/state.db")
    plan = make_plan(build_graph(project), state, LiveInventory())   # plan.to_json(), plan.layers[...]
    result = run_up(plan, state, state_dir=Path("layers/.imagegraph"))  # result.to_json()
"""

__version__ = "0.1.0"

# Exports load on first use (PEP 562): `imagegraph --version` and `plan` must not pay for the
# executor, the build backends and the publish clients.
_EXPORTS = {
    "run_up": "executor",
    "LayerGraph": "graph",
    "build_graph": "graph",
    "Action": "plan",
    "LiveInventory": "plan",
    "Plan": "plan",
    "Reason": "plan",
    "StaticInventory": "plan",
    "make_plan": "plan",
    "Project": "project",
    "load_project": "project",
    "LayerResult": "scheduler",
    "RunResult": "scheduler",
    "Scheduler": "scheduler",
    "run_plan": "scheduler",
    "State": "state",
    "BuildService": "buildservice",
    "BuiltImage": "buildservice",
    "LocalBuildService": "buildservice",
    "Reporter": "reporting",
    "TaskResult": "scheduler",
    "Task": "tasks",
    "TaskKind": "tasks",
    "TaskStatus": "tasks",
}


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imagegraph' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "Action",
    "BuildService",
    "BuiltImage",
    "LocalBuildService",
    "LayerGraph",
    "LayerResult",
    "LiveInventory",
    "Plan",
    "Project",
    "Reason",
    "Reporter",
    "RunResult",
    "Scheduler",
    "State",
    "StaticInventory",
    "Task",
    "TaskKind",
    "TaskResult",
    "TaskStatus",
    "build_graph",
    "load_project",
    "make_plan",
    "run_plan",
    "run_up",
]
