"""Reading user data and writing outputs safely.

Reading: every malformed row is reported with its file, line and field. Writing: outputs are written to a
temporary file in the same directory and renamed into place, so a crash never leaves a half-written file where a
good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from segrl.errors import UserError


def read_kind_json(path: str | Path, what: str, kinds) -> tuple[Path, dict]:
    """The JSON object in ``path`` (a ``what`` file, for messages) whose field ``kind`` is one of ``kinds``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a valid JSON {what} file ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("kind") not in kinds:
        raise UserError(f"{path}: field 'kind' should be one of {sorted(kinds)}, got {data.get('kind')!r}")
    return path, data


def read_jsonl(path: str | Path, required: dict[str, type]) -> list[dict]:
    """Read a JSONL file whose rows are objects holding at least the ``required`` fields with the given types.

    Blank lines are skipped. Raises :class:`UserError` naming the file, the 1-based line number and the field for a
    line that is not JSON, not an object, lacks a field or has a field of the wrong type.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Input file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {line_number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for field, kind in required.items():
                if field not in row:
                    raise UserError(f"{where}: missing field '{field}'")
                if not isinstance(row[field], kind):
                    raise UserError(
                        f"{where}: field '{field}' should be {kind.__name__}, got {type(row[field]).__name__}"
                    )
            rows.append(row)
    if not rows:
        raise UserError(f"{path} holds no rows")
    return rows


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename; create parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
