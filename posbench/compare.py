"""``posbench compare DIR [DIR ...]``: extrapolation curves of many runs side by side.

Reads every ``results.json`` under the given folders (no W&B needed), groups runs by their
identity without the seed (training length, encoding label, seedless digest; see
``posbench/identity.py``), aggregates seeds (mean ± sample std of perplexity), and writes
``comparison.md`` (rows: encodings; columns: eval lengths, as in Press et al. 2022, Table 2)
and ``comparison.png`` (perplexity vs eval length, one line per encoding, one panel per
training length).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from posbench.identity import digest, experiment_config, without_seed
from posbench.results import load_results


@dataclass
class Cell:
    """Perplexities of one (encoding, train length, eval length) over seeds."""

    ppls: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    missing: Optional[str] = None  # why the length is n/a

    @property
    def mean(self) -> float:
        return statistics.fmean(self.ppls) if self.ppls else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.ppls) if len(self.ppls) > 1 else 0.0


Key = tuple[int, str]  # (train length, row label: the encoding label, plus what tells apart runs sharing it)
RunKey = tuple[int, str, str]  # (train length, label, seedless digest): one experiment, any seed


def find_results(dirs: list[Path]) -> list[Path]:
    found = sorted({p for d in dirs for p in ([d] if d.is_file() else d.rglob("results.json"))})
    if not found:
        raise ValueError(f"no results.json under {', '.join(map(str, dirs))}; pass a sweep or run folder")
    return found


def seedless_experiment(doc: dict) -> dict:
    return without_seed(experiment_config(doc.get("config", {})))


def run_key(doc: dict) -> RunKey:
    """Files written before results recorded an identity get it from their saved config."""
    identity = doc.get("identity")
    seedless = identity["seedless_digest"] if identity else digest(seedless_experiment(doc))
    return doc["train_seq_len"], doc["encoding"], seedless


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        flat.update(
            flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
        )
    return flat


def row_labels(experiments: dict[RunKey, dict]) -> dict[RunKey, str]:
    """The encoding label; where several experiments share it (and a training length), followed by
    the config keys in which they differ, e.g. ``rope (train.lr=0.001)``."""
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
        settings = ", ".join(f"{k}={mine.get(k, '-')}" for k in differ) or key[2]
        labels[key] = f"{key[1]} ({settings})"
    return labels


def add_runs(cells: dict[int, Cell], docs: list[dict], protocol: Optional[str]) -> None:
    for doc in docs:
        seed = doc.get("config", {}).get("train", {}).get("seed", 0)
        for row in doc["results"]:
            if protocol is not None and row["protocol"] != protocol:
                continue
            cell = cells[row["length"]]
            if row["status"] == "ok" and row["ppl"] is not None:  # None: a diverged model's non-finite ppl
                cell.ppls.append(row["ppl"])
                cell.seeds.append(seed)
            else:
                cell.missing = row.get("reason") or "non-finite"


def collect(paths: list[Path], protocol: Optional[str] = None) -> dict[Key, dict[int, Cell]]:
    """(train length, row label) -> eval length -> Cell, over all runs (seeds) found."""
    runs: dict[RunKey, list[dict]] = defaultdict(list)
    for path in paths:
        doc = load_results(path)
        runs[run_key(doc)].append(doc)
    labels = row_labels({key: seedless_experiment(docs[0]) for key, docs in runs.items()})
    table: dict[Key, dict[int, Cell]] = defaultdict(lambda: defaultdict(Cell))
    for key, docs in runs.items():
        add_runs(table[(key[0], labels[key])], docs, protocol)
    return table


def format_cell(cell: Cell) -> str:
    if not cell.ppls:
        return "n/a"
    return f"{cell.mean:.2f} ± {cell.std:.2f}" if len(cell.ppls) > 1 else f"{cell.mean:.2f}"


def markdown(table: dict[Key, dict[int, Cell]]) -> str:
    """One table per training length: rows encodings, columns eval lengths, mean ± std over seeds."""
    parts = []
    for train_len in sorted({k[0] for k in table}):
        keys = sorted(k for k in table if k[0] == train_len)
        lengths = sorted({n for k in keys for n in table[k]})
        seeds = max(len(c.ppls) for k in keys for c in table[k].values())
        head = (
            f"### Trained at L = {train_len} (perplexity, mean ± std over {seeds} seed{'s' * (seeds > 1)})\n"
        )
        rows = [
            "| encoding | " + " | ".join(f"{n} ({n / train_len:g}L)" for n in lengths) + " |",
            "|---|" + "---|" * len(lengths),
        ]
        for key in keys:
            rows.append(
                f"| {key[1]} | " + " | ".join(format_cell(table[key].get(n, Cell())) for n in lengths) + " |"
            )
        parts.append(head + "\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def plot(table: dict[Key, dict[int, Cell]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_lens = sorted({k[0] for k in table})
    fig, axes = plt.subplots(1, len(train_lens), figsize=(5 * len(train_lens), 4), squeeze=False, sharey=True)
    for ax, train_len in zip(axes[0], train_lens):
        for key in sorted(k for k in table if k[0] == train_len):
            cells = sorted((n, c) for n, c in table[key].items() if c.ppls)
            xs, means, stds = [n for n, _ in cells], [c.mean for _, c in cells], [c.std for _, c in cells]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=key[1])
        ax.axvline(train_len, color="grey", linestyle="--", linewidth=1)
        ax.set(xscale="log", yscale="log", title=f"trained at L={train_len}", xlabel="eval length (tokens)")
        ax.set_xscale("log", base=2)
    axes[0][0].set_ylabel("perplexity")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(dirs: list[Path], out_dir: Optional[Path] = None, protocol: Optional[str] = None) -> str:
    """Write comparison.md and comparison.png into ``out_dir`` (default: the first folder); return the
    table."""
    table = collect(find_results(dirs), protocol)
    out_dir = out_dir or (dirs[0] if dirs[0].is_dir() else dirs[0].parent)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(table)
    (out_dir / "comparison.md").write_text(text)
    plot(table, out_dir / "comparison.png")
    return text


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m posbench compare", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep or run folders (searched for results.json)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where comparison.md/.png go (default: the first folder)"
    )
    parser.add_argument(
        "--protocol", default=None, help="keep only rows of this protocol (nonoverlapping, sliding)"
    )
    args = parser.parse_args(argv)
    missing = [d for d in args.dirs if not d.exists()]
    if missing:
        parser.error(f"no such folder: {', '.join(map(str, missing))}")
    try:
        print(compare(args.dirs, args.out, args.protocol))
    except ValueError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {(args.out or args.dirs[0])}/comparison.md and comparison.png")
