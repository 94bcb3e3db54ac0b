"""Protects the package layering: training and evaluation never import each other (only the jobs layer joins
them), every package imports nothing above it, and no module imports one that imports it back."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

LOADED_AFTER_IMPORT = """
import importlib, pkgutil, sys
package = importlib.import_module("posbench.{package}")
for module in pkgutil.walk_packages(package.__path__, "posbench.{package}."):
    importlib.import_module(module.name)
print(" ".join(sorted(m for m in sys.modules if m.startswith("posbench."))))
"""


def loaded_by(package: str) -> set[str]:
    """Every posbench module in sys.modules after importing all of ``posbench.<package>``, in a fresh
    process."""
    code = LOADED_AFTER_IMPORT.format(package=package)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(done.stdout.split())


ABOVE_MODEL = (
    "posbench.data",
    "posbench.training",
    "posbench.evaluation",
    "posbench.jobs",
    "posbench.tracking",
    "posbench.runs",
    "posbench.reports",
    "posbench.config",
)
EVERYTHING_ELSE = (
    "posbench.encodings",
    "posbench.model",
    "posbench.tasks",
    "posbench.pretrained",
    *ABOVE_MODEL,
)


@pytest.mark.parametrize(
    "package,forbidden",
    [
        ("common", ("posbench.cli", "posbench.launchers", *EVERYTHING_ELSE)),
        ("data", tuple(p for p in EVERYTHING_ELSE if p != "posbench.data")),
        ("runs", ("posbench.training", "posbench.evaluation", "posbench.jobs", "posbench.reports")),
        ("reports", ("posbench.training", "posbench.evaluation", "posbench.jobs")),
        ("training", ("posbench.evaluation", "posbench.jobs")),
        ("evaluation", ("posbench.training", "posbench.jobs")),
        (
            "encodings",
            ("posbench.model", *ABOVE_MODEL),
        ),  # encodings describe themselves; the model reads them
        ("model", ABOVE_MODEL),
        ("tasks", ("posbench.encodings", "posbench.model", *ABOVE_MODEL)),  # examples know no model
        ("tracking", tuple(p for p in EVERYTHING_ELSE if p != "posbench.tracking")),
        ("pretrained", ("posbench.model", *ABOVE_MODEL)),
    ],
)
def test_training_and_evaluation_do_not_import_each_other(package, forbidden):
    loaded = loaded_by(package)
    assert f"posbench.{package}" in loaded
    assert not [m for m in loaded if m.startswith(forbidden)], sorted(loaded)


def import_graph() -> dict[str, set[str]]:
    """Every posbench module -> the posbench modules its import statements name, late imports (inside
    functions) included, read from the source."""
    root = REPO / "posbench"
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def module_of(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                named = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            graph[name] |= {module_of(n) for n in named if n.startswith("posbench.")} - {name}
    return graph


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "posbench.config" in graph and "posbench.runs.identity" in graph["posbench.runs.lineage"]
    cycles = sorted(name for name in graph if name in reaches(graph, name))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_cycle_check_sees_late_imports():
    """cli imports the jobs only inside its entry points (torch loads late): still an edge."""
    assert "posbench.jobs.train" in import_graph()["posbench.cli"]


def test_at_most_six_loose_modules_besides_the_entry_points():
    loose = sorted(p.stem for p in (REPO / "posbench").glob("*.py"))
    assert len(set(loose) - {"__init__", "__main__", "cli", "config"}) <= 6, loose


def calls_of(attribute: str, owner: str) -> dict[str, int]:
    """posbench module path -> how many times its source calls ``owner.attribute(...)``."""
    counts = {}
    for path in (REPO / "posbench").rglob("*.py"):
        calls = [
            node
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == attribute
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == owner
        ]
        if calls:
            counts[str(path.relative_to(REPO))] = len(calls)
    return counts


def test_each_job_computes_the_run_identity_once_and_passes_it_on():
    """The resume checks, the tracker and the results header get the job's identity; only the folder
    resolver (which has a config, not a job) computes its own."""
    assert calls_of("of", "RunIdentity") == {
        "posbench/jobs/train.py": 1,
        "posbench/jobs/evaluate.py": 1,
        "posbench/runs/resolvers.py": 1,
    }


def test_the_trainer_knows_its_training_config_not_the_run():
    """The trainer gets the training config, the model, the data and a checkpoint record: it imports
    neither the run identity nor the whole run config."""
    graph = import_graph()["posbench.training.trainer"]
    assert "posbench.runs.identity" not in graph, graph
    source = ast.parse((REPO / "posbench/training/trainer.py").read_text())
    names = {
        alias.name for node in ast.walk(source) if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert "RunConfig" not in names and "to_plain_dict" not in names, names
