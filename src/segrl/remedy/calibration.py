"""Entropy-guided sigmoid calibration of ReMedy scores (Tan & Monz 2025, arXiv 2504.13630, EMNLP 2025).

ReMedy is trained as a pairwise (Bradley–Terry) reward model, so its raw scalar r is meaningful only up to shift and
scale: comparisons are fine, absolute values are not. The paper reports three scores per segment: the raw r, the
plain sigmoid σ(r), and a *calibrated* score::

    c = σ(r / T),    T* = argmax_{T ∈ grid} H(hist_B(σ(r_1 / T), …, σ(r_n / T))),
    H(h) = -Σ_b (h_b / n) ln(h_b / n),

where hist_B counts the n values in B = 20 equal bins of [0, 1]. The temperature that spreads the sigmoid outputs
most evenly over [0, 1] wins: T too small pushes every score to 0 or 1, T too large squeezes them all round 0.5.
T is fitted once on all scores (global) and, optionally, once per language pair (:func:`fit_calibration`). A system
score is the mean of its segment scores (computed by the caller).

Defaults and conventions:

- Bins: ``DEFAULT_BINS = 20`` equal bins on [0, 1], each [k/B, (k+1)/B) except the last, which also holds 1.0: the
  bins of ``np.histogram(p, bins=B, range=(0, 1))``, reproduced exactly (edge handling included) by
  :func:`histogram_entropy`.
- Entropy in nats (natural log). Base 2 would only scale every value by 1/ln 2 and pick the same T. Empty bins
  contribute 0. The sum runs over the *sorted* bin counts, so the entropy depends only on the multiset of counts
  and two histograms with the same counts give bit-identical entropies (ties are real ties, see below).
- Grid (:data:`DEFAULT_GRID`): 201 temperatures log-spaced from 0.01 to 100, 50 per decade (a step of ×1.047,
  i.e. T is resolved to about ±2.3 %), built as 10 ** (k / 50) for k = -100..100 so that 0.01, 0.1, 1, 10 and 100
  are exact. Log spacing because T acts as a scale; the range covers raw-score spreads from about 0.01 to 100
  (a reward model's scores are rarely outside it; a T at either end of the grid is a sign to widen it).
- Ties: the smallest T among those of maximal entropy (the grid is sorted first; deterministic). Ties are common on
  small or discrete data: moving T a little moves no value across a bin edge, so a whole run of neighbouring grid
  values shares the maximal histogram. Picking the smallest is the sharpest calibration among equally spread ones.
  Constant scores (every r equal) give one filled bin for most T: entropy 0, the smallest grid T wins.
- Per language pair: a pair with at least ``min_per_lp`` (default 50) scores gets its own T; the others use the
  global T, which is always fitted on all scores (every pair pooled).
- :func:`sigmoid` is the numerically stable form (exp of -|x| only), so |r / T| up to 1e308 (and ±inf) gives 0 or 1
  without overflow warnings.

Deviations and unknowns: the brief we implement says the released ReMedy code's grid is unknown to us, and the
paper only names the criterion. An unattributed public script with the release's output layout (``*.seg.score`` /
``*.sys.score`` per language pair, a ``--per_lp_temp`` flag) picks a short *linear* grid inside [0.15, 1.9] from
heuristics on the score distribution (peaks of a KDE, share of scores above 4 or 5), takes log2 entropy of
``np.histogram(..., bins=20, range=(0, 1))`` with a 1e-10 smoothing term, keeps the first maximum in grid order
(the smallest T on ties, as here) and fits a language pair on 10 or more scores. We do not know that this script
produced the paper's numbers, so we use one wide, fixed, documented grid instead of the heuristic ranges; the
argmax over a shared grid is the same in log2 or nats, and the 1e-10 term cannot change it except by breaking
exact ties.

Files: :meth:`Calibration.save` writes ``{"kind": "remedy_calibration", "global_temperature": T,
"per_lp": {"en-de": T, ...}}`` atomically (:func:`segrl.files.write_text_atomic`); :meth:`Calibration.load` reads
it back and raises :class:`segrl.errors.UserError` naming the file and the field on any problem.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segrl.errors import UserError
from segrl.files import read_kind_json, write_text_atomic

__all__ = [
    "Calibration",
    "DEFAULT_BINS",
    "DEFAULT_GRID",
    "DEFAULT_MIN_PER_LP",
    "FILE_KIND",
    "fit_calibration",
    "fit_temperature",
    "histogram_entropy",
    "sigmoid",
]

DEFAULT_BINS = 20  # the paper's histogram: 20 equal bins on [0, 1]
DEFAULT_GRID: tuple[float, ...] = tuple(10.0 ** (k / 50) for k in range(-100, 101))  # 0.01 .. 100, 1.0 exact
DEFAULT_MIN_PER_LP = 50  # fewest scores for a language pair to get its own temperature
FILE_KIND = "remedy_calibration"


# ------------------------------------------------------------------------------------------------ primitives


def sigmoid(x) -> np.ndarray:
    """Numerically stable logistic function 1 / (1 + e^-x), elementwise, float64; ±inf → 1 / 0, NaN stays NaN."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        e = np.exp(-np.abs(x))  # in [0, 1]: never overflows
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_bins(bins) -> int:
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
        raise UserError(f"bins must be a positive integer, got {bins!r}")
    return int(bins)


def _bin_counts(probabilities: np.ndarray, bins: int) -> np.ndarray:
    """Counts of ``np.histogram(probabilities, bins, range=(0, 1))`` for values known to lie in [0, 1]."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.minimum((probabilities * bins).astype(np.int64), bins - 1)
    # np.histogram's own fix-up: the float product can land one bin off right next to an edge
    index -= probabilities < edges[index]
    index += (probabilities >= edges[index + 1]) & (index != bins - 1)
    return np.bincount(index, minlength=bins)


def _entropy_of_counts(counts: np.ndarray) -> float:
    """-Σ p ln p over the non-empty bins, p = count / n, summed over sorted counts (order-independent)."""
    counts = np.sort(counts[counts > 0])
    p = counts / counts.sum()
    return float(-np.sum(p * np.log(p)))


def histogram_entropy(probabilities, bins: int = DEFAULT_BINS) -> float:
    """Shannon entropy, in nats (natural log), of the ``bins``-bin histogram of values in [0, 1].

    Bins are [k/B, (k+1)/B), the last one closed (1.0 falls in it), as ``np.histogram(..., range=(0, 1))``;
    frequencies are counts / n. Ranges from 0 (all values in one bin) to ln B (every bin equally full).

    Raises:
        UserError: no values, a value that is NaN or outside [0, 1], or ``bins`` not a positive integer.
    """
    bins = _check_bins(bins)
    values = _as_1d(probabilities, "probabilities")
    if values.size == 0:
        raise UserError("probabilities: need at least one value")
    bad = ~((values >= 0.0) & (values <= 1.0))  # NaN fails both comparisons
    if bad.any():
        raise UserError(
            f"probabilities: {int(bad.sum())} of {values.size} values are outside [0, 1] or NaN "
            f"(first: {values[bad][0]!r})"
        )
    return _entropy_of_counts(_bin_counts(values, bins))


def _as_1d(values, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{name}: expected numbers ({err})") from None
    if array.ndim != 1:
        raise UserError(f"{name} must be a 1-D sequence of numbers, got shape {array.shape}")
    return array


def _finite_scores(scores, name: str = "scores") -> np.ndarray:
    array = _as_1d(scores, name)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise UserError(f"{name}: {bad} of {array.size} values are NaN or infinite")
    return array


def _check_grid(grid) -> np.ndarray:
    """The grid as a sorted float64 array of distinct positive finite temperatures."""
    array = _as_1d(grid, "grid")
    if array.size == 0:
        raise UserError("grid: need at least one temperature")
    if not (np.isfinite(array) & (array > 0)).all():
        bad = array[~(np.isfinite(array) & (array > 0))]
        raise UserError(f"grid: temperatures must be positive and finite, got {bad[:5].tolist()}")
    return np.unique(array)


def _scaled(scores: np.ndarray, temperature) -> np.ndarray:
    with np.errstate(over="ignore", under="ignore"):  # r / T beyond float range is ±inf, which sigmoid maps to 1 / 0
        return scores / temperature


# ------------------------------------------------------------------------------------------------ fitting


def fit_temperature(scores, grid=DEFAULT_GRID, bins: int = DEFAULT_BINS) -> float:
    """The T in ``grid`` maximising :func:`histogram_entropy` of sigmoid(scores / T); ties → the smallest T.

    Args:
        scores: raw metric scores, 1-D, at least 2, all finite.
        grid: candidate temperatures, positive and finite, any order (sorted and de-duplicated here).
        bins: histogram bins on [0, 1].

    Raises:
        UserError: fewer than 2 scores, a NaN or infinite score, a bad grid or bins.
    """
    bins = _check_bins(bins)
    temperatures = _check_grid(grid)
    values = _finite_scores(scores)
    if values.size < 2:
        raise UserError(f"scores: need at least 2 scores to fit a temperature, got {values.size}")
    entropies = np.array([_entropy_of_counts(_bin_counts(sigmoid(_scaled(values, t)), bins)) for t in temperatures])
    return float(temperatures[int(np.argmax(entropies))])  # argmax keeps the first (smallest T) of equal maxima


def _check_lps(lps, n: int) -> list[str]:
    if isinstance(lps, str):
        raise UserError("lps must be a sequence of language-pair strings (one per score), got a single string")
    try:
        lps = list(lps)
    except TypeError:
        raise UserError(f"lps must be a sequence of language-pair strings, got {type(lps).__name__}") from None
    if len(lps) != n:
        raise UserError(f"lps has {len(lps)} entries but there are {n} scores: give one language pair per score")
    for i, lp in enumerate(lps):
        if not isinstance(lp, str):
            raise UserError(f"lps[{i}]: expected a language-pair string, got {type(lp).__name__} {lp!r}")
    return lps


def fit_calibration(
    scores,
    lps: Sequence[str] | None = None,
    per_lp: bool = False,
    grid=DEFAULT_GRID,
    min_per_lp: int = DEFAULT_MIN_PER_LP,
    bins: int = DEFAULT_BINS,
) -> Calibration:
    """Fit the global temperature on all scores and, with ``per_lp``, one per language pair with enough scores.

    Args:
        scores: raw scores, 1-D, at least 2, all finite.
        lps: the language pair of each score (same length); required when ``per_lp``.
        per_lp: also fit a temperature for each language pair holding at least ``min_per_lp`` scores; the other
            pairs are left out of :attr:`Calibration.per_lp` and fall back to the global temperature.
        grid, bins: as in :func:`fit_temperature`.
        min_per_lp: fewest scores for a pair of its own (at least 2).

    Raises:
        UserError: bad scores, grid or bins; ``per_lp`` without ``lps``; ``lps`` of the wrong length or type;
        ``min_per_lp`` below 2.
    """
    values = _finite_scores(scores)
    if lps is not None:
        lps = _check_lps(lps, values.size)
    if per_lp and lps is None:
        raise UserError("per_lp=True needs lps: the language pair of each score")
    if isinstance(min_per_lp, bool) or not isinstance(min_per_lp, (int, np.integer)) or min_per_lp < 2:
        raise UserError(f"min_per_lp must be an integer >= 2, got {min_per_lp!r}")
    global_temperature = fit_temperature(values, grid=grid, bins=bins)
    temperatures: dict[str, float] = {}
    if per_lp:
        labels = np.asarray(lps, dtype=object)
        for lp in sorted(set(lps)):
            mine = values[labels == lp]
            if mine.size >= min_per_lp:
                temperatures[lp] = fit_temperature(mine, grid=grid, bins=bins)
    return Calibration(global_temperature=global_temperature, per_lp=temperatures)


# ------------------------------------------------------------------------------------------------ calibration


def _check_temperature(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UserError(f"{where} should be a positive finite number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{where} should be a positive finite number, got {value!r}")
    return value


@dataclass(frozen=True)
class Calibration:
    """Fitted temperatures: c = sigmoid(r / T), T per language pair when known, else the global one.

    Attributes:
        global_temperature: T fitted on all scores.
        per_lp: language pair → its own T (only pairs that had enough scores; may be empty).
    """

    global_temperature: float
    per_lp: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        global_temperature = _check_temperature(self.global_temperature, "global_temperature")
        object.__setattr__(self, "global_temperature", global_temperature)
        if not isinstance(self.per_lp, dict):
            raise UserError(
                f"per_lp should be a mapping of language pair to temperature, got {type(self.per_lp).__name__}"
            )
        checked = {}
        for lp, value in self.per_lp.items():
            if not isinstance(lp, str):
                raise UserError(f"per_lp: language pair keys must be strings, got {lp!r}")
            checked[lp] = _check_temperature(value, f"per_lp[{lp!r}]")
        object.__setattr__(self, "per_lp", checked)

    def temperature(self, lp: str | None = None) -> float:
        """T for language pair ``lp``: its own if fitted, else the global one (also for ``lp=None``)."""
        if lp is None:
            return self.global_temperature
        return self.per_lp.get(lp, self.global_temperature)

    def apply(self, scores, lps: Sequence[str] | None = None) -> np.ndarray:
        """Calibrated scores sigmoid(r / T), float64, one per score; T of each row from its language pair.

        Args:
            scores: raw scores, 1-D. NaN stays NaN and ±inf gives 1 / 0 (no check: applying never fails on data).
            lps: the language pair of each score (same length), or None for the global T everywhere.

        Raises:
            UserError: scores not 1-D numbers, ``lps`` of the wrong length or type.
        """
        values = _as_1d(scores, "scores")
        if lps is None:
            temperatures = self.global_temperature
        else:
            temperatures = np.array([self.temperature(lp) for lp in _check_lps(lps, values.size)], dtype=np.float64)
        return sigmoid(_scaled(values, temperatures))

    # ------------------------------------------------------------------------------------------ files

    def to_dict(self) -> dict:
        return {"kind": FILE_KIND, "global_temperature": self.global_temperature, "per_lp": dict(self.per_lp)}

    def to_json(self) -> str:
        """The file contents: a JSON object with ``kind``, ``global_temperature`` and ``per_lp``."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (parent directories created); returns the path."""
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a file written by :meth:`save`.

        Raises:
            UserError: missing file, not JSON, not an object, wrong ``kind``, a missing field, or a temperature
            that is not a positive finite number (the message names the file and the field).
        """
        path, data = read_kind_json(path, "calibration", (FILE_KIND,))
        for name in ("global_temperature", "per_lp"):
            if name not in data:
                raise UserError(f"{path}: missing field '{name}'")
        if not isinstance(data["per_lp"], dict):
            raise UserError(f"{path}: field 'per_lp' should be an object (language pair → temperature)")
        try:
            return cls(global_temperature=data["global_temperature"], per_lp=data["per_lp"])
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
