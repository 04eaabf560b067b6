"""Meta-evaluation of MT metrics, WMT metrics-task protocol: Kendall τ, pairwise accuracy with tie calibration
(acc-eq), system-level pairwise accuracy and soft pairwise accuracy (SPA).

Used to meta-evaluate ReMedy (Tan & Monz 2025, "ReMedy: Learning Machine Translation Evaluation from Human
Preferences with Reward Modeling", arXiv 2504.13630), which reports the WMT22-24 MQM meta-evaluation of Google's
mt-metrics-eval (github.com/google-research/mt-metrics-eval). Pure functions over plain sequences / numpy arrays.

**Segment-level inputs.** ``metric`` and ``human`` are float sequences of one length N (one entry per hypothesis);
``items`` (length N) holds hashable group ids, the source segment each hypothesis translates. Pairs are formed only
between hypotheses of the same item (WMT's "group by item"); within an item, a pair (a, b) takes a before b in input
order, Δm = metric[a] - metric[b] and Δh = human[a] - human[b]. NaN in ``human`` marks an unrated hypothesis: it is
left out, and results count those entries (``num_unrated``). A metric must score everything: NaN (or ±inf) in
``metric`` raises :class:`segrl.errors.UserError`, as do mismatched lengths.

**Pair classes** (:func:`pair_counts`; the sufficient statistics of Deutsch et al. 2023, "Ties Matter:
Meta-Evaluating Modern Metrics with Pairwise Accuracy and Tie Calibration", EMNLP, arXiv 2305.14324). A human tie is
exact equality, Δh = 0; a metric tie is |Δm| <= ε for a threshold ε >= 0 (ε = 0: exact equality)::

    C    concordant      no tie on either side, sign(Δm) == sign(Δh)
    D    discordant      no tie on either side, sign(Δm) != sign(Δh)
    T_h  human tie only, T_m  metric tie only, T_hm  tie on both sides.

**acc-eq** (:func:`acc_eq`, Deutsch et al. 2023, eq. "acc_eq")::

    acc_eq = (C + T_hm) / (C + D + T_h + T_m + T_hm)

computed **per item and averaged over the items that have at least one rated pair**: this is mt-metrics-eval's
``average_by="item"``, the segment-level acc-eq of the WMT23 and WMT24 metrics tasks (Deutsch et al. 2023 also
define a flat version that pools every pair of the test set; pass a single item id for all hypotheses to get it, but
then pairs cross sources, which WMT does not do). Each item weighs the same whatever its number of pairs.

**Tie calibration** (:func:`tie_calibrated_acc_eq`; Deutsch et al. 2023 §5, mt-metrics-eval's
``tau_optimization.tau_optimization`` with ``acc_23``): try ε ∈ {0} ∪ {every distinct |Δm| over the within-item
pairs}, return the best acc-eq and its ε; equal bests go to the smallest ε (the reference's ``np.nanargmax`` over
ascending thresholds does the same). Because every item's number of pairs n_g is fixed, the item-averaged acc-eq is
a weighted sum over pairs, w_p = 1 / (G · n_g(p)) with G the number of items::

    acc_eq(ε) = Σ_{p: Δh_p = 0, |Δm_p| <= ε} w_p  +  Σ_{p: concordant, |Δm_p| > ε} w_p

so after one sort of |Δm| two cumulative sums give it for every candidate at once (O(P log P) for P pairs).

**Kendall τ** (:func:`kendall_tau`, reference values only): with n0 = n(n-1)/2 pairs, n1 / n2 the pairs tied in x /
in y (ties on both sides included), m = min(#distinct x, #distinct y)::

    τ_b = (C - D) / sqrt((n0 - n1)(n0 - n2)),        τ_c = 2 (C - D) / (n² (m - 1) / m)

equal to ``scipy.stats.kendalltau(x, y, variant="b" | "c").statistic``, NaN where undefined (x or y constant, or
n < 2), as scipy. :func:`grouped_kendall_tau` averages the per-item τ over items with >= 2 rated hypotheses and a
defined τ (mt-metrics-eval's item grouping).

**System level.** :func:`system_scores`: a system's score is the mean of its segment scores (NaN ignored).
:func:`system_pairwise_accuracy` (Kocmi et al. 2021, "To Ship or Not to Ship: An Extensive Evaluation of Automatic
Metrics for Machine Translation", WMT): over all pairs of systems, the fraction with sign(Δmetric) == sign(Δhuman).
:func:`soft_pairwise_accuracy` (Thompson et al. 2024, "Improving Statistical Significance in Human Evaluation of
Automatic Metrics via Soft Pairwise Accuracy", WMT; WMT24's SPA; reference: mt-metrics-eval ``pce.py``): for every
pair of systems (i, j), p-values p_h(i, j) and p_m(i, j) of "i is better than j" from a one-sided paired permutation
test over the items both systems have, with d_k = s_i,k - s_j,k::

    p = (1 + #{σ : Σ_k σ_k d_k >= Σ_k d_k}) / (1 + K),     σ_k = ±1 with probability 1/2, K permutations
    SPA = mean over pairs (i, j) of (1 - |p_h(i, j) - p_m(i, j)|).

Matches with, and deviations from, mt-metrics-eval:

- acc-eq, ties and ε candidates match ``tau_optimization`` (``acc_23``, ``average_by="item"``). Equal bests are
  judged up to an absolute tolerance of 1e-12 (the cumulative sums round), so float noise cannot pick a larger ε
  over a truly equal smaller one; the returned accuracy is then recomputed with :func:`acc_eq` at that ε, so it is
  exactly what :func:`acc_eq` gives. ``max_candidates`` (ours) thins the candidate set to that many evenly spaced
  quantiles of the distinct |Δm| (deterministic), where the reference instead offers random pair sampling.
- Human ties at system level: a pair of systems with equal human scores counts as agreement only if the metric
  ties them too (sign(0) == sign(0)); a metric tie on a human-ordered pair is a disagreement. Kocmi et al. do not
  discuss ties; this is the literal sign-equality formula.
- SPA p-values: the reference (``pce.compute_pairwise_p_values``) uses #{...} / K; we use the add-one estimator
  (1 + #) / (1 + K), a valid p-value that is never 0 (they differ by at most 1 / K). The reference needs every
  system scored on the same segments; we test each pair on the items both systems have with a human rating (NaN =
  unrated), for human and metric alike (the reference likewise drops gold-unrated segments from both). One matrix
  of random signs, one column per item, from ``numpy.random.default_rng(seed)``, serves every pair and both human
  and metric (the reference draws one matrix per call with a fixed seed, so its human and metric calls share it
  too); default seed 0 (the reference's is 4). Float64 throughout (the reference uses float32), and a permuted sum
  counts as >= the observed one within 1e-10 · Σ|d_k| so that rounding cannot drop the identity-like permutations.
  Pairs of systems are taken in order of first appearance in ``systems``: (i, j) with i first, "i better than j".
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segrl.errors import UserError

__all__ = [
    "AccEqResult",
    "GroupedTauResult",
    "PairCounts",
    "SPAResult",
    "acc_eq",
    "grouped_kendall_tau",
    "kendall_tau",
    "pair_counts",
    "permutation_p_values",
    "soft_pairwise_accuracy",
    "system_pairwise_accuracy",
    "system_scores",
    "tie_calibrated_acc_eq",
]

TIE_TOLERANCE = 1e-12  # absolute: acc-eq values this close count as equal when choosing ε
PERMUTATION_RTOL = 1e-10  # relative to Σ|d|: a permuted sum this close to the observed one counts as >=
_BLOCK = 1 << 22  # entries per block in the O(n²) sign products and in the permutation matmuls


# ------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PairCounts:
    """Sufficient statistics of a set of pairs (Deutsch et al. 2023).

    Attributes:
        concordant: C, no tie on either side and the same order.
        discordant: D, no tie on either side and opposite orders.
        ties_human: T_h, human tie only.
        ties_metric: T_m, metric tie only (|Δm| <= ε).
        ties_both: T_hm, tie on both sides.
    """

    concordant: int = 0
    discordant: int = 0
    ties_human: int = 0
    ties_metric: int = 0
    ties_both: int = 0

    @property
    def total(self) -> int:
        """Number of pairs, C + D + T_h + T_m + T_hm."""
        return self.concordant + self.discordant + self.ties_human + self.ties_metric + self.ties_both

    @property
    def acc_eq(self) -> float:
        """(C + T_hm) / total; NaN when there are no pairs."""
        return (self.concordant + self.ties_both) / self.total if self.total else math.nan

    def __add__(self, other: PairCounts) -> PairCounts:
        return PairCounts(
            self.concordant + other.concordant,
            self.discordant + other.discordant,
            self.ties_human + other.ties_human,
            self.ties_metric + other.ties_metric,
            self.ties_both + other.ties_both,
        )


@dataclass(frozen=True)
class AccEqResult:
    """Segment-level acc-eq, averaged over items.

    Attributes:
        accuracy: mean over items of the item's (C + T_hm) / pairs.
        epsilon: the metric-tie threshold used (the chosen one for :func:`tie_calibrated_acc_eq`).
        num_items: items with at least one rated pair (the items averaged).
        num_pairs: within-item pairs of rated hypotheses.
        num_unrated: hypotheses left out for a NaN human score.
        counts: the pair classes summed over all items, at ``epsilon``.
        num_candidates: ε values tried (1 for :func:`acc_eq`).
    """

    accuracy: float
    epsilon: float
    num_items: int
    num_pairs: int
    num_unrated: int
    counts: PairCounts
    num_candidates: int = 1


@dataclass(frozen=True)
class GroupedTauResult:
    """Kendall τ averaged over items.

    Attributes:
        tau: mean of the per-item τ over the items used.
        variant: ``"b"`` or ``"c"``.
        num_items: items averaged (>= 2 rated hypotheses and a defined τ).
        num_skipped: items left out (fewer than 2 rated hypotheses, or constant scores so that τ is undefined).
        num_unrated: hypotheses left out for a NaN human score.
    """

    tau: float
    variant: str
    num_items: int
    num_skipped: int
    num_unrated: int


@dataclass(frozen=True)
class SPAResult:
    """Soft pairwise accuracy and its p-values.

    Attributes:
        spa: mean over the tested system pairs of 1 - |p_h - p_m|.
        systems: system ids in order of first appearance; row / column order of the matrices.
        p_human: (S, S) float64; entry [i, j], i < j, is the p-value of "system i is better than system j" from the
            human scores; NaN on and below the diagonal and for pairs with no common rated item.
        p_metric: (S, S) float64, the same from the metric scores.
        num_pairs: system pairs tested (those with at least one common rated item).
        num_unrated: entries left out for a NaN human score.
        num_permutations: K.
    """

    spa: float
    systems: list[Hashable]
    p_human: np.ndarray = field(repr=False)
    p_metric: np.ndarray = field(repr=False)
    num_pairs: int
    num_unrated: int
    num_permutations: int


# ------------------------------------------------------------------------------------------------- validation


def _float_vector(values: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise UserError(f"{name} must be a sequence of numbers: {err}") from None
    if array.ndim != 1:
        raise UserError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _same_length(**arrays: Sequence[Any]) -> int:
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} has {length}" for name, length in lengths.items())
        raise UserError(f"scores must have one entry per hypothesis, but the lengths differ: {listed}")
    return next(iter(lengths.values()))


def _codes(ids: Any, name: str) -> tuple[np.ndarray, list[Hashable]]:
    """Integer codes of hashable ids in order of first appearance, and the ids themselves."""
    mapping: dict[Hashable, int] = {}
    try:
        codes = [mapping.setdefault(key, len(mapping)) for key in ids]
    except TypeError as err:
        raise UserError(f"{name} must hold hashable ids (a string or a number per entry): {err}") from None
    return np.asarray(codes, dtype=np.int64), list(mapping)


def _check_metric(
    metric: np.ndarray, name: str = "metric", why: str = "a metric must score every hypothesis"
) -> None:
    bad = ~np.isfinite(metric)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{name} has {int(bad.sum())} non-finite value(s) (first at index {first}: {metric[first]}); {why}"
        )


def _check_human(human: np.ndarray, name: str = "human") -> None:
    bad = np.isinf(human)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise UserError(f"{name} has an infinite score at index {first}; use NaN for an unrated hypothesis")


def _segment_inputs(metric: Any, human: Any, items: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, list, int]:
    """Validated (metric, human, item codes, item ids, number of unrated) for the segment-level functions."""
    items = list(items) if not isinstance(items, np.ndarray) else items
    m = _float_vector(metric, "metric")
    h = _float_vector(human, "human")
    _same_length(metric=m, human=h, items=items)
    _check_metric(m)
    _check_human(h)
    codes, keys = _codes(items, "items")
    return m, h, codes, keys, int(np.isnan(h).sum())


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _check_epsilon(epsilon: float) -> float:
    try:
        epsilon = float(epsilon)
    except (TypeError, ValueError):
        raise UserError(f"epsilon must be a number >= 0, got {epsilon!r}") from None
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise UserError(f"epsilon must be a finite number >= 0, got {epsilon}")
    return epsilon


# ------------------------------------------------------------------------------------------------- Kendall tau


def _tied_pairs(values: np.ndarray) -> int:
    _, counts = np.unique(values, return_counts=True)
    return int((counts * (counts - 1) // 2).sum())


def _concordance(x: np.ndarray, y: np.ndarray) -> int:
    """C - D = Σ_{i<j} sign(x_i - x_j) sign(y_i - y_j), in row blocks of the n × n sign products."""
    n = len(x)
    rows = max(1, _BLOCK // max(n, 1))
    total = 0
    for start in range(0, n, rows):
        sx = np.sign(x[start : start + rows, None] - x[None, :]).astype(np.int8)
        sy = np.sign(y[start : start + rows, None] - y[None, :]).astype(np.int8)
        total += int(np.einsum("ij,ij->", sx, sy, dtype=np.int64))
    return total // 2  # every unordered pair counted twice, the diagonal is 0


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, variant: str = "b") -> float:
    """Kendall τ_b or τ_c between two score vectors, with ties.

    Args:
        x, y: (n,) finite floats.
        variant: ``"b"`` or ``"c"``.

    Returns:
        τ as a float, equal to ``scipy.stats.kendalltau(x, y, variant=variant).statistic``; NaN where τ is undefined
        (n < 2, or x or y constant). O(n²) time, memory bounded by blocks.
    """
    if variant not in ("b", "c"):
        raise UserError(f'variant must be "b" or "c", got {variant!r}')
    xs = _float_vector(x, "x")
    ys = _float_vector(y, "y")
    n = _same_length(x=xs, y=ys)
    _check_metric(xs, "x", "drop unrated entries before calling kendall_tau")
    _check_metric(ys, "y", "drop unrated entries before calling kendall_tau")
    if n < 2:
        return math.nan
    pairs = n * (n - 1) // 2
    tied_x, tied_y = _tied_pairs(xs), _tied_pairs(ys)
    if tied_x == pairs or tied_y == pairs:
        return math.nan
    con_minus_dis = _concordance(xs, ys)
    if variant == "b":
        return con_minus_dis / math.sqrt((pairs - tied_x) * (pairs - tied_y))
    m = min(len(np.unique(xs)), len(np.unique(ys)))
    return 2.0 * con_minus_dis / (n * n * (m - 1) / m)


def grouped_kendall_tau(
    metric: Sequence[float] | np.ndarray,
    human: Sequence[float] | np.ndarray,
    items: Sequence[Hashable] | np.ndarray,
    variant: str = "b",
) -> GroupedTauResult:
    """Kendall τ between metric and human scores within each item, averaged over items.

    Args:
        metric: (N,) finite floats.
        human: (N,) floats, NaN = unrated (left out).
        items: (N,) hashable item (source segment) ids.
        variant: ``"b"`` or ``"c"``.

    Returns:
        :class:`GroupedTauResult`; items with fewer than 2 rated hypotheses or an undefined τ are skipped.

    Raises:
        UserError: bad input, or no item has a defined τ.
    """
    if variant not in ("b", "c"):
        raise UserError(f'variant must be "b" or "c", got {variant!r}')
    m, h, codes, keys, unrated = _segment_inputs(metric, human, items)
    rated = ~np.isnan(h)
    order = np.argsort(codes[rated], kind="stable")
    m_r, h_r, c_r = m[rated][order], h[rated][order], codes[rated][order]
    _, starts = np.unique(c_r, return_index=True)
    taus = []
    for start, stop in zip(starts, list(starts[1:]) + [len(c_r)]):
        tau = kendall_tau(m_r[start:stop], h_r[start:stop], variant)
        if not math.isnan(tau):
            taus.append(tau)
    if not taus:
        raise UserError(
            f"no item has a defined Kendall tau ({len(keys)} items, {unrated} unrated hypotheses): each item needs "
            ">= 2 rated hypotheses whose metric and human scores are not all equal"
        )
    return GroupedTauResult(float(np.mean(taus)), variant, len(taus), len(keys) - len(taus), unrated)


# ------------------------------------------------------------------------------------------------- pairs


def _within_item_pairs(
    m: np.ndarray, h: np.ndarray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of rated hypotheses of one item: (item code, Δm, Δh), each (P,); a before b in input order."""
    idx = np.flatnonzero(~np.isnan(h))
    order = np.argsort(codes[idx], kind="stable")  # stable: input order within an item
    idx = idx[order]
    group, starts, sizes = np.unique(codes[idx], return_index=True, return_counts=True)
    pair_item, first, second = [], [], []
    for k in np.unique(sizes[sizes >= 2]):
        chosen = sizes == k
        a, b = np.triu_indices(int(k), 1)
        base = starts[chosen][:, None]
        first.append(idx[base + a].ravel())
        second.append(idx[base + b].ravel())
        pair_item.append(np.repeat(group[chosen], len(a)))
    if not pair_item:
        empty = np.zeros(0, dtype=np.float64)
        return np.zeros(0, dtype=np.int64), empty, empty
    ia, ib = np.concatenate(first), np.concatenate(second)
    return np.concatenate(pair_item), m[ia] - m[ib], h[ia] - h[ib]


def _no_pairs(num_items: int, unrated: int) -> UserError:
    return UserError(
        f"no within-item pair of rated hypotheses ({num_items} items, {unrated} unrated hypotheses): acc-eq needs "
        "at least one item with >= 2 hypotheses that have a human score"
    )


_CLASSES = ("concordant", "discordant", "ties_human", "ties_metric", "ties_both")


def _classes(dm: np.ndarray, dh: np.ndarray, epsilon: float) -> np.ndarray:
    """(P,) int class index into ``_CLASSES`` per pair."""
    tie_h = dh == 0
    tie_m = np.abs(dm) <= epsilon
    agree = np.sign(dm) == np.sign(dh)
    return np.select(
        [tie_h & tie_m, tie_h, tie_m, agree],
        [4, 2, 3, 0],
        default=1,
    )


def _per_item_counts(pair_item: np.ndarray, cls: np.ndarray, num_codes: int) -> np.ndarray:
    """(num_codes, 5) counts of each class per item code."""
    flat = np.bincount(pair_item * 5 + cls, minlength=num_codes * 5)
    return flat.reshape(num_codes, 5)


def pair_counts(
    metric: Sequence[float] | np.ndarray,
    human: Sequence[float] | np.ndarray,
    items: Sequence[Hashable] | np.ndarray,
    epsilon: float = 0.0,
) -> dict[Hashable, PairCounts]:
    """Pair classes C, D, T_h, T_m, T_hm of every item's within-item pairs.

    Args:
        metric: (N,) finite floats.
        human: (N,) floats, NaN = unrated (left out).
        items: (N,) hashable item ids.
        epsilon: metric-tie threshold, >= 0: |Δm| <= ε is a metric tie (0: exact equality). Human ties are exact.

    Returns:
        item id → :class:`PairCounts`, for the items with at least one rated pair, in order of first appearance.
        Sum the values (``sum(d.values(), PairCounts())``) for test-set totals.
    """
    epsilon = _check_epsilon(epsilon)
    m, h, codes, keys, _ = _segment_inputs(metric, human, items)
    pair_item, dm, dh = _within_item_pairs(m, h, codes)
    table = _per_item_counts(pair_item, _classes(dm, dh, epsilon), len(keys))
    return {keys[c]: PairCounts(*(int(v) for v in row)) for c, row in enumerate(table) if row.sum() > 0}


def _acc_eq_from_pairs(
    pair_item: np.ndarray, dm: np.ndarray, dh: np.ndarray, num_codes: int, epsilon: float
) -> tuple[float, int, PairCounts]:
    table = _per_item_counts(pair_item, _classes(dm, dh, epsilon), num_codes)
    totals = table.sum(axis=1)
    used = totals > 0
    per_item = (table[used, 0] + table[used, 4]) / totals[used]
    return float(per_item.mean()), int(used.sum()), PairCounts(*(int(v) for v in table.sum(axis=0)))


def acc_eq(
    metric: Sequence[float] | np.ndarray,
    human: Sequence[float] | np.ndarray,
    items: Sequence[Hashable] | np.ndarray,
    epsilon: float = 0.0,
) -> AccEqResult:
    """Pairwise accuracy with ties (acc-eq), per item and averaged over items (WMT23/24's ``average_by="item"``).

    Args:
        metric: (N,) finite floats.
        human: (N,) floats, NaN = unrated (left out and counted in ``num_unrated``).
        items: (N,) hashable item (source segment) ids; pairs are formed within an item only.
        epsilon: metric-tie threshold, >= 0.

    Returns:
        :class:`AccEqResult`; ``accuracy`` = mean over items with >= 1 rated pair of (C + T_hm) / pairs.

    Raises:
        UserError: bad input, or no within-item pair of rated hypotheses.
    """
    epsilon = _check_epsilon(epsilon)
    m, h, codes, keys, unrated = _segment_inputs(metric, human, items)
    pair_item, dm, dh = _within_item_pairs(m, h, codes)
    if len(dm) == 0:
        raise _no_pairs(len(keys), unrated)
    accuracy, num_items, counts = _acc_eq_from_pairs(pair_item, dm, dh, len(keys), epsilon)
    return AccEqResult(accuracy, epsilon, num_items, len(dm), unrated, counts)


def tie_calibrated_acc_eq(
    metric: Sequence[float] | np.ndarray,
    human: Sequence[float] | np.ndarray,
    items: Sequence[Hashable] | np.ndarray,
    max_candidates: int | None = None,
) -> AccEqResult:
    """acc-eq at the metric-tie threshold ε that maximises it (tie calibration, Deutsch et al. 2023).

    Candidates: ε = 0 and every distinct |Δm| > 0 over the within-item pairs of rated hypotheses; with
    ``max_candidates`` set and more distinct values than that, ``max_candidates`` evenly spaced order statistics
    of them (the smallest and the largest included; always plus ε = 0). Equal bests (within 1e-12) go to the
    smallest ε. O(P log P) for P pairs.

    Args:
        metric: (N,) finite floats.
        human: (N,) floats, NaN = unrated.
        items: (N,) hashable item ids.
        max_candidates: None (all) or an int >= 1.

    Returns:
        :class:`AccEqResult` at the chosen ε (``epsilon``), equal to ``acc_eq(metric, human, items, epsilon)``, with
        ``num_candidates`` the number of ε tried.

    Raises:
        UserError: bad input, or no within-item pair of rated hypotheses.
    """
    if max_candidates is not None and not _positive_int(max_candidates):
        raise UserError(f"max_candidates must be None or an integer >= 1, got {max_candidates!r}")
    m, h, codes, keys, unrated = _segment_inputs(metric, human, items)
    pair_item, dm, dh = _within_item_pairs(m, h, codes)
    if len(dm) == 0:
        raise _no_pairs(len(keys), unrated)

    # acc_eq(ε) = Σ w_p [Δh_p = 0, |Δm_p| <= ε] + Σ w_p [concordant, |Δm_p| > ε], w_p = 1 / (G n_item(p))
    pairs_per_item = np.bincount(pair_item, minlength=len(keys))
    num_items = int((pairs_per_item > 0).sum())
    weight = 1.0 / (num_items * pairs_per_item[pair_item])
    gap = np.abs(dm)
    order = np.argsort(gap, kind="stable")
    gap, weight = gap[order], weight[order]
    tie_h = (dh == 0)[order]
    concordant = ((np.sign(dm) == np.sign(dh)) & (dh != 0) & (dm != 0))[order]
    tied_gain = np.concatenate([[0.0], np.cumsum(np.where(tie_h, weight, 0.0))])  # [k]: first k pairs tied
    concordant_loss = np.concatenate([[0.0], np.cumsum(np.where(concordant, weight, 0.0))])
    concordant_total = concordant_loss[-1]

    distinct = np.unique(gap[gap > 0])
    if max_candidates is not None and len(distinct) > max_candidates:
        picks = np.unique(np.round(np.linspace(0, len(distinct) - 1, max_candidates)).astype(np.int64))
        distinct = distinct[picks]
    candidates = np.concatenate([[0.0], distinct])
    tied = np.searchsorted(gap, candidates, side="right")  # pairs with |Δm| <= ε
    scores = tied_gain[tied] + concordant_total - concordant_loss[tied]
    best = int(np.flatnonzero(scores >= scores.max() - TIE_TOLERANCE)[0])
    epsilon = float(candidates[best])

    accuracy, num_items, counts = _acc_eq_from_pairs(pair_item, dm, dh, len(keys), epsilon)
    return AccEqResult(accuracy, epsilon, num_items, len(dm), unrated, counts, num_candidates=len(candidates))


# ------------------------------------------------------------------------------------------------- system level


def system_scores(
    scores: Sequence[float] | np.ndarray,
    systems: Sequence[Hashable] | np.ndarray,
    items: Sequence[Hashable] | np.ndarray | None = None,
) -> dict[Hashable, float]:
    """Mean segment score per system, NaN ignored.

    Args:
        scores: (N,) floats; NaN = no score (left out).
        systems: (N,) hashable system ids.
        items: optional (N,) hashable item ids. When given, only the items on which **every** system has a non-NaN
            score count, so that all means are over the same segments; a (system, item) pair may then occur once.

    Returns:
        system id → mean, in order of first appearance; systems with no non-NaN score (on the common items when
        ``items`` is given) are left out.

    Raises:
        UserError: mismatched lengths, ±inf, a repeated (system, item), or (with ``items``) no common item.
    """
    s = _float_vector(scores, "scores")
    systems = list(systems) if not isinstance(systems, np.ndarray) else systems
    if items is None:
        _same_length(scores=s, systems=systems)
    else:
        items = list(items) if not isinstance(items, np.ndarray) else items
        _same_length(scores=s, systems=systems, items=items)
    _check_human(s, "scores")
    sys_codes, sys_keys = _codes(systems, "systems")
    kept = ~np.isnan(s)
    if items is not None:
        item_codes, item_keys = _codes(items, "items")
        grid = _grid(s, sys_codes, item_codes, len(sys_keys), len(item_keys), "scores")
        common = ~np.isnan(grid).any(axis=0)
        if not common.any():
            raise UserError(
                f"no item is scored for all {len(sys_keys)} systems ({len(item_keys)} items): cannot compare system "
                "means on a common set of segments"
            )
        kept &= common[item_codes]
    sums = np.bincount(sys_codes[kept], weights=s[kept], minlength=len(sys_keys))
    counts = np.bincount(sys_codes[kept], minlength=len(sys_keys))
    return {key: float(sums[c] / counts[c]) for c, key in enumerate(sys_keys) if counts[c] > 0}


def system_pairwise_accuracy(metric_sys: Mapping[Hashable, float], human_sys: Mapping[Hashable, float]) -> float:
    """System-level pairwise accuracy (Kocmi et al. 2021).

    Args:
        metric_sys: system id → metric system score.
        human_sys: system id → human system score.

    Returns:
        Over all pairs of systems present in both mappings, the fraction with sign(Δmetric) == sign(Δhuman). A human
        tie agrees only with a metric tie, and a metric tie on a human-ordered pair is a disagreement.

    Raises:
        UserError: fewer than 2 common systems, or a non-finite score.
    """
    common = [key for key in human_sys if key in metric_sys]
    if len(common) < 2:
        raise UserError(
            f"system pairwise accuracy needs >= 2 systems scored by both metric and human, got {len(common)} "
            f"(metric has {len(metric_sys)}, human has {len(human_sys)})"
        )
    m = _float_vector([metric_sys[key] for key in common], "metric_sys")
    h = _float_vector([human_sys[key] for key in common], "human_sys")
    for name, values in (("metric_sys", m), ("human_sys", h)):
        if not np.isfinite(values).all():
            bad = common[int(np.flatnonzero(~np.isfinite(values))[0])]
            raise UserError(f"{name} has a non-finite score for system {bad!r}")
    i, j = np.triu_indices(len(common), 1)
    return float(np.mean(np.sign(m[i] - m[j]) == np.sign(h[i] - h[j])))


def _grid(
    values: np.ndarray, sys_codes: np.ndarray, item_codes: np.ndarray, num_sys: int, num_items: int, name: str
) -> np.ndarray:
    """(S, M) matrix of values, NaN where a (system, item) is absent; UserError on a repeated (system, item)."""
    cell = sys_codes * num_items + item_codes
    seen = np.bincount(cell, minlength=num_sys * num_items)
    if (seen > 1).any():
        flat = int(np.flatnonzero(seen > 1)[0])
        raise UserError(
            f"{name}: system #{flat // num_items} and item #{flat % num_items} (in order of first appearance) occur "
            "more than once; give one score per (system, item)"
        )
    grid = np.full(num_sys * num_items, np.nan)
    grid[cell] = values
    return grid.reshape(num_sys, num_items)


def permutation_p_values(diffs: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """One-sided paired permutation p-values of "Σ d > 0", for given random signs.

    Args:
        diffs: (M,) or (M, P) float; column p holds the per-item differences d_k = s_i,k - s_j,k of one system
            pair, 0 for items the pair does not share (a zero contributes nothing under any sign).
        signs: (K, M) of ±1, one row per permutation.

    Returns:
        (P,) float64 (a float for 1-D ``diffs``): (1 + #{rows σ : σ·d >= Σ d}) / (1 + K), with ">=" up to
        1e-10 · Σ|d|.
    """
    d = np.asarray(diffs, dtype=np.float64)
    one = d.ndim == 1
    d = d.reshape(len(d), -1)
    signs = np.asarray(signs)
    if signs.ndim != 2 or signs.shape[1] != d.shape[0]:
        raise UserError(f"signs must have shape (K, {d.shape[0]}), got {signs.shape}")
    observed = d.sum(axis=0)
    threshold = observed - PERMUTATION_RTOL * np.abs(d).sum(axis=0)
    hits = np.zeros(d.shape[1], dtype=np.int64)
    rows = max(1, _BLOCK // max(d.shape[0], 1))
    for start in range(0, len(signs), rows):
        null = signs[start : start + rows].astype(np.float64) @ d
        hits += (null >= threshold).sum(axis=0)
    p = (1.0 + hits) / (1.0 + len(signs))
    return float(p[0]) if one else p


def soft_pairwise_accuracy(
    metric: Sequence[float] | np.ndarray,
    human: Sequence[float] | np.ndarray,
    systems: Sequence[Hashable] | np.ndarray,
    items: Sequence[Hashable] | np.ndarray,
    num_permutations: int = 1000,
    seed: int = 0,
) -> SPAResult:
    """Soft pairwise accuracy (SPA, Thompson et al. 2024; WMT24).

    Args:
        metric: (N,) finite floats, one per (system, item).
        human: (N,) floats, NaN = unrated.
        systems: (N,) hashable system ids.
        items: (N,) hashable item ids; each (system, item) occurs at most once.
        num_permutations: K >= 1 random sign vectors.
        seed: seed of ``numpy.random.default_rng`` drawing the (K, items) sign matrix; same seed, same result.

    Returns:
        :class:`SPAResult`: for each pair of systems (i, j), i first in order of appearance, the one-sided p-values
        of "i is better than j" from human and from metric scores, each over the items both systems have rated,
        sharing the sign flips; ``spa`` = mean of 1 - |p_h - p_m| over the pairs with a common rated item.

    Raises:
        UserError: bad input, fewer than 2 systems, or no pair of systems with a common rated item.
    """
    if not _positive_int(num_permutations):
        raise UserError(f"num_permutations must be an integer >= 1, got {num_permutations!r}")
    m = _float_vector(metric, "metric")
    h = _float_vector(human, "human")
    systems = list(systems) if not isinstance(systems, np.ndarray) else systems
    items = list(items) if not isinstance(items, np.ndarray) else items
    _same_length(metric=m, human=h, systems=systems, items=items)
    _check_metric(m)
    _check_human(h)
    sys_codes, sys_keys = _codes(systems, "systems")
    item_codes, item_keys = _codes(items, "items")
    num_sys, num_items = len(sys_keys), len(item_keys)
    if num_sys < 2:
        raise UserError(f"soft pairwise accuracy needs >= 2 systems, got {num_sys}")
    human_grid = _grid(h, sys_codes, item_codes, num_sys, num_items, "human")
    metric_grid = _grid(m, sys_codes, item_codes, num_sys, num_items, "metric")

    i, j = np.triu_indices(num_sys, 1)
    common = ~np.isnan(human_grid[i]) & ~np.isnan(human_grid[j])  # (P, M)
    tested = common.any(axis=1)
    if not tested.any():
        raise UserError(
            f"no pair of systems shares a rated item ({num_sys} systems, {num_items} items, "
            f"{int(np.isnan(h).sum())} unrated entries): SPA needs human scores of two systems on a common item"
        )
    i, j, common = i[tested], j[tested], common[tested]
    human_diff = np.where(common, human_grid[i] - human_grid[j], 0.0).T  # (M, P)
    metric_diff = np.where(common, metric_grid[i] - metric_grid[j], 0.0).T

    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(int(num_permutations), num_items), dtype=np.int8) * np.int8(2) - np.int8(1)
    p_h = permutation_p_values(human_diff, signs)
    p_m = permutation_p_values(metric_diff, signs)

    p_human = np.full((num_sys, num_sys), np.nan)
    p_metric = np.full((num_sys, num_sys), np.nan)
    p_human[i, j], p_metric[i, j] = p_h, p_m
    spa = float(np.mean(1.0 - np.abs(p_h - p_m)))
    return SPAResult(spa, sys_keys, p_human, p_metric, len(i), int(np.isnan(h).sum()), int(num_permutations))
