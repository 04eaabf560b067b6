"""Rated translations -> preference pairs for ReMedy, split by source.

Tan & Monz 2025, §3.1: human ratings (DA, MQM, ESA) are noisy as absolute numbers but more reliable as comparisons
of translations of the same source, so ReMedy learns from pairs: for each source segment, two systems'
hypotheses whose human scores differ, the better one chosen. Ties are dropped; ``min_gap`` (default 0: any
difference) drops pairs closer than that too.

Readers (every error names the file, the line and the field):

- :func:`read_ratings`: a JSONL file (one object per line) or a TSV file with a header row, with the fields ``lp``
  (``src-tgt`` language codes, :func:`segrl.remedy.inputs.split_lp`), ``src``, ``mt``, ``system``, ``score`` and
  optionally ``ref`` and ``item`` (the id of the source segment; default: the language pair and source text);
- :func:`read_wmt`: the layout of WMT's metrics task (google-research mt-metrics-eval): ``sources/{lp}.txt``,
  ``references/{lp}.{ref}.txt``, one ``system-outputs/{lp}/{system}.txt`` per system, and
  ``human-scores/{lp}.seg.{scores}.score`` with ``system<TAB>score`` lines, each system's in segment order. There
  an unrated segment is written ``None``: it is skipped and counted, as mt-metrics-eval does.

A non-finite score, an empty hypothesis, an unknown language code or files of different line counts are errors,
not silent skips. :func:`split_by_source` assigns whole sources to train or test (no source in both).
"""

from __future__ import annotations

import csv
import json
import math
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass
from itertools import combinations
from pathlib import Path

from segrl.errors import UserError
from segrl.remedy.inputs import split_lp

__all__ = ["Rating", "make_pairs", "ratings_from_rows", "read_lines", "read_ratings", "read_wmt", "split_by_source"]

REQUIRED = ("lp", "src", "mt", "system", "score")


@dataclass(frozen=True)
class Rating:
    """One human-rated translation: ``item`` identifies its source segment (the unit of pairing and grouping)."""

    lp: str
    src: str
    mt: str
    system: str
    score: float
    ref: str | None = None
    item: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _rating(fields: dict, where: str) -> Rating:
    missing = [k for k in REQUIRED if fields.get(k) is None]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)} (need {', '.join(REQUIRED)}; ref, item "
                        "optional)")
    for key in ("lp", "src", "mt", "system"):
        if not isinstance(fields[key], str):
            raise UserError(f"{where}: field {key!r} must be text, got {type(fields[key]).__name__}")
    split_lp(fields["lp"], where)
    if not fields["mt"].strip():
        raise UserError(f"{where}: empty hypothesis (field 'mt')")
    try:
        score = float(fields["score"])
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float range (1e400 in JSON)
        raise UserError(f"{where}: field 'score' must be a number, got {fields['score']!r:.40}") from None
    if isinstance(fields["score"], bool) or not math.isfinite(score):
        raise UserError(f"{where}: field 'score' must be a finite number, got {fields['score']!r}")
    ref = fields.get("ref")
    if ref is not None and not isinstance(ref, str):
        raise UserError(f"{where}: field 'ref' must be text, got {type(ref).__name__}")
    item = fields.get("item")
    item = f"{fields['lp']}/{fields['src']}" if item is None or item == "" else str(item)
    return Rating(fields["lp"], fields["src"], fields["mt"], fields["system"], score, ref or None, item)


def ratings_from_rows(rows: list[dict], source: str) -> list[Rating]:
    """Ratings from dicts with the fields of :func:`read_ratings` (extra keys ignored); errors name ``source`` and
    the row (from 1)."""
    ratings = [_rating(row, f"{source} row {i}") for i, row in enumerate(rows, start=1)]
    if not ratings:
        raise UserError(f"{source}: no ratings")
    return ratings


def read_ratings(path: str | Path) -> list[Rating]:
    """Rated translations from a ``.jsonl`` or ``.tsv`` file (module docstring)."""
    path = Path(path)
    text = _read_text(path, "ratings")
    ratings = []
    # Lines end at "\n" (and "\r\n") only: str.splitlines would also cut at U+2028, U+0085, \x1c, ..., which JSON
    # and TSV fields may hold as text.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    if path.suffix == ".tsv":
        reader = csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
        if not reader.fieldnames or any(k not in reader.fieldnames for k in REQUIRED):
            raise UserError(f"{path}:1: the header must name the columns {', '.join(REQUIRED)} (ref, item optional), "
                            f"got {reader.fieldnames}")
        try:
            for number, row in enumerate(reader, start=2):
                if None in row:
                    raise UserError(f"{path}:{number}: more fields than the header names")
                ratings.append(_rating(row, f"{path}:{number}"))
        except csv.Error as err:  # e.g. a lone carriage return inside a field
            raise UserError(f"{path}:{reader.line_num}: not a valid TSV line ({err})") from None
    else:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            except (ValueError, RecursionError) as err:  # an integer of over 4300 digits; nesting too deep
                raise UserError(f"{path}:{number}: not valid JSON ({str(err).splitlines()[0]})") from None
            if not isinstance(row, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            ratings.append(_rating(row, f"{path}:{number}"))
    if not ratings:
        raise UserError(f"{path}: no ratings in the file")
    return ratings


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path``; an unreadable file, or a byte that is not UTF-8 (named by its line), is a
    :class:`UserError`."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the {what} ({err.strerror or err})") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x}); cannot read the {what}") from None


def read_lines(path: str | Path, what: str) -> list[str]:
    """The lines of a text file (a final newline ends the last line; a last line without one is kept); an
    unreadable or empty file is a :class:`UserError` naming it as the ``what`` file."""
    text = _read_text(Path(path), f"{what} file")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        raise UserError(f"{path}: the {what} file is empty")
    return lines


def read_wmt(root: str | Path, lp: str, ref: str = "refA", scores: str = "mqm") -> tuple[list[Rating], int]:
    """Rated translations of language pair ``lp`` from an mt-metrics-eval directory (module docstring).

    Returns the ratings and the number of unrated (``None``) segments skipped.
    """
    root = Path(root)
    split_lp(lp, str(root))
    sources = read_lines(root / "sources" / f"{lp}.txt", "source")
    ref_path = root / "references" / f"{lp}.{ref}.txt"
    references = read_lines(ref_path, "reference") if ref_path.is_file() else None
    if references is not None and len(references) != len(sources):
        raise UserError(f"{ref_path}: {len(references)} lines, but {root / 'sources' / f'{lp}.txt'} has "
                        f"{len(sources)}")
    score_path = root / "human-scores" / f"{lp}.seg.{scores}.score"
    by_system: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for number, line in enumerate(read_lines(score_path, "human score"), start=1):
        parts = line.split("\t")
        if len(parts) != 2:
            raise UserError(f"{score_path}:{number}: expected 'system<TAB>score', got {line[:60]!r}")
        if parts[0] in ("", ".", "..") or Path(parts[0]).name != parts[0] or "\\" in parts[0] or "\0" in parts[0]:
            # the name picks the file system-outputs/{lp}/{system}.txt: it must stay a plain name in that directory
            raise UserError(f"{score_path}:{number}: system name {parts[0][:60]!r} is not a plain file name "
                            "(no '/', '\\', '..')")
        by_system[parts[0]].append((number, parts[1]))
    ratings, unrated = [], 0
    for system, values in sorted(by_system.items()):
        out_path = root / "system-outputs" / lp / f"{system}.txt"
        if not out_path.is_file():
            raise UserError(f"{score_path}: system {system!r} has scores but no output file {out_path}")
        outputs = read_lines(out_path, "system output")
        if not len(outputs) == len(values) == len(sources):
            raise UserError(f"{out_path}: {len(outputs)} lines and {len(values)} scores in {score_path}, but the "
                            f"sources have {len(sources)} lines")
        for index, ((number, value), hypothesis) in enumerate(zip(values, outputs)):
            if value.strip() == "None":
                unrated += 1
                continue
            fields = {"lp": lp, "src": sources[index], "mt": hypothesis, "system": system, "score": value,
                      "ref": references[index] if references else None, "item": f"{lp}/{index}"}
            ratings.append(_rating(fields, f"{score_path}:{number} ({out_path.name} line {index + 1})"))
    if not ratings:
        raise UserError(f"{score_path}: no rated segments")
    return ratings, unrated


def make_pairs(ratings: list[Rating], min_gap: float = 0.0) -> tuple[list[dict], dict[str, int]]:
    """Preference pairs from ratings: within each item, every two systems whose scores differ by more than 0 and
    by at least ``min_gap``; the higher-rated hypothesis is ``chosen``.

    Returns the pairs (dicts: ``lp``, ``item``, ``src``, ``ref``, ``chosen``, ``rejected``, ``chosen_system``,
    ``rejected_system``, ``gap``) and counts (``pairs``, ``ties``, ``below_min_gap``, ``items``). No pair at all is
    a :class:`UserError`.
    """
    if min_gap < 0 or not math.isfinite(min_gap):
        raise UserError(f"min_gap must be a finite number >= 0, got {min_gap}")
    by_item: dict[str, list[Rating]] = defaultdict(list)
    for rating in ratings:
        by_item[rating.item].append(rating)
    pairs, counts = [], {"pairs": 0, "ties": 0, "below_min_gap": 0, "items": len(by_item)}
    for item, group in by_item.items():
        for a, b in combinations(group, 2):
            gap = abs(a.score - b.score)
            if gap == 0:
                counts["ties"] += 1
                continue
            if gap < min_gap:
                counts["below_min_gap"] += 1
                continue
            chosen, rejected = (a, b) if a.score > b.score else (b, a)
            pairs.append({"lp": a.lp, "item": item, "src": a.src, "ref": a.ref, "chosen": chosen.mt,
                          "rejected": rejected.mt, "chosen_system": chosen.system,
                          "rejected_system": rejected.system, "gap": gap})
    counts["pairs"] = len(pairs)
    if not pairs:
        raise UserError(f"no preference pairs: {counts['items']} source item(s), {counts['ties']} tie(s), "
                        f"{counts['below_min_gap']} pair(s) below min_gap {min_gap}; every item needs two systems "
                        "with different scores")
    return pairs, counts


def split_by_source(ratings: list[Rating], test_fraction: float = 0.1, seed: int = 0
                    ) -> tuple[list[Rating], list[Rating]]:
    """(train, test): a source (its ``lp`` and ``src`` text) is in test when a CRC32 of ``seed/lp/src`` falls in the
    first ``test_fraction`` of 10,000 buckets, so a source never appears in both, whatever its item ids."""
    if not 0 <= test_fraction < 1:
        raise UserError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    train, test = [], []
    for rating in ratings:
        bucket = zlib.crc32(f"{seed}/{rating.lp}/{rating.src}".encode()) % 10_000
        (test if bucket < test_fraction * 10_000 else train).append(rating)
    return train, test
