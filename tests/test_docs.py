"""Ties the README to the code: every registered choice a user can type has its row."""

from __future__ import annotations

import re

import pytest

from posbench.encodings import ENCODINGS, REMAPS, SCALINGS, TEMPERATURES
from posbench.tasks import TASKS
from tests.conftest import REPO


@pytest.mark.parametrize("registry", [ENCODINGS, SCALINGS, TEMPERATURES, REMAPS, TASKS], ids=lambda r: r.what)
def test_every_registered_choice_has_a_readme_row(registry):
    readme = (REPO / "README.md").read_text()
    missing = [name for name in registry if not re.search(rf"^\| `{name}` \|", readme, re.M)]
    assert len(registry) > 1 and not missing, f"README rows missing for {registry.what}: {missing}"
