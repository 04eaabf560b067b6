"""Reading user data and writing outputs safely.

Reading: every malformed row is reported with its file, line and field. Writing: outputs are written to a
temporary file in the same directory and renamed into place, so a crash never leaves a half-written file where a
good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from segrl.errors import UserError


class OutputError(UserError, OSError):
    """An output could not be written (disk full, a read-only or missing directory, a file where a directory should
    be). A :class:`UserError` for the CLI (one line, no traceback), still an ``OSError`` for library callers."""


def read_kind_json(path: str | Path, what: str, kinds) -> tuple[Path, dict]:
    """The JSON object in ``path`` (a ``what`` file, for messages) whose field ``kind`` is one of ``kinds``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError, too many digits, too deep
        raise UserError(f"{path}: not a valid JSON {what} file ({_first_line(err)})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} file ({_reason(err)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(data).__name__}")
    if data.get("kind") not in kinds:
        raise UserError(f"{path}: field 'kind' should be one of {sorted(kinds)}, got {data.get('kind')!r}")
    return path, data


def read_jsonl(path: str | Path, required: dict[str, type]) -> list[dict]:
    """Read a JSONL file whose rows are objects holding at least the ``required`` fields with the given types.

    Blank lines are skipped. Raises :class:`UserError` naming the file, the 1-based line number and the field for a
    line that is not JSON (or not UTF-8), not an object, lacks a field or has a field of the wrong type.
    """
    return [row for _, row in read_jsonl_numbered(path, required)]


def read_jsonl_numbered(path: str | Path, required: dict[str, type]) -> list[tuple[int, dict]]:
    """:func:`read_jsonl`, each row with its 1-based line number (for error messages about a row's contents)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Input file not found: {path}")
    rows = []
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}, line {line_number}"
            try:
                line = raw.decode("utf-8-sig" if line_number == 1 else "utf-8")  # a byte-order mark is no error
            except UnicodeDecodeError as err:
                raise UserError(f"{where}: not UTF-8 text (byte {raw[err.start]:#04x} at column {err.start + 1})"
                                ) from None
            if not line.strip():
                continue
            line = line.rstrip("\r\n")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.pos + 1})") from None
            except (ValueError, RecursionError) as err:  # an integer of over 4300 digits; nesting too deep
                raise UserError(f"{where}: not valid JSON ({_first_line(err)})") from None
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for field, kind in required.items():
                if field not in row:
                    raise UserError(f"{where}: missing field '{field}'")
                if not isinstance(row[field], kind):
                    raise UserError(
                        f"{where}: field '{field}' should be {kind.__name__}, got {type(row[field]).__name__}"
                    )
            rows.append((line_number, row))
    if not rows:
        raise UserError(f"{path} holds no rows")
    return rows


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename; create parent directories.

    A failed write (disk full, read-only directory, ...) leaves any earlier file at ``path`` as it was, removes the
    temporary file and raises :class:`OutputError` naming ``path``. A ``path`` that is a device or a pipe
    (``/dev/null``, ``/dev/stdout``) is written to directly: renaming onto it would replace the device with a file.
    """
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        try:
            with path.open("w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as err:
            raise OutputError(f"cannot write {path}: {_reason(err)}") from err
        return path
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise OutputError(f"cannot write {path}: {_reason(err)}; an earlier {path.name} there is unchanged"
                              ) from err
        raise
    return path


def replace_dir(new: str | Path, final: str | Path) -> Path:
    """Move the completely written directory ``new`` to ``final`` (same parent directory), replacing an earlier
    ``final``: the earlier one is renamed aside first and removed only once the new one is in place, so a crash
    leaves either directory whole (the earlier one as ``<final>.old`` in the worst case), never a mix."""
    new, final = Path(new), Path(final)
    old = final.with_name(final.name + ".old")
    try:
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(new, final)
    except OSError as err:
        raise OutputError(f"cannot move {new} into place as {final}: {_reason(err)}") from err
    shutil.rmtree(old, ignore_errors=True)
    return final


def _reason(err: OSError) -> str:
    if err.strerror:
        return err.strerror + (f" ({err.filename})" if err.filename else "")
    return str(err) or type(err).__name__


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
