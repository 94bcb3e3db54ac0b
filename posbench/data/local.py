"""Documents of local files: a ``.txt`` file is one document, a ``.jsonl`` file one per record.

Read with the standard library, one file at a time and one line at a time, so every problem names
its file (and line): bytes that are not UTF-8, a line that is not JSON, a text field that holds a
number. Line endings are read as text mode reads them (``\\r\\n`` and ``\\r`` become ``\\n``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterator

from posbench.data.errors import DataError

log = logging.getLogger(__name__)


def _not_utf8(path: Path, err: UnicodeDecodeError, offset: int = 0, where: str = "") -> DataError:
    byte = err.object[err.start : err.start + 1].hex()
    converted = path.with_suffix(".utf8" + path.suffix)
    return DataError(
        f"{path}{where} is not UTF-8 at byte offset {offset + err.start} (0x{byte}: {err.reason}); "
        f"convert it, e.g. iconv -f LATIN1 -t UTF-8 {path} > {converted}, and list that file"
    )


def _unreadable(path: Path, err: OSError) -> DataError:
    return DataError(f"cannot read {path}: {err.strerror or err}")


def text_document(path: Path) -> str:
    """A whole ``.txt`` file."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _unreadable(path, err) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _records(path: Path) -> Iterator[tuple[str, object]]:
    """(where, record) for each non-blank line of a JSON-lines file; a file holding one JSON array
    (``.json``) gives its elements."""
    try:
        with path.open("rb") as handle:
            if handle.read(64).lstrip()[:1] == b"[":
                handle.seek(0)
                yield from _array_records(path, handle.read())
                return
            handle.seek(0)
            offset = 0
            for number, raw in enumerate(handle, 1):
                where = f" line {number}"
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _not_utf8(path, err, offset, where) from None
                offset += len(raw)
                if line.strip():
                    yield where, _parse(path, line, where)
    except OSError as err:
        raise _unreadable(path, err) from None


def _array_records(path: Path, data: bytes) -> Iterator[tuple[str, object]]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _not_utf8(path, err) from None
    records = _parse(path, text, "")
    if not isinstance(records, list):
        raise DataError(f"{path}: a .json file must hold one JSON array of records or one record per line")
    yield from ((f" record {i}", record) for i, record in enumerate(records, 1))


def _parse(path: Path, text: str, where: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}{where}: not valid JSON ({err.msg}, column {err.colno})") from None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def jsonl_documents(path: Path, field: str, warned: set[Path]) -> Iterator[str]:
    """The ``field`` of every record. Records without it (or with null) are skipped, counted in one
    warning per file (``warned``: files already warned about); a file where no record has it, or a
    record whose field is not a string, is an error."""
    records = lacking = 0
    fields: set[str] = set()
    for where, record in _records(path):
        records += 1
        if not isinstance(record, dict):
            raise DataError(f"{path}{where}: a record must be a JSON object, not {_kind(record)}")
        value = record.get(field)
        if value is None:
            lacking += 1
            fields.update(record)
            continue
        if not isinstance(value, str):
            raise DataError(
                f"{path}{where}: data.text_field={field!r} holds {_kind(value)}, not a string; quote it "
                "in the file or set data.text_field to the field that holds the text"
            )
        yield value
    if records and lacking == records:
        raise DataError(
            f"data.text_field={field!r} is not a field of {path}: none of its {records} records has it "
            f"(fields: {', '.join(sorted(fields)) or 'none'}); set data.text_field to the one with the text"
        )
    if lacking and path not in warned:
        warned.add(path)
        log.warning("%s: skipped %d of %d records: no %r field (or null)", path, lacking, records, field)
