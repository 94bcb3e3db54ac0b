"""``posbench compare DIR [DIR ...]``: extrapolation curves of many runs side by side.

Reads every ``results.json`` under the given folders (no W&B needed) and groups them by
everything that makes two results different experiments: the run identity without the seed
(training length, encoding label, seedless digest; see ``posbench/runs/identity.py``; a run initialised
from a parent, ``train.init_from``, is tabled at its lineage's first training length and labelled by
its lineage, e.g. ``rope-L256 → rope+yarn-L1024 (200 steps)``) and how the
numbers were obtained (protocol, stride, token budget per length, the checkpoint's step, and
for ``posbench eval`` results the overrides laid over the checkpoint). Each group counts one
result per distinct seed (the newest when a seed was evaluated more than once) and aggregates
them (mean ± sample std of perplexity). It writes ``comparison.md`` (one table per training
length: rows encodings, columns eval lengths, as in Press et al. 2022, Table 2; under each table
the diverged runs, non-finite values and repeated evaluations it did not average) and
``comparison.png``, both atomically and only once every file has been read.

Results of a task (``task=NAME``) are tabled apart, one table per task and training length: rows
encodings, columns test buckets, exact-match accuracy (and a second table of per-token accuracy).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from posbench.common.atomic import atomic_write
from posbench.reports.plots import plot_comparison
from posbench.reports.results import RESULTS_JSON, load_results, results_schema, writing
from posbench.reports.tables import Cell, RunKey, Section, Table, markdown
from posbench.runs.identity import digest, experiment_config, flatten, without_seed
from posbench.runs.lineage import lineage_label

COMPARISON_MD, COMPARISON_PNG = "comparison.md", "comparison.png"
OVERRIDES = "overrides."  # prefix of the flat settings a ``posbench eval`` laid over its checkpoint


@dataclass
class Comparison:
    table: Table
    notes: dict[Section, list[str]]  # lines under each section's table: what was not averaged
    preface: list[str] = field(default_factory=list)  # lines above every table: files left out whole


@dataclass
class Run:
    """One results file, as compare sees it."""

    path: Path
    doc: dict
    key: RunKey
    experiment: dict[str, object]  # flat: the seedless experiment config, then how it was evaluated

    @property
    def seed(self) -> int:
        identity = self.doc.get("identity")
        if identity:
            return int(identity["seed"])
        return int(self.doc.get("config", {}).get("train", {}).get("seed", 0))

    @property
    def seed_key(self) -> int | str:
        """The seed; for a run initialised from a parent, the parent's seed too (``1/0``: child seed 0
        of the parent of seed 1), so children of two parent seeds are two seeds, not one repeated."""
        parent = (self.doc.get("config") or {}).get("parent")
        return f"{parent['seed']}/{self.seed}" if isinstance(parent, dict) else self.seed

    @property
    def diverged(self) -> Optional[dict]:
        return self.doc.get("diverged")


def valid_protocols() -> list[str]:
    return list(results_schema()["$defs"]["protocol_name"]["enum"])


def check_protocol(protocol: Optional[str]) -> None:
    if protocol is not None and protocol not in valid_protocols():
        raise ValueError(f"unknown --protocol {protocol!r}; valid protocols: {', '.join(valid_protocols())}")


def results_under(folder: Path) -> list[Path]:
    """Every results.json under ``folder``, dangling links included (``Path.rglob`` skips those)."""
    return [Path(root) / RESULTS_JSON for root, _, files in os.walk(folder) if RESULTS_JSON in files]


def find_results(dirs: list[Path]) -> list[Path]:
    found = sorted({p for d in dirs for p in ([d] if d.is_file() else results_under(d))})
    if not found:
        raise ValueError(f"no results.json under {', '.join(map(str, dirs))}; pass a sweep or run folder")
    dangling = [str(p) for p in found if not p.exists()]
    if dangling:
        raise ValueError(
            f"{len(dangling)} results.json link(s) point at nothing, nothing written (fix or remove them): "
            f"{'; '.join(dangling)}"
        )
    return found


def first_problem(exc: BaseException, limit: int = 200) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_all(paths: list[Path]) -> list[tuple[Path, dict]]:
    """Every file, or ValueError naming each unreadable or schema-invalid one: a table silently
    missing a seed would be wrong, so one bad file stops the comparison."""
    docs, bad = [], []
    for path in paths:
        try:
            docs.append((path, load_results(path)))
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            bad.append(f"{path}: {first_problem(exc)}")
    if bad:
        raise ValueError(
            f"{len(bad)} of {len(paths)} results files cannot be read, nothing written "
            f"(fix or move them): {'; '.join(bad)}"
        )
    return docs


def seedless_experiment(doc: dict) -> dict:
    return without_seed(experiment_config(doc.get("config", {})))


def evaluation(doc: dict) -> dict[str, object]:
    """How the numbers were obtained, as flat settings. Overrides that only say how an evaluation ran
    or logged (``logger``, ``model.attention``) are left out; the others count even where the
    evaluated config shows them too, since it does not show what the checkpoint was trained with.
    Each override counts by the value it resolved to (an interpolation such as ``${train.seq_len}``
    is recorded as written), so two spellings of one setting are one evaluation."""
    resolved = flatten(doc.get("config") or {})
    overrides = {
        f"{OVERRIDES}{k}": resolved.get(k, v)
        for k, v in flatten(experiment_config(doc.get("overrides") or {})).items()
    }
    if "task" in doc:
        task = doc["task"]
        how = ("decoding", "test_seed", "test_examples", "depth_buckets")
        buckets = [[row["length_min"], row["length"]] for row in doc.get("results") or []]
        return {**{f"task.{k}": task.get(k) for k in how}, "task.buckets": buckets, **overrides}
    statement = doc.get("protocol") or {}
    rows = doc.get("results") or [{}]
    # BOS and the truncated protocol's documents count only where set: files from before they
    # existed group with the runs that leave them off
    bos = {"eval.add_bos": True} if statement.get("bos_id") is not None else {}
    documents = {f"eval.{k}": v for k, v in (statement.get("documents") or {}).items()}
    return {
        "eval.protocol": statement.get("name", rows[0].get("protocol")),
        "eval.stride": statement.get("stride"),
        "eval.max_tokens": statement.get("max_tokens_per_length"),
        **bos,
        **documents,
        **overrides,
    }


def as_run(path: Path, doc: dict) -> Run:
    """Files written before results recorded an identity get it from their saved config."""
    identity, trained = doc.get("identity"), seedless_experiment(doc)
    seedless = identity["seedless_digest"] if identity else digest(trained)
    how = evaluation(doc)
    step = None if doc.get("diverged") else doc.get("step")
    parent = doc.get("config", {}).get("parent")
    # a run initialised from a parent sits with its lineage's first run, labelled by its lineage
    label = lineage_label(doc["config"], doc.get("step")) if parent else doc["encoding"]
    train_len = parent["root_train_len"] if parent else doc["train_seq_len"]
    section = Section((doc.get("task") or {}).get("name", ""), train_len, "pretrained" in doc)
    key = (section, label, seedless, digest(how), step)
    experiment = {**flatten(trained), **how, "step": step}
    return Run(path, doc, key, experiment)


def describe(differ: list[str], mine: dict[str, object]) -> str:
    """``train.lr=0.001, eval.protocol=sliding``; where overrides of a ``posbench eval`` differ, all of
    this row's together at the end: ``overrides: encoding.base=500`` or ``no overrides``."""
    settings = [f"{k}={mine.get(k, '-')}" for k in differ if not k.startswith(OVERRIDES)]
    if any(k.startswith(OVERRIDES) for k in differ):
        overridden = [
            f"{k[len(OVERRIDES) :]}={v}" for k, v in sorted(mine.items()) if k.startswith(OVERRIDES)
        ]
        settings.append(f"overrides: {', '.join(overridden)}" if overridden else "no overrides")
    return ", ".join(settings)


def row_labels(experiments: dict[RunKey, dict]) -> dict[RunKey, str]:
    """The encoding label; where several experiments share it (and a training length), followed by
    the settings in which they differ, e.g. ``rope (train.lr=0.001)``, ``rope (eval.protocol=sliding)``."""
    labels = {}
    for key, experiment in experiments.items():
        rivals = [flatten(e) for k, e in experiments.items() if k[:2] == key[:2]]
        if len(rivals) == 1:
            labels[key] = key[1]
            continue
        mine = flatten(experiment)
        differ = sorted(
            k for k in set().union(*rivals) if any(r.get(k, "-") != mine.get(k, "-") for r in rivals)
        )
        labels[key] = f"{key[1]} ({describe(differ, mine) or key[2]})"
    return labels


def run_name(run: Run, label: str) -> str:
    """``rope-L128-s1``; ``rope (train.lr=0.01) seed 1`` where the row label tells experiments apart."""
    section, encoding = run.key[:2]
    task = f"{section.task}-" if section.task else ""
    return (
        f"{task}{encoding}-L{section.train_len}-s{run.seed}"
        if label == encoding
        else f"{label} seed {run.seed}"
    )


def newest_first(runs: list[Run]) -> list[Run]:
    return sorted(runs, key=lambda r: (r.doc.get("created_utc", ""), str(r.path)), reverse=True)


SeedRows = dict[int | str, dict[int, tuple[dict, Run]]]  # seed -> length -> (its row, the file's run)


def distinct_seeds(runs: list[Run]) -> tuple[SeedRows, list[tuple[list[Run], dict[Path, list[int]]]]]:
    """One row per seed and length: the newest file's (``created_utc``, then path) where a seed was
    evaluated more than once (a training run and a ``posbench eval`` of its checkpoint, or two
    evaluations of it), so a length only an older file has is still counted; and, for each seed
    with several files, which file each length came from."""
    by_seed: dict[int | str, list[Run]] = defaultdict(list)
    for run in runs:
        by_seed[run.seed_key].append(run)
    kept: SeedRows = {}
    sources = []
    for seed in sorted(by_seed, key=str):
        rows: dict[int, tuple[dict, Run]] = {}
        for run in newest_first(by_seed[seed]):
            for row in run.doc["results"]:
                rows.setdefault(row["length"], (row, run))
        kept[seed] = dict(sorted(rows.items()))
        if len(by_seed[seed]) > 1:
            used: dict[Path, list[int]] = defaultdict(list)
            for length, (_, run) in kept[seed].items():
                used[run.path].append(length)
            sources.append((by_seed[seed], dict(used)))
    return kept, sources


def add_runs(cells: dict[int, Cell], kept: SeedRows, protocol: Optional[str]) -> dict[int, list[Run]]:
    """Each seed's values into its cells; returns eval length -> the runs whose value was not averaged
    there (n/a, or non-finite: a diverged model's null perplexity)."""
    left_out: dict[int, list[Run]] = defaultdict(list)
    for seed, rows in kept.items():
        for length, (row, run) in rows.items():
            metric = "accuracy" if "task" in run.doc else "ppl"
            if protocol is not None and row.get("protocol") != protocol:
                continue
            cell = cells[length]
            cell.length_min = row.get("length_min")
            if row["status"] == "ok" and row[metric] is not None:
                cell.values.append(row[metric])
                cell.seeds.append(seed)
                if metric == "accuracy":
                    cell.token_accuracies.append(row["token_accuracy"])
            else:
                cell.missing = row.get("reason") or "non-finite"
                left_out[length].append(run)
    return left_out


def left_out_notes(cells: dict[int, Cell], left_out: dict[int, list[Run]], label: str) -> list[str]:
    """Non-finite values are always named; an n/a only where other seeds have a value there (an n/a
    length of every seed shows as n/a in the table)."""
    where: dict[tuple[str, str], list[int]] = defaultdict(list)
    for length, runs in sorted(left_out.items()):
        for run in runs:
            row = next(r for r in run.doc["results"] if r["length"] == length)
            if row["status"] == "ok":
                where[("not finite, not averaged", run_name(run, label))].append(length)
            elif cells[length].values:
                where[(f"n/a ({row['reason']}), not averaged", run_name(run, label))].append(length)
    return [f"{what}: {name} at {', '.join(map(str, ns))}" for (what, name), ns in where.items()]


def diverged_note(runs: list[Run], names: dict[int, str]) -> str:
    parts = []
    for run in runs:
        info = run.diverged
        loss = info.get("last_finite_loss")
        lost = f"last finite loss {loss:.2f}" if loss is not None else "no finite loss"
        parts.append(f"{names[id(run)]} (step {info['step']}, {lost})")
    return "diverged, not averaged: " + "; ".join(parts)


def without_step(experiment: dict) -> dict:
    return {k: v for k, v in experiment.items() if k != "step"}


def diverged_names(diverged: list[Run], experiments: dict[RunKey, dict]) -> dict[int, str]:
    """Each diverged run by the row its experiment has, or would have had beside the rows there are
    (labelled by the settings in which it differs from them, as ``row_labels`` does)."""
    names = {}
    for run in diverged:
        match = next((k for k in experiments if k[:4] == run.key[:4]), None)
        if match is not None:
            names[id(run)] = run_name(run, row_labels(experiments)[match])
            continue
        # its step is where it stopped, not a setting: compare the rest
        trained = {k: without_step(e) for k, e in {**experiments, run.key: run.experiment}.items()}
        names[id(run)] = run_name(run, row_labels(trained)[run.key])
    return names


def of_protocol(runs: list[Run], protocol: Optional[str]) -> list[Run]:
    if protocol is None:
        return runs
    kept = [r for r in runs if any(row.get("protocol") == protocol for row in r.doc["results"])]
    if not kept:
        found = sorted({row.get("protocol") or "task accuracy" for r in runs for row in r.doc["results"]})
        raise ValueError(
            f"none of the {len(runs)} results files has {protocol} results; they hold: {', '.join(found)}"
        )
    return kept


def gather(paths: list[Path], protocol: Optional[str] = None) -> Comparison:
    """The tables and what was left out of them, from every results file (any error before output)."""
    check_protocol(protocol)
    every = [as_run(path, doc) for path, doc in read_all(paths)]
    runs = of_protocol(every, protocol)
    groups: dict[RunKey, list[Run]] = defaultdict(list)
    for run in runs:
        if not run.diverged:
            groups[run.key].append(run)
    experiments = {key: group[0].experiment for key, group in groups.items()}
    labels = row_labels(experiments)
    table: Table = defaultdict(lambda: defaultdict(Cell))
    notes: dict[Section, list[str]] = defaultdict(list)
    for key, group in sorted(groups.items(), key=lambda item: labels[item[0]]):
        kept, sources = distinct_seeds(group)
        cells = table[(key[0], labels[key])]
        notes[key[0]] += left_out_notes(cells, add_runs(cells, kept, protocol), labels[key])
        for runs, used in sources:
            where = "; ".join(f"{', '.join(map(str, lengths))} from {path}" for path, lengths in used.items())
            name = run_name(newest_first(runs)[0], labels[key])
            notes[key[0]].append(
                f"evaluated {len(runs)} times, the newest value of each length kept: {name} ({where})"
            )
    diverged = [run for run in runs if run.diverged]
    names = diverged_names(diverged, experiments)
    for section in sorted({run.key[0] for run in diverged}):
        notes[section].append(diverged_note([r for r in diverged if r.key[0] == section], names))
    return Comparison(table, dict(notes), left_out_by_protocol(every, runs, protocol))


def left_out_by_protocol(every: list[Run], kept: list[Run], protocol: Optional[str]) -> list[str]:
    """A line saying how many files ``--protocol`` left out, and why: task results have no protocol
    (they are scored by accuracy), the others hold only other protocols' numbers."""
    kept_ids = {id(run) for run in kept}
    dropped = [run for run in every if id(run) not in kept_ids]
    if not dropped:
        return []
    tasks = sum("task" in run.doc for run in dropped)
    parts = [f"{tasks} of tasks (scored by accuracy, not by a perplexity protocol)"] if tasks else []
    if len(dropped) > tasks:
        parts.append(f"{len(dropped) - tasks} with no {protocol} numbers")
    return [f"--protocol {protocol} left out {len(dropped)} results files: {'; '.join(parts)}"]


def collect(paths: list[Path], protocol: Optional[str] = None) -> Table:
    """(train length, row label) -> eval length -> Cell, over all runs (seeds) found."""
    return gather(paths, protocol).table


def write_file(path: Path, data: bytes) -> None:
    with writing(path, "pass --out DIR on another disk"), atomic_write(path, "wb") as handle:
        handle.write(data)


def compare(dirs: list[Path], out_dir: Optional[Path] = None, protocol: Optional[str] = None) -> str:
    """Write comparison.md and comparison.png into ``out_dir`` (default: the first folder); return the
    text. Every file is read and every argument checked before anything is written."""
    comparison = gather(find_results(dirs), protocol)
    text = "".join(f"{line}\n\n" for line in comparison.preface) + markdown(
        comparison.table, comparison.notes
    )
    png = plot_comparison(comparison.table)
    out_dir = out_dir or (dirs[0] if dirs[0].is_dir() else dirs[0].parent)
    with writing(out_dir, "pass --out DIR on another disk"):
        out_dir.mkdir(parents=True, exist_ok=True)
    write_file(out_dir / COMPARISON_MD, text.encode())
    write_file(out_dir / COMPARISON_PNG, png)
    return text


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m posbench compare", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep or run folders (searched for results.json)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where comparison.md/.png go (default: the first folder)"
    )
    parser.add_argument(
        "--protocol", default=None, help=f"keep only rows of this protocol ({', '.join(valid_protocols())})"
    )
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.exists()]
    if missing:
        parser.error(f"no such folder: {', '.join(map(str, missing))}")
    try:
        print(compare(args.dirs, args.out, args.protocol))
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    out = args.out or (args.dirs[0] if args.dirs[0].is_dir() else args.dirs[0].parent)
    print(f"wrote {out}/{COMPARISON_MD} and {COMPARISON_PNG}")
