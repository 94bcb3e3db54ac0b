"""Protects the package layering: training and evaluation never import each other (only the jobs layer joins
them), and encodings, model and tracking import nothing above them."""

from __future__ import annotations

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
)


@pytest.mark.parametrize(
    "package,forbidden",
    [
        ("training", ("posbench.evaluation", "posbench.jobs")),
        ("evaluation", ("posbench.training", "posbench.jobs")),
        (
            "encodings",
            ("posbench.model", *ABOVE_MODEL),
        ),  # encodings describe themselves; the model reads them
        ("model", ABOVE_MODEL),
        ("tasks", ("posbench.encodings", "posbench.model", *ABOVE_MODEL)),  # examples know no model
        ("tracking", ("posbench.model", "posbench.training", "posbench.evaluation", "posbench.jobs")),
        ("pretrained", ("posbench.model", "posbench.training", "posbench.evaluation", "posbench.jobs")),
    ],
)
def test_training_and_evaluation_do_not_import_each_other(package, forbidden):
    loaded = loaded_by(package)
    assert f"posbench.{package}" in loaded
    assert not [m for m in loaded if m.startswith(forbidden)], sorted(loaded)
