"""The text of ``posbench compare``: the cells it averages and the markdown tables it writes.

One table per section (training length, and task): rows encodings, columns eval lengths (a task's
test buckets), mean ± std over seeds; a task's per-token accuracy in a second table.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import NamedTuple, Optional


@dataclass
class Cell:
    """The values of one (section, row, eval length) over seeds: perplexities, or a task's exact-match
    accuracies (with the per-token ones beside them)."""

    values: list[float] = field(default_factory=list)  # the cell's values: perplexity or accuracy
    seeds: list[int] = field(default_factory=list)
    missing: Optional[str] = None  # why the length is n/a
    token_accuracies: list[float] = field(default_factory=list)  # tasks: per-token accuracy, by seed
    length_min: Optional[int] = None  # tasks: the test bucket's shortest length

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


class Section(NamedTuple):
    """What one table holds: results of one task (``""``: perplexity on a corpus) at one training length
    (a pretrained model's: its original context)."""

    task: str
    train_len: int
    pretrained: bool = False

    def title(self) -> str:
        """``trained at L = 256``, or ``pretrained, original context 8192``."""
        if self.pretrained:
            return f"pretrained, original context {self.train_len}"
        return f"trained at L = {self.train_len}"


Key = tuple[Section, str]  # (section, row label: the encoding label, plus what tells apart runs sharing it)
RunKey = tuple[Section, str, str, str, Optional[int]]
# (section, label, seedless digest, digest of how it was evaluated, step): one experiment evaluated
# one way, any seed; a diverged run's step is None (it stopped early: its step is not the experiment's)
Table = dict[Key, dict[int, Cell]]


def format_values(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


NOT_EVALUATED, NOT_FINITE = "–", "not finite"  # a length this row was never evaluated at; a null value


def format_cell(cell: Optional[Cell], per_token: bool = False) -> str:
    """The mean ± std; ``–`` where the row was not evaluated at that length, ``n/a`` where it could not
    be (the reason is under the table), ``not finite`` where every seed's value was null."""
    if cell is None:
        return NOT_EVALUATED
    values = cell.token_accuracies if per_token else cell.values
    if not values and cell.missing == "non-finite":
        return NOT_FINITE
    return format_values(values)


def column_label(section: Section, n: int, cell: Cell) -> str:
    """``1024 (4L)``; a task's bucket ``41-80 (2L)``."""
    span = f"{cell.length_min}-{n}" if cell.length_min not in (None, n) else str(n)
    return f"{span} ({n / section.train_len:g}L)"


def markdown_table(table: Table, section: Section, per_token: bool = False) -> list[str]:
    keys = sorted(k for k in table if k[0] == section)
    lengths = sorted({n for k in keys for n in table[k]})
    some = {n: next(table[k][n] for k in keys if n in table[k]) for n in lengths}
    rows = [
        "| encoding | " + " | ".join(column_label(section, n, some[n]) for n in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for key in keys:
        shown = [format_cell(table[key].get(n), per_token) for n in lengths]
        rows.append(f"| {key[1]} | " + " | ".join(shown) + " |")
    return rows


def seeds_per_row(table: Table, section: Section) -> dict[str, int]:
    """Each row's seed count: the most seeds any of its cells averages."""
    rows = sorted(k for k in table if k[0] == section)
    return {k[1]: max((len(set(c.seeds)) for c in table[k].values()), default=0) for k in rows}


def usual_seeds(counts: dict[str, int]) -> tuple[int, str]:
    """The seed count most rows have (the larger on a tie), and ``; other counts: rope (3), fox (1)``
    naming the rows that differ from it."""
    if not counts:
        return 0, ""
    values = list(counts.values())
    usual = max(set(values), key=lambda n: (values.count(n), n))
    other = [f"{label} ({n})" for label, n in counts.items() if n != usual]
    return usual, "; other counts: " + ", ".join(other) if other else ""


def heading(section: Section, seeds: int, per_token: bool = False, other: str = "") -> str:
    over = f"mean ± std over {seeds} seed{'s' * (seeds != 1)}{other}"
    if not section.task:
        title = section.title()
        return f"### {title[0].upper()}{title[1:]} (perplexity, {over})"
    what = "per-token accuracy" if per_token else "exact-match accuracy"
    return f"### {section.task}, trained on lengths up to {section.train_len} ({what}, {over})"


def markdown(table: Table, notes: Optional[dict[Section, list[str]]] = None) -> str:
    """One table per section (training length, and task): rows encodings, columns eval lengths (test
    buckets), mean ± std over seeds; a task's per-token accuracy in a second table; under them, a line
    for each thing not averaged in."""
    notes = notes or {}
    parts = []
    for section in sorted({k[0] for k in table} | set(notes)):
        cells = [c for k in table if k[0] == section for c in table[k].values()]
        seeds, other = usual_seeds(seeds_per_row(table, section))
        tables = [False, True] if section.task else [False]
        text = []
        for per_token in tables:
            rows = markdown_table(table, section, per_token) if cells else ["(no run to average)"]
            text.append(heading(section, seeds, per_token, other) + "\n\n" + "\n".join(rows) + "\n")
        below = [f"- {line}" for line in notes.get(section, [])]
        parts.append("\n".join(text) + ("\n" + "\n".join(below) + "\n" if below else ""))
    return "\n".join(parts)
