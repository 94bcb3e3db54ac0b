"""Results files of one evaluation and the printed perplexity table.

- ``results.json``: the whole record, schema-versioned and checked against
  ``posbench/schemas/results.schema.json`` on every write and read;
- ``results.csv``: one row per length (n/a rows included, with their reason), with the
  encoding and training length on every row, so files of many runs concatenate;
- ``position_loss.csv``: the per-position curves in long form, one row per (length, bucket);
- ``attention.csv``: the attention diagnostics in long form, one row per (length, layer, bucket):
  mean entropy, its uniform ceiling ln(position + 1), and the weight on the window's first key.
A task's results (a document with a ``task`` record) have one row per test bucket, with exact-match
and per-token accuracy, and for the retrieval tasks ``depth_accuracy.csv`` in place of the curves:
one row per (length bucket, depth bucket).
Non-finite numbers (a diverged model) are written as null / empty cells: JSON has no NaN.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import time
from contextlib import contextmanager
from functools import lru_cache
from importlib import metadata as importlib_metadata
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from posbench.common.atomic import atomic_write_text
from posbench.tracking.base import json_safe

RESULTS_SCHEMA_VERSION = 3
RESULTS_JSON, RESULTS_CSV, POSITION_CSV = "results.json", "results.csv", "position_loss.csv"
DEPTH_CSV, ATTENTION_CSV = "depth_accuracy.csv", "attention.csv"
CSV_FIELDS = (
    "encoding",
    "train_seq_len",
    "run_name",
    "length",
    "x_train",
    "protocol",
    "stride",
    "status",
    "ppl",
    "nll",
    "tokens_scored",
    "windows",
    "backend",
    "wall_time_s",
    "reason",
)
TASK_RUN_FIELDS = ("encoding", "task", "train_seq_len", "run_name")  # on every row of a task's CSVs
TASK_CSV_FIELDS = (
    *TASK_RUN_FIELDS,
    "length_min",
    "length",
    "x_train",
    "status",
    "accuracy",
    "token_accuracy",
    "examples",
    "answer_tokens",
    "longest_tokens",
    "backend",
    "wall_time_s",
    "reason",
)
DEPTH_CSV_FIELDS = (
    *TASK_RUN_FIELDS,
    "length_min",
    "length",
    "depth_start",
    "depth_end",
    "accuracy",
    "token_accuracy",
    "examples",
)
POSITION_CSV_FIELDS = (
    "encoding",
    "train_seq_len",
    "run_name",
    "length",
    "bucket_start",
    "bucket_end",
    "nll",
    "tokens",
)

ATTENTION_CSV_FIELDS = (
    "encoding",
    "train_seq_len",
    "run_name",
    "length",
    "layer",
    "bucket_start",
    "bucket_end",
    "entropy",
    "uniform_entropy",
    "sink",
)


class WriteError(ValueError):
    """A results, plot or comparison file could not be written (disk full, no permission). A
    ValueError, so the CLI prints it in one line; every write is atomic, so the files written
    before it stay whole and the one that failed keeps its old content (or stays absent)."""


@contextmanager
def writing(path: str | Path, elsewhere: str = "point run_root=... at another disk") -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` into a WriteError naming the file; on a full
    disk, say what to do (``elsewhere``: how to write to another disk instead)."""
    path = Path(path)
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = f"the previous {path.name} is kept" if path.is_file() else "nothing was written"
            message = (
                f"no space left on the device while writing {path} ({kept}); free space there or {elsewhere}"
            )
        else:
            message = f"could not write {path}: {exc.strerror or exc}"
        raise WriteError(message) from exc


def posbench_version() -> str:
    try:
        return importlib_metadata.version("posbench")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def results_header(
    *,
    run_name: str,
    encoding: str,
    train_seq_len: int,
    model: str,
    parameters: int,
    non_embedding_parameters: int,
    data: dict,
    precision: str,
    eval_config: Optional[dict],
    config: dict,
    **extra: Any,
) -> dict[str, Any]:
    """What a results file says of the model it scores besides the numbers, for posbench's runs and
    pretrained models alike: its name, the encoding's label, the training length, the model (name and
    parameter counts), data, precision, the eval group it was scored by (None for a task, which is
    scored by its own test settings) and the config; then ``extra``'s entries (a run's identity and
    parent, a pretrained model's record)."""
    counts = {"parameters": parameters, "non_embedding_parameters": non_embedding_parameters}
    header = {
        "run_name": run_name,
        "encoding": encoding,
        "train_seq_len": train_seq_len,
        "model": {"name": model, **counts},
        "data": data,
        "precision": precision,
        **({} if eval_config is None else {"eval_config": eval_config}),
        "config": config,
    }
    return {**header, **extra}


def how_trained(document: dict) -> str:
    """``rope trained at 256``; a pretrained model's ``Llama-3.2-1B+yarn, pretrained, original
    context 8192`` (its train_seq_len is the context it was pretrained with)."""
    if "pretrained" in document:
        return f"{document['encoding']}, pretrained, original context {document['train_seq_len']}"
    return f"{document['encoding']} trained at {document['train_seq_len']}"


def results_document(rows: list[dict], metadata: dict[str, Any]) -> dict:
    """The results.json document: version and provenance, the caller's metadata, then the rows."""
    head = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "posbench_version": posbench_version(),
    }
    return json_safe({**head, **metadata, "results": rows}, "results")


@lru_cache(maxsize=1)
def results_schema() -> dict:
    return json.loads((resources.files("posbench") / "schemas" / "results.schema.json").read_text())


def validate_results(document: dict) -> None:
    """Raise ValueError naming the first field that breaks the results schema."""
    import jsonschema  # only validation needs it

    validator = jsonschema.Draft202012Validator(results_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ValueError(
            f"results document breaks schema version {RESULTS_SCHEMA_VERSION} at {where}: {error.message}"
        )


def consistency_problem(document: dict) -> Optional[str]:
    """What a results document says against itself (a hand edit, a merge gone wrong), or None: a
    length listed twice for one protocol (it would count as a second seed), a perplexity that is not
    exp of its NLL (a negative one among them)."""
    seen: set[tuple] = set()
    for row in document.get("results") or []:
        key = (row.get("protocol"), row.get("length_min"), row["length"])
        if key in seen:
            return f"length {row['length']} appears twice" + (f" ({key[0]})" if key[0] else "")
        seen.add(key)
        nll, ppl = row.get("nll"), row.get("ppl")
        if (
            nll is not None
            and ppl is not None
            and not math.isclose(ppl, math.exp(min(nll, 700)), rel_tol=1e-6)
        ):
            return f"at length {row['length']} ppl {ppl} is not exp(nll {nll})"
    return None


def load_results(path: str | Path) -> dict:
    """A results.json (or the folder holding it), checked against the schema."""
    path = Path(path)
    document = json.loads((path / RESULTS_JSON if path.is_dir() else path).read_text())
    validate_results(document)
    problem = consistency_problem(document)
    if problem:
        raise ValueError(f"the results contradict themselves: {problem}")
    return document


def write_results(run_dir: str | Path, rows: list[dict], metadata: dict[str, Any]) -> dict:
    """Write results.json, results.csv and position_loss.csv into ``run_dir``; returns the JSON document."""
    run_dir = Path(run_dir)
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    document = results_document(rows, metadata)
    validate_results(document)  # before writing: a file on disk always matches its schema
    files = {RESULTS_JSON: json.dumps(document, indent=2, allow_nan=False) + "\n"}
    if "task" in document:
        files[RESULTS_CSV] = to_csv(TASK_CSV_FIELDS, csv_rows(document))
        if any(row["by_depth"] for row in document["results"]):
            files[DEPTH_CSV] = to_csv(DEPTH_CSV_FIELDS, depth_rows(document))
    else:
        files[RESULTS_CSV] = to_csv(CSV_FIELDS, csv_rows(document))
        files[POSITION_CSV] = to_csv(POSITION_CSV_FIELDS, position_rows(document))
        if any(row.get("attention") for row in document["results"]):
            files[ATTENTION_CSV] = to_csv(ATTENTION_CSV_FIELDS, attention_rows(document))
    for name, text in files.items():
        with writing(run_dir / name):
            atomic_write_text(run_dir / name, text)
    return document


def _run_columns(document: dict) -> dict:
    return {
        "encoding": document["encoding"],
        "task": (document.get("task") or {}).get("name"),
        "train_seq_len": document["train_seq_len"],
        "run_name": document.get("run_name"),
    }


def csv_rows(document: dict) -> list[dict]:
    """One row per evaluated length."""
    train_len = document["train_seq_len"]
    return [
        {**_run_columns(document), **row, "x_train": round(row["length"] / train_len, 4)}
        for row in document["results"]
    ]


def position_rows(document: dict) -> list[dict]:
    """One row per (length, bucket) of every evaluated length's per-position curve."""
    rows = []
    for result in document["results"]:
        curve = result.get("position_curve") or {"start": [], "end": [], "nll": [], "tokens": []}
        for start, end, nll, tokens in zip(curve["start"], curve["end"], curve["nll"], curve["tokens"]):
            rows.append(
                {
                    **_run_columns(document),
                    "length": result["length"],
                    "bucket_start": start,
                    "bucket_end": end,
                    "nll": nll,
                    "tokens": tokens,
                }
            )
    return rows


def attention_rows(document: dict) -> list[dict]:
    """One row per (length, layer, bucket) of every evaluated length's attention diagnostics."""
    rows = []
    for result in document["results"]:
        curves = result.get("attention")
        if not curves:
            continue
        for layer, (entropy, sink) in enumerate(zip(curves["entropy"], curves["sink"])):
            for i, start in enumerate(curves["start"]):
                rows.append(
                    {
                        **_run_columns(document),
                        "length": result["length"],
                        "layer": layer,
                        "bucket_start": start,
                        "bucket_end": curves["end"][i],
                        "entropy": entropy[i],
                        "uniform_entropy": curves["uniform_entropy"][i],
                        "sink": sink[i],
                    }
                )
    return rows


def depth_rows(document: dict) -> list[dict]:
    """One row per (length bucket, depth bucket) of a retrieval task's results."""
    rows = []
    for result in document["results"]:
        depth = result.get("by_depth") or {"start": []}
        for i, start in enumerate(depth["start"]):
            rows.append(
                {
                    **_run_columns(document),
                    "length_min": result["length_min"],
                    "length": result["length"],
                    "depth_start": start,
                    "depth_end": depth["end"][i],
                    **{key: depth[key][i] for key in ("accuracy", "token_accuracy", "examples")},
                }
            )
    return rows


def to_csv(fields: Iterable[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _number(value: Optional[float], spec: str) -> str:
    if value is None:  # non-finite in the JSON
        return "nan"
    return format(value, spec) if math.isfinite(value) else str(value)


def format_table(rows: Iterable[dict], train_len: int | None = None) -> str:
    """A fixed-width table: length, ratio to the training length, ppl, NLL, tokens scored, backend."""
    lines = [
        f"{'length':>8} {'x train':>7} {'ppl':>10} {'nll':>8} {'tokens':>9} {'windows':>7} {'time s':>7}  "
        "backend"
    ]
    for row in rows:
        ratio = f"{row['length'] / train_len:.1f}" if train_len else "-"
        if row["status"] != "ok":
            lines.append(
                f"{row['length']:>8} {ratio:>7} {'n/a':>10} {'':>8} {0:>9} {0:>7} {'':>7}  ({row['reason']})"
            )
            continue
        lines.append(
            f"{row['length']:>8} {ratio:>7} {_number(row['ppl'], '10.3f'):>10} "
            f"{_number(row['nll'], '8.4f'):>8} "
            f"{row['tokens_scored']:>9} {row['windows']:>7} {row['wall_time_s']:>7.1f}  {row['backend']}"
        )
    return "\n".join(lines)


def format_task_table(rows: Iterable[dict], train_len: int) -> str:
    """A fixed-width table of a task: length bucket, ratio to the longest training length, exact-match
    and per-token accuracy, examples, the attention path."""
    head = f"{'lengths':>11} {'x train':>7} {'accuracy':>9} {'per-token':>9} {'examples':>8} {'time s':>7}"
    lines = [head + "  backend"]
    for row in rows:
        span = f"{row['length_min']}-{row['length']}"
        ratio = f"{row['length'] / train_len:.1f}"
        if row["status"] != "ok":
            lines.append(f"{span:>11} {ratio:>7} {'n/a':>9} {'':>9} {0:>8} {'':>7}  ({row['reason']})")
            continue
        lines.append(
            f"{span:>11} {ratio:>7} {row['accuracy']:>9.3f} {row['token_accuracy']:>9.3f} "
            f"{row['examples']:>8} {row['wall_time_s']:>7.1f}  {row['backend']}"
        )
    return "\n".join(lines)
