"""Checkpoints that survive a crash, and resuming a run from the last complete one (``--resume``).

transformers' ``Trainer`` writes ``checkpoint-<step>/`` (weights, optimizer, scheduler, RNG states, trainer state)
file by file, in place: a process killed while saving leaves a directory that looks like a checkpoint and is not
one. segrl adds a **completion marker**, ``segrl_checkpoint.json``, written last (after every file of the checkpoint
is on disk, fsynced), atomically. It lists every file of the checkpoint with its size, and the size of the run's
``metrics.jsonl`` at that moment. A checkpoint counts only if its marker is there, parses, names the directory's
step, and every file it lists is there with that size; anything else is skipped with a warning (sizes, not
hashes: a truncated file is what a kill leaves, and hashing gigabytes at every save would cost more than it saves).

:func:`start_run` is what a training command calls before training, on every process:

- a fresh run refuses an output directory that holds checkpoints (they belong to another run: continue it with
  ``--resume`` or choose another ``--output_dir``; mixing two runs' checkpoints would resume the wrong one), and
  starts a new ``metrics.jsonl``;
- ``--resume`` picks the newest complete checkpoint, removes the incomplete ones after it, and cuts
  ``metrics.jsonl`` back to the size it had at that checkpoint, so that the resumed run appends exactly the lines of
  the steps it redoes (no step is missing or logged twice). It also checks that the configuration is the one the
  run started with (:func:`check_same_config`). Without any complete checkpoint the run starts from the beginning.

The trainer side (marker, rotation, segrl's own trainer state) is :class:`segrl.trainers.resumable.ResumableTrainerMixin`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from segrl.errors import UserError
from segrl.files import write_text_atomic

__all__ = ["MARKER", "METRICS", "RESUME_HELP", "check_same_config", "complete_checkpoint", "mark_complete", "start_run"]

MARKER = "segrl_checkpoint.json"
METRICS = "metrics.jsonl"
MARKER_KIND = "segrl-checkpoint"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

RESUME_HELP = ("Continue the run in --output_dir from its newest complete checkpoint (one is written every "
               "--save_steps steps), with the same arguments; without a complete checkpoint, start from the beginning.")

# Fields that may differ between the run and its resumption: they do not change what is computed (a run directory
# may be moved before it is resumed).
RESUMABLE_DIFFERENCES = frozenset({"resume", "output_dir", "logging_dir", "resume_from_checkpoint",
                                   "save_total_limit"})


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """The ``checkpoint-<step>`` directories of ``output_dir``, oldest first, complete or not."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in output_dir.iterdir()
             if path.is_dir() and (m := _CHECKPOINT.match(path.name))]
    return sorted(found)


def mark_complete(folder: str | Path, step: int, metrics_path: str | Path | None) -> Path:
    """Write ``folder``'s completion marker: every file under it with its size (each fsynced first, so that the
    marker never reaches the disk before the data it vouches for), and the current size of ``metrics_path``."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MARKER:
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    metrics_bytes = None
    if metrics_path is not None and Path(metrics_path).is_file():
        metrics_bytes = Path(metrics_path).stat().st_size
    marker = {"kind": MARKER_KIND, "step": step, "files": files, "metrics_bytes": metrics_bytes}
    return write_text_atomic(folder / MARKER, json.dumps(marker, indent=1) + "\n")


def complete_checkpoint(folder: str | Path, step: int) -> tuple[dict | None, str]:
    """``(marker, "")`` if ``folder`` is a complete checkpoint of ``step``, else ``(None, why not)``."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no completion marker (cut off while it was being written)"
    except (OSError, ValueError) as err:
        return None, f"unreadable completion marker ({err})"
    if not isinstance(marker, dict) or marker.get("kind") != MARKER_KIND or marker.get("step") != step:
        return None, "completion marker of another checkpoint"
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return None, "completion marker lists no files"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return None, f"{name} is missing"
        if path.stat().st_size != size:
            return None, f"{name} has {path.stat().st_size} bytes, {size} when saved"
    return marker, ""


def start_run(output_dir: str | Path, resume: bool, resolved: dict[str, Any], main_process: bool = True
              ) -> Path | None:
    """Prepare ``output_dir`` for a run whose configuration is ``resolved`` (module docstring); return the
    checkpoint to resume from, or None for a run from the beginning, whose ``config.json`` it writes (before it
    removes an earlier ``metrics.jsonl``, so that a failed write loses nothing).

    Only the main process changes files; every process gets the same answer.
    """
    output_dir = Path(output_dir)
    if main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    found = checkpoints(output_dir)
    metrics = output_dir / METRICS
    if not resume:
        if found:
            raise UserError(
                f"{output_dir} holds checkpoints of an earlier run ({found[-1][1].name}, ...): continue it with "
                "--resume, or choose another --output_dir"
            )
        _start_fresh(output_dir, resolved, main_process)
        return None

    chosen, marker = None, None
    for step, folder in reversed(found):
        marker, why = complete_checkpoint(folder, step)
        if marker is not None:
            chosen = (step, folder)
            break
        if main_process:
            print(f"skipping {folder.name}: {why}", flush=True)
    if chosen is not None:
        check_same_config(output_dir, resolved)  # before anything is removed
    if main_process:
        for step, folder in found:  # incomplete checkpoints after the chosen one would be overwritten: remove them
            if chosen is None or step > chosen[0]:
                shutil.rmtree(folder, ignore_errors=True)
    if chosen is None:
        if main_process:
            print(f"no complete checkpoint in {output_dir}: starting from the beginning", flush=True)
        _start_fresh(output_dir, resolved, main_process)
        return None
    step, folder = chosen
    if main_process:
        _cut_metrics(metrics, marker.get("metrics_bytes"))
        print(f"resuming from {folder} (step {step})", flush=True)
    return folder


def _start_fresh(output_dir: Path, resolved: dict[str, Any], main_process: bool) -> None:
    if main_process:
        write_text_atomic(output_dir / "config.json", json.dumps(resolved, indent=2, default=str) + "\n")
        (output_dir / METRICS).unlink(missing_ok=True)


def _cut_metrics(metrics: Path, size: int | None) -> None:
    """Cut ``metrics`` back to ``size`` bytes: the lines logged after the checkpoint belong to steps that the resumed
    run does again."""
    if size is None:
        metrics.unlink(missing_ok=True)
        return
    have = metrics.stat().st_size if metrics.is_file() else 0
    if have < size:
        raise UserError(f"{metrics} has {have} bytes but had {size} at the checkpoint: it was changed or replaced "
                        "after the run; restore it, or start a new run")
    if have > size:
        with metrics.open("r+b") as handle:
            handle.truncate(size)


def check_same_config(output_dir: str | Path, resolved: dict[str, Any]) -> None:
    """Refuse to resume with a configuration other than the run's own (``config.json``): a resumed run must compute
    what the interrupted one would have. Only ``resolved``'s ``run`` and ``trainer`` sections are compared, except
    for :data:`RESUMABLE_DIFFERENCES`."""
    path = Path(output_dir) / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"cannot resume: {path} is missing or unreadable ({err})") from None
    now = json.loads(json.dumps(resolved, default=str))  # as it was written: JSON types
    differences = []
    for section in ("run", "trainer"):
        old, new = saved.get(section, {}), now.get(section, {})
        for name in sorted(set(old) | set(new)):
            if name not in RESUMABLE_DIFFERENCES and old.get(name) != new.get(name):
                differences.append(f"{name}: {old.get(name)!r} -> {new.get(name)!r}")
    if differences:
        raise UserError("cannot resume with another configuration than the run's (" + "; ".join(differences[:5])
                        + (f"; ... {len(differences) - 5} more" if len(differences) > 5 else "") + ")")
