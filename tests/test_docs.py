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


def test_the_readme_lists_the_training_keys_that_are_not_the_experiment():
    """The README's run-folder paragraph names every ``train`` key declared execution-only, and no
    other: the list cannot drift from the schema's declarations."""
    from posbench.config import group_roles

    readme = (REPO / "README.md").read_text()
    paragraph = readme[readme.index("and `digest` (6 hex) hashes") :].split("\n\n")[0]
    listed = set(re.findall(r"`train\.(\w+)`", paragraph))
    declared = {key for key, role in group_roles("train").items() if not role.experiment}
    assert len(declared) >= 10 and listed == declared, listed ^ declared
    for key in ("attention", "attention_block"):
        assert f"`model.{key}`" in paragraph and not group_roles("model")[key].experiment
