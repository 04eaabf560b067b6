"""WMT-style meta-evaluation of an MT metric against human ratings: the library behind `segrl remedy meta-eval`.

Per language pair (:mod:`segrl.remedy.metrics` has the statistics and their references):

- segment level, pairs of hypotheses of the same source item: tie-calibrated pairwise accuracy acc-eq (Deutsch et
  al. 2023; the optimised tie threshold ε is reported), and Kendall τ_b and τ_c, each averaged over items;
- system level: pairwise accuracy of system orderings (Kocmi et al. 2021) on system scores that are means over the
  items every system has, and WMT24's soft pairwise accuracy (permutation p-values, 1000 permutations, seeded).

The table's "average" row is the mean over language pairs (of everything but ε). Metrics a user would try as baselines are built in
(:func:`metric_scores`): ``chrf`` and ``bleu`` (sentence-level, ``sacrebleu``, against the reference) besides a
ReMedy model directory.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from segrl.errors import UserError
from segrl.remedy import metrics as stats
from segrl.remedy.data import Rating

__all__ = ["COLUMNS", "meta_evaluate", "metric_scores"]

#: The statistics reported per language pair, in table order.
COLUMNS = ("acc_eq", "epsilon", "tau_b", "tau_c", "system_accuracy", "soft_pairwise_accuracy")


def metric_scores(ratings: list[Rating], metric: str, batch_size: int = 32, progress=None) -> np.ndarray:
    """Scores (N,) of ``metric`` for ``ratings``: ``"chrf"``, ``"bleu"`` (need references) or a ReMedy model
    directory (read with or without references, as it was trained)."""
    if metric in ("chrf", "bleu"):
        import sacrebleu

        if any(r.ref is None for r in ratings):
            raise UserError(f"{metric} needs a reference for every rating")
        scorer = sacrebleu.sentence_chrf if metric == "chrf" else sacrebleu.sentence_bleu
        return np.array([scorer(r.mt, [r.ref]).score for r in ratings], dtype=float)
    from segrl.remedy.scoring import load_remedy, score

    model, tokenizer, info, _ = load_remedy(metric)
    reference_free = bool(info.get("reference_free"))
    if not reference_free and any(r.ref is None for r in ratings):
        raise UserError(f"{metric} reads references, but some ratings have none")
    return score(model, tokenizer, [r.src for r in ratings], [r.mt for r in ratings], [r.lp for r in ratings],
                 None if reference_free else [r.ref for r in ratings], batch_size=batch_size, progress=progress)


def meta_evaluate(ratings: list[Rating], scores, num_permutations: int = 1000, seed: int = 0) -> dict[str, dict]:
    """``{lp: {statistic: value}}`` for every language pair of ``ratings`` plus ``"average"`` (module docstring);
    ``scores`` are the metric's, aligned with ``ratings``."""
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(ratings),):
        raise UserError(f"{len(ratings)} ratings but {scores.size} metric scores")
    rows_by_lp: dict[str, list[int]] = defaultdict(list)
    for index, rating in enumerate(ratings):
        rows_by_lp[rating.lp].append(index)
    results = {}
    for lp, rows in sorted(rows_by_lp.items()):
        metric, human = scores[rows], np.array([ratings[i].score for i in rows])
        items, systems = [ratings[i].item for i in rows], [ratings[i].system for i in rows]
        segment = stats.tie_calibrated_acc_eq(metric, human, items)
        results[lp] = {
            "acc_eq": segment.accuracy,
            "epsilon": segment.epsilon,
            "tau_b": stats.grouped_kendall_tau(metric, human, items, "b").tau,
            "tau_c": stats.grouped_kendall_tau(metric, human, items, "c").tau,
            "system_accuracy": stats.system_pairwise_accuracy(stats.system_scores(metric, systems, items),
                                                              stats.system_scores(human, systems, items)),
            "soft_pairwise_accuracy": stats.soft_pairwise_accuracy(metric, human, systems, items, num_permutations,
                                                                   seed).spa,
        }
    results["average"] = {key: float(np.mean([results[lp][key] for lp in rows_by_lp]))
                          for key in COLUMNS if key != "epsilon"}  # thresholds are on each pair's own scale
    return results
