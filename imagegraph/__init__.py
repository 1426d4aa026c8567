"""imagegraph: `make` for diskless boot images.

The core is importable and returns objects; the CLI only parses and renders:

    from imagegraph import load_project, build_graph, make_plan, LiveInventory, State, run_up
    project = load_project("layers")
    state = State("layers/.imagegraph/state.db")
    plan = make_plan(build_graph(project), state, LiveInventory())   # plan.to_json(), plan.layers[...]
    result = run_up(plan, state, state_dir=Path("layers/.imagegraph"))  # result.to_json()
"""

__version__ = "0.1.0"

from .buildservice import BuildService, BuiltImage, LocalBuildService  # noqa: E402
from .executor import run_up  # noqa: E402
from .graph import LayerGraph, build_graph  # noqa: E402
from .plan import Action, LiveInventory, Plan, Reason, StaticInventory, make_plan  # noqa: E402
from .project import Project, load_project  # noqa: E402
from .reporting import Reporter  # noqa: E402
from .scheduler import LayerResult, RunResult, Scheduler, TaskResult, run_plan  # noqa: E402
from .state import State  # noqa: E402
from .tasks import Task, TaskKind, TaskStatus  # noqa: E402

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
