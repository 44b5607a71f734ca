"""The shape of the code: which layer may import which, and how long a service module may grow.

The service is layered along its data flow (docs/service.md, "Where things live"), lowest first:

    core      service/settings.py, errors.py, progress.py: used by every layer
    store     service/store/: the database, its tables, migrations glue, model registry, jobs table
    ingest    service/ingest/: data in (catalogue, logged-interactions import)
    serving   service/serving/: /act (policy store, poller, choice, decision log)
    feedback  service/feedback/: /feedback (rewards, feedback log, live transitions)
    learning  service/learning/: the trainer (jobs, online loop, hand-off, publishing)
    api       service/api/: the HTTP layer
    commands  service/cli.py, quickstart.py, __main__.py: the top

Every module of ``agent/``, ``service/`` and ``simulator/`` belongs to one layer (:data:`LAYER_OF`). An
import may stay in its own layer or go to a layer that :data:`ALLOWED` lists for it: never up (``store``
importing ``api``), and never sideways between the siblings ``serving`` and ``feedback``. The agent
library and the simulator are layers of their own: the agent library imports neither the service nor the
simulator, and the service reaches each of them only through the few modules of :data:`DOORS` (the
simulator only for the quickstart's example data). Imports inside functions count like any other.

Only the packages ``agent``, ``service`` and ``simulator`` are checked; third-party imports are free.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "service", "simulator")

LAYER_OF: dict[str, str] = {
    "agent": "agent",
    "simulator": "simulator",
    "service": "commands",  # the package's own __init__ (a docstring): matched exactly, never as a prefix
    "service.settings": "core",
    "service.errors": "core",
    "service.progress": "core",
    "service.metrics": "core",  # the Prometheus metrics every layer records into
    "service.metrics_exposition": "core",
    "service.store": "store",
    "service.ingest": "ingest",
    "service.serving": "serving",
    "service.feedback": "feedback",
    "service.learning": "learning",
    "service.api": "api",
    "service.cli": "commands",
    "service.quickstart": "commands",
    "service.report": "commands",
    "service.__main__": "commands",
}
"""Dotted module (or package) name → its layer; a module belongs to the layer of its longest listed prefix."""

ALLOWED: dict[str, set[str]] = {
    "agent": set(),
    "simulator": {"agent"},
    "core": set(),
    "store": {"core"},
    "ingest": {"core", "store"},
    "serving": {"core", "store", "ingest", "agent"},
    "feedback": {"core", "store", "ingest"},
    "learning": {"core", "store", "ingest", "serving", "feedback", "agent"},
    "api": {"core", "store", "ingest", "serving", "feedback", "learning"},
    "commands": {"core", "store", "ingest", "serving", "feedback", "learning", "api", "simulator"},
}
"""Layer → the other layers its modules may import (its own layer is always allowed)."""

DOORS: dict[str, set[str]] = {
    # Building, saving and restoring agents (learning); decoding a checkpoint for serving (NumPy); apprentice
    # mode's live demonstrations (agent.demonstrations.Episode) and its reports' off-policy estimates.
    "agent": {
        "service.learning.agents",
        "service.learning.item_agents",  # the feature-network agent: its item table and allowed sets
        "service.serving.policy_store",
        "service.serving.feature_policy",  # decoding and binding a feature-network checkpoint (NumPy)
        "service.learning.live_demos",
        "service.learning.mode_value",
        "service.learning.apprentice_gate",  # the gate's paired bootstrap and ESS on apprentice decisions
        "service.learning.evaluation",  # off-policy estimates of stored versions (POST /admin/evaluate, gate)
    },
    # The quickstart's example data comes from the project's simulator when it is installed.
    "simulator": {"service.quickstart"},
}
"""Layer → the only service modules through which the service may import it."""


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name, None when it is in none."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYER_OF and (prefix != "service" or end == len(parts)):
            return LAYER_OF[prefix]
    return None


def module_name(path: Path) -> str:
    """``service/store/db.py`` → ``service.store.db``; a package's ``__init__.py`` → the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every (imported module, line) of ``source`` in our packages, wherever the import statement is
    (inside functions and ``if`` blocks too). ``from x import y`` counts as importing ``x.y``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.append((base if alias.name == "*" else f"{base}.{alias.name}", node.lineno))
    return [(name, line) for name, line in found if name.split(".")[0] in PACKAGES]


def violation(module: str, target: str) -> str | None:
    """Why ``module`` may not import ``target``; None when it may."""
    source_layer, target_layer = layer_of(module), layer_of(target)
    if source_layer is None:
        return f"{module} is in no layer: add it (or its folder) to LAYER_OF"
    if target_layer is None:
        return f"{module} imports {target}, which is in no layer: add it (or its folder) to LAYER_OF"
    if target_layer == source_layer:
        return None
    if target_layer not in ALLOWED[source_layer]:
        allowed = ", ".join(sorted(ALLOWED[source_layer])) or "nothing else"
        return (
            f"{module} ({source_layer}) imports {target} ({target_layer}); "
            f"{source_layer} may import {allowed}"
        )
    doors = DOORS.get(target_layer)
    if doors is not None and module.split(".")[0] == "service" and module not in doors:
        return f"{module} imports {target}; the service reaches {target_layer} only through {sorted(doors)}"
    return None


def source_files() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_every_module_is_in_a_layer() -> None:
    unplaced = [module_name(path) for path in source_files() if layer_of(module_name(path)) is None]
    assert not unplaced, f"modules in no layer (add them to LAYER_OF): {unplaced}"


def test_no_import_crosses_a_boundary() -> None:
    problems = []
    for path in source_files():
        module = module_name(path)
        for target, line in imports_in(path.read_text(), module, path.name == "__init__.py"):
            problem = violation(module, target)
            if problem is not None:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {problem}")
    assert not problems, "import boundaries crossed:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("service.store.db", "service.api.app"),  # a lower layer importing a higher one
        ("service.store.models", "service.ingest.catalogue"),
        ("service.ingest.importer", "service.learning.trainer"),
        ("service.serving.policy_store", "service.learning.agents"),  # serving reaching into the learner
        ("service.serving.choice", "service.feedback.recording"),  # siblings
        ("service.feedback.transitions", "service.serving.choice"),
        ("service.learning.online", "service.api.app"),
        ("service.api.routes_admin", "service.cli"),
        ("service.errors", "service.store.db"),  # the core imports nothing of the service
        ("agent.dqfd", "service.store.db"),  # the agent library knows nothing of the service
        ("agent.dqfd", "simulator.env"),
        ("simulator.logs", "service.ingest.importer"),
        ("service.ingest.synthetic", "simulator.logs"),  # the simulator outside the quickstart
        ("service.serving.choice", "agent.inference"),  # the agent library outside its doors
        ("service.learning.online", "agent.dqfd"),
        ("service.feedback.transitions", "agent"),
        ("service.store.brand_new_room", "service.nowhere"),  # a module in no layer
    ],
)
def test_a_crossing_is_reported(module: str, target: str) -> None:
    assert violation(module, target) is not None


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("service.store.shape", "service.store.features"),  # within a layer
        ("service.store.db", "service.errors"),
        ("service.serving.poller", "service.ingest.catalogue"),
        ("service.learning.publishing", "service.serving.policy_store"),
        ("service.learning.online", "service.feedback.transitions"),
        ("service.api.app", "service.learning.trainer"),
        ("service.cli", "service.api.app"),
        ("service.quickstart", "simulator.logs"),
        ("service.serving.policy_store", "agent.inference"),
        ("service.learning.agents", "agent"),
        ("simulator.env", "simulator.catalogue"),
    ],
)
def test_an_allowed_import_passes(module: str, target: str) -> None:
    assert violation(module, target) is None


def test_imports_inside_functions_and_relative_imports_are_found() -> None:
    source = (
        "import numpy\n"
        "from service.errors import InvalidInputError\n"
        "def later():\n"
        "    from service.api.app import create_app\n"
        "    if True:\n"
        "        import agent.inference\n"
        "from . import shape\n"
        "from ..ingest import catalogue\n"
    )
    found = {name for name, _ in imports_in(source, "service.store.db")}
    assert found == {
        "service.errors.InvalidInputError",
        "service.api.app.create_app",
        "agent.inference",
        "service.store.shape",
        "service.ingest.catalogue",
    }
    assert violation("service.store.db", "service.api.app.create_app") is not None


MAX_LINES = 300
LONGER_ALLOWED = {"service/cli.py"}  # the argument parser of every command


def test_no_service_module_is_over_300_lines() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in (ROOT / "service").rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
        and str(path.relative_to(ROOT)) not in LONGER_ALLOWED
    }
    assert not long, f"split these by job (at most {MAX_LINES} lines a module): {long}"
