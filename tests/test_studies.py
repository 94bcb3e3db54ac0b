"""Protects the committed studies from tables that are not what their results say: each study's
``comparison.md`` is regenerated with the compare command its README gives and must equal the
committed file byte for byte, so the README, the table and the results cannot drift apart."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from posbench.__main__ import main as posbench_main
from tests.conftest import REPO

STUDIES = sorted(path.parent for path in (REPO / "experiments").glob("**/comparison.md"))
COMPARE = ["python", "-m", "posbench", "compare"]


def compare_commands(readme: Path) -> list[list[str]]:
    """Every ``python -m posbench compare ...`` command in ``readme``, continuation lines joined."""
    text = readme.read_text(encoding="utf-8").replace("\\\n", " ")
    commands = [shlex.split(line) for line in text.splitlines() if line.strip().startswith(" ".join(COMPARE))]
    return [command for command in commands if command[: len(COMPARE)] == COMPARE]


def out_folder(command: list[str]) -> str | None:
    return command[command.index("--out") + 1] if "--out" in command else None


def study_readme(study: Path) -> Path:
    """The README nearest above a table: its own folder's, else its study's (a part of a study, such
    as experiments/synthetic-tasks/grid, is described in the study's README)."""
    for folder in (study, *study.parents):
        if (folder / "README.md").is_file():
            return folder / "README.md"
        if folder == REPO / "experiments":
            break
    raise AssertionError(f"no README.md above {study}")


def table_command(study: Path) -> list[str]:
    """The README's one compare command that writes the study's own ``comparison.md``."""
    folder = study.relative_to(REPO).as_posix()
    readme = study_readme(study)
    commands = [c for c in compare_commands(readme) if out_folder(c) == folder]
    assert len(commands) == 1, (
        f"{readme.relative_to(REPO)} should give exactly one `python -m posbench compare ... --out {folder}` "
        f"command (the one that writes its comparison.md); it gives {len(commands)}"
    )
    return commands[0]


def test_every_study_with_a_table_is_checked():
    assert {s.name for s in STUDIES} >= {"alibi-table", "rope-scaling", "context-extension"}


@pytest.mark.parametrize("study", STUDIES, ids=lambda s: s.relative_to(REPO / "experiments").as_posix())
def test_committed_table_is_what_the_readme_command_makes(study, tmp_path, monkeypatch, capsys):
    command = table_command(study)
    out = command.index("--out") + 1
    argv = [*command[len(COMPARE) - 1 : out], str(tmp_path), *command[out + 1 :]]
    monkeypatch.chdir(REPO)  # the README's paths are relative to the repository root
    posbench_main(argv)
    capsys.readouterr()
    regenerated = (tmp_path / "comparison.md").read_bytes()
    assert regenerated == (study / "comparison.md").read_bytes(), (
        f"{study.relative_to(REPO)}/comparison.md is not what `{shlex.join(command)}` makes of the "
        f"committed results (the new one is {tmp_path / 'comparison.md'}): rerun the command, then "
        f"check the README's numbers against the new table"
    )


def test_the_readme_names_every_experiment_config():
    """The README's config-group table lists every file of configs/experiment/ (and no other)."""
    row = next(
        line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| `experiment` |")
    )
    named = set(re.findall(r"`([a-z0-9_]+)`", row.split("|")[2]))
    files = {p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml")}
    assert named == files, (sorted(files - named), sorted(named - files))
