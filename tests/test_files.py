"""JSONL reading with precise errors, and atomic writes."""

import os
import stat
import threading

import pytest

from segrl.errors import UserError
from segrl.files import read_jsonl, write_text_atomic

FIELDS = {"prompt": str, "completion": str}


def write(tmp_path, text):
    path = tmp_path / "data.jsonl"
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_rows_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, '{"prompt": "a", "completion": "b", "extra": 1}\n\n{"prompt": "c", "completion": "d"}\n')
    assert read_jsonl(path, FIELDS) == [{"prompt": "a", "completion": "b", "extra": 1}, {"prompt": "c", "completion": "d"}]


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n', "line 2: not valid JSON"),
        ('{"prompt": "a", "completion": "b"}\n\n["a", "b"]\n', "line 3: expected a JSON object, got list"),
        ('{"prompt": "a"}\n', "line 1: missing field 'completion'"),
        ('{"prompt": "a", "completion": 3}\n', "line 1: field 'completion' should be str, got int"),
        ("\n\n", "holds no rows"),
    ],
)
def test_errors_name_the_line_and_field(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        read_jsonl(path, FIELDS)
    assert message in str(err.value)
    assert "line" not in message or str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_jsonl(tmp_path / "nope.jsonl", FIELDS)


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "out.html"
    write_text_atomic(path, "first")
    write_text_atomic(path, "second")
    assert path.read_text() == "second"
    assert os.listdir(path.parent) == ["out.html"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.html"
    write_text_atomic(path, "good")

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_text_atomic(path, "half-written")
    assert path.read_text() == "good"
    assert os.listdir(tmp_path) == ["out.html"]


def test_atomic_write_to_a_device_writes_through_it(tmp_path):
    """Renaming onto a device or pipe (``--html /dev/null``) would replace it with a regular file, and as root that
    succeeds; a pipe stands in for /dev/null here, which a regression must not be able to destroy."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    write_text_atomic(fifo, "through the pipe\n")
    reader.join(timeout=10)
    assert received == ["through the pipe\n"] and stat.S_ISFIFO(fifo.stat().st_mode)
