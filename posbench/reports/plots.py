"""Plots of results documents (``posbench.reports.results``): perplexity against evaluation length,
mean loss by position inside the window, attention entropy and sink weight by position; for a
task, accuracy against length bucket, and for a retrieval task a length × depth heatmap.

matplotlib's object API on a bare ``Figure`` renders with Agg: no display, no pyplot global
state, so plotting works on headless machines and never opens a window. Lengths a model
cannot take are marked "n/a" on the length axis rather than silently dropped.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Iterable, Optional

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from posbench.common.atomic import atomic_write
from posbench.reports.results import how_trained, writing

DPI = 120
NA_Y = 0.03  # height of the n/a markers, in axes coordinates
LOG_Y_SPREAD = (
    10.0  # a log perplexity axis once values span a decade: past a breaking point they grow by orders
)
EXTRAPOLATION_PNG, POSITION_LOSS_PNG = "extrapolation.png", "position_loss.png"
ACCURACY_PNG, DEPTH_PNG, ATTENTION_PNG = "accuracy.png", "depth_accuracy.png", "attention.png"


def _has_value(row: dict, key: str) -> bool:
    return row["status"] == "ok" and row[key] is not None and math.isfinite(row[key])


def length_label(n: int) -> str:
    """2048 -> "2K", 1536 -> "1536", 128 -> "128": tick labels that stay short."""
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def series_label(document: dict, many: bool) -> str:
    """Encoding and training length for one run; the run name when several runs share a plot."""
    if many and document.get("run_name"):
        return document["run_name"]
    return f"{document['encoding']} (L={document['train_seq_len']})"


def _mark_missing(ax, rows: Iterable[dict], color, key: str = "ppl") -> None:
    """An x on the length axis for every length without a finite ``key``, with why in a word."""
    for row in rows:
        if _has_value(row, key):
            continue
        text = "n/a" if row["status"] != "ok" else "not finite"
        ax.plot(
            row["length"], NA_Y, marker="x", color=color, transform=ax.get_xaxis_transform(), clip_on=False
        )
        ax.annotate(
            text,
            (row["length"], NA_Y),
            xycoords=ax.get_xaxis_transform(),
            xytext=(4, 2),
            textcoords="offset points",
            fontsize=8,
            color=color,
        )


def _training_lines(ax, train_lengths: Iterable[int]) -> None:
    for n in sorted(set(train_lengths)):
        ax.axvline(n, color="0.4", linestyle="--", linewidth=1, label=f"training length {n}")


def _save(fig: Figure, path: str | Path) -> Path:
    """Atomically: a full disk ends in one line naming the file (``WriteError``), never half a PNG."""
    path = Path(path)
    with writing(path), atomic_write(path, "wb") as handle:
        fig.savefig(handle, format=path.suffix.lstrip(".") or "png", dpi=DPI, bbox_inches="tight")
    return path


def plot_extrapolation(documents: list[dict], path: str | Path, title: Optional[str] = None) -> Path:
    """Perplexity against evaluation length (log-x), one line per results document."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    lengths = sorted({row["length"] for doc in documents for row in doc["results"]})
    for doc in documents:
        ok = [row for row in doc["results"] if _has_value(row, "ppl")]
        (line,) = ax.plot(
            [r["length"] for r in ok],
            [r["ppl"] for r in ok],
            marker="o",
            label=series_label(doc, len(documents) > 1),
        )
        _mark_missing(ax, doc["results"], line.get_color())
    _training_lines(ax, (doc["train_seq_len"] for doc in documents))
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [length_label(n) for n in lengths])
    ax.xaxis.set_minor_locator(NullLocator())  # unlabeled base-2 minor ticks are clutter
    values = [row["ppl"] for doc in documents for row in doc["results"] if _has_value(row, "ppl")]
    if values and max(values) >= LOG_Y_SPREAD * min(values):
        ax.set_yscale("log")
    if not values:
        ax.set_yticks([])  # no perplexity to read off, only the n/a marks
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    protocols = ", ".join(sorted({doc["protocol"]["name"] for doc in documents}))
    ax.set_title(title or f"Perplexity by evaluation length ({protocols} windows)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def bucket_centres(curve: dict, kind: str) -> list[float]:
    """Where to draw each bucket, in tokens of context: position p is predicted from p+1 tokens."""
    if kind == "log":
        return [math.sqrt((lo + 1) * hi) for lo, hi in zip(curve["start"], curve["end"])]
    return [(lo + 1 + hi) / 2 for lo, hi in zip(curve["start"], curve["end"])]


def plot_position_loss(document: dict, path: str | Path) -> Path:
    """Mean NLL by position bucket inside the window, one line per evaluation length."""
    kind = document["protocol"]["bucket_kind"]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for row in document["results"]:
        if row["status"] != "ok":
            ax.plot([], [], linestyle="none", marker="x", label=f"L={row['length']}: n/a")
            continue
        curve = row["position_curve"]
        points = [(x, y) for x, y in zip(bucket_centres(curve, kind), curve["nll"]) if y is not None]
        ax.plot([x for x, _ in points], [y for _, y in points], marker=".", label=f"L={row['length']}")
    _training_lines(ax, [document["train_seq_len"]])
    if kind == "log":
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: length_label(round(x)) if x >= 1 else ""))
    ax.set_xlabel("tokens of context (position in window + 1)")
    ax.set_ylabel("mean NLL (nats)")
    ax.set_title(f"{how_trained(document)}: loss by position ({document['protocol']['name']} windows)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def layer_mean(per_layer: list[list], i: int) -> float:
    """Bucket i's mean over the layers; nan where a layer's value is null (not finite)."""
    values = [layer[i] for layer in per_layer]
    return math.nan if None in values else sum(values) / len(values)


def plot_attention(document: dict, path: str | Path) -> Path:
    """Attention entropy (left, with the uniform ceiling dashed) and the weight on the window's first
    key (right) by query position, averaged over the layers, one line per evaluation length."""
    kind = document["protocol"]["bucket_kind"]
    fig = Figure(figsize=(10.4, 4.2))
    entropy_ax, sink_ax = fig.subplots(1, 2)
    rows = [row for row in document["results"] if row["status"] == "ok" and row.get("attention")]
    for row in rows:
        curves = row["attention"]
        x = bucket_centres(curves, kind)
        mean_entropy = [layer_mean(curves["entropy"], i) for i in range(len(x))]
        mean_sink = [layer_mean(curves["sink"], i) for i in range(len(x))]
        line = entropy_ax.plot(x, mean_entropy, marker=".", label=f"L={row['length']}")[0]
        sink_ax.plot(x, mean_sink, marker=".", color=line.get_color(), label=f"L={row['length']}")
    if rows:
        longest = rows[-1]["attention"]
        ceiling = "uniform: ln(position + 1)"
        entropy_ax.plot(
            bucket_centres(longest, kind), longest["uniform_entropy"], "k--", lw=0.8, label=ceiling
        )
    for ax, ylabel in ((entropy_ax, "attention entropy (nats)"), (sink_ax, "weight on the first key")):
        _training_lines(ax, [document["train_seq_len"]])
        if kind == "log":
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: length_label(round(x)) if x >= 1 else ""))
        ax.set_xlabel("tokens of context (position in window + 1)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{how_trained(document)}: attention, mean over layers")
    return _save(fig, path)


def write_plots(document: dict, run_dir: str | Path) -> dict[str, Path]:
    """The plots of one run into ``run_dir``; returns {name: path}."""
    run_dir = Path(run_dir)
    if "task" in document:
        plots = {"accuracy": plot_accuracy(document, run_dir / ACCURACY_PNG)}
        if any(row["by_depth"] for row in document["results"]):
            plots["depth_accuracy"] = plot_depth_accuracy(document, run_dir / DEPTH_PNG)
        return plots
    plots = {
        "extrapolation": plot_extrapolation([document], run_dir / EXTRAPOLATION_PNG),
        "position_loss": plot_position_loss(document, run_dir / POSITION_LOSS_PNG),
    }
    if any(row.get("attention") for row in document["results"]):
        plots["attention"] = plot_attention(document, run_dir / ATTENTION_PNG)
    return plots


def bucket_label(row: dict) -> str:
    return (
        str(row["length"]) if row["length_min"] == row["length"] else f"{row['length_min']}-{row['length']}"
    )


def plot_accuracy(document: dict, path: str | Path) -> Path:
    """Exact-match and per-token accuracy against the test bucket's longest length (log-x)."""
    task, train_len = document["task"], document["train_seq_len"]
    rows = document["results"]
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    ok = [row for row in rows if _has_value(row, "accuracy")]
    for key, label in (("accuracy", "exact match"), ("token_accuracy", "per token")):
        (line,) = ax.plot([r["length"] for r in ok], [r[key] for r in ok], marker="o", label=label)
    _mark_missing(ax, rows, line.get_color(), "accuracy")
    _training_lines(ax, [train_len])
    ax.set_xscale("log", base=2)
    ax.set_xticks([r["length"] for r in rows], [bucket_label(r) for r in rows], fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set(ylim=(-0.02, 1.02), xlabel=f"test lengths ({task['unit']})", ylabel="accuracy")
    ax.set_title(f"{task['name']}: {document['encoding']} trained on lengths up to {train_len}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_depth_accuracy(document: dict, path: str | Path) -> Path:
    """A retrieval task's exact-match accuracy by length bucket (columns) and depth bucket (rows)."""
    rows = [row for row in document["results"] if row["by_depth"]]
    bands = sorted({(s, e) for row in rows for s, e in zip(row["by_depth"]["start"], row["by_depth"]["end"])})
    grid = [[math.nan] * len(rows) for _ in bands]
    for j, row in enumerate(rows):
        depth = row["by_depth"]
        for start, end, value in zip(depth["start"], depth["end"], depth["accuracy"]):
            grid[bands.index((start, end))][j] = value
    fig = Figure(figsize=(1.2 * len(rows) + 2.5, 0.45 * len(bands) + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i, line in enumerate(grid):
        for j, value in enumerate(line):
            ax.text(j, i, "" if math.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(rows)), [bucket_label(r) for r in rows], fontsize=8)
    ax.set_yticks(range(len(bands)), [f"{s:.1f}-{e:.1f}" for s, e in bands], fontsize=8)
    ax.set(xlabel=f"test lengths ({document['task']['unit']})", ylabel="depth of the needle")
    ax.set_title(f"{document['task']['name']}: {document['encoding']}, exact match by depth", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.05)
    return _save(fig, path)


def plot_comparison(table: dict) -> bytes:
    """``posbench compare``'s comparison.png, in memory: one panel per section (training length, and
    task), one line (mean ± std over seeds) per row of ``table``: (section, row label) -> eval length
    -> cell. Perplexity panels have a log axis; a task's panel shows exact-match accuracy."""
    sections = sorted({k[0] for k in table}) or [None]
    fig = Figure(figsize=(5 * len(sections), 4))
    axes = fig.subplots(1, len(sections), squeeze=False)
    for ax, section in zip(axes[0], sections):
        if section is None or not any(c.values for k in table if k[0] == section for c in table[k].values()):
            ax.text(0.5, 0.5, "no finite results", ha="center", va="center", transform=ax.transAxes)
            if section is not None:
                ax.set_title(f"{section.task + ', ' if section.task else ''}{section.title()}")
            continue
        for key in sorted(k for k in table if k[0] == section):
            cells = sorted((n, c) for n, c in table[key].items() if c.values)
            xs, means, stds = [n for n, _ in cells], [c.mean for _, c in cells], [c.std for _, c in cells]
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=key[1])
        ax.axvline(section.train_len, color="grey", linestyle="--", linewidth=1)
        if section.task:
            ax.set(
                ylim=(-0.02, 1.02), ylabel="exact-match accuracy", xlabel="test length (upper end of bucket)"
            )
            ax.set_title(f"{section.task}, trained up to {section.train_len}")
        else:
            ax.set(yscale="log", ylabel="perplexity", xlabel="eval length (tokens)")
            ax.set_title(section.title())
        ax.set_xscale("log", base=2)
        ax.legend(fontsize=8)
    with warnings.catch_warnings():  # long row labels: a cramped layout is still a plot
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()
