"""Reward normalisers for segment reward models: location-aware (segment RM) and global (bandit RM).

Location-aware normaliser (Yin et al. 2025, "Segmenting Text and Learning Their Rewards for Improved RLHF in
Language Models", arXiv 2501.02790, §3.2; released code: yinyueqin/DenseRewardRLHF-PPO). A segment reward model's
rewards drift with where the segment sits in the response, so each reward is normalised by a mean and a std that
depend on its relative position. For a response of K segments, segment k (1-based) sits at p = k / K ∈ (0, 1] and::

    r̂_k = (r_k - μ(p)) / σ(p),    μ(p) = a_μ ln p + b_μ,    σ(p) = max(a_σ ln p + b_σ, floor).

Fit (:meth:`LocationNormalizer.fit`): score a held-out set of responses with the trained RM (60k preference pairs,
chosen and rejected, in the paper); bucket the segment rewards by p rounded to 3 decimals; take each bucket's mean
and std; fit μ and σ separately with scikit-learn's ``HuberRegressor(epsilon=1.35)`` on the single feature ln p, one
point per bucket. Fitted example from the release (Phi-3-mini, entropy threshold 1.75):
μ = 0.7668 ln p + 0.4705, σ = 0.2569 ln p + 2.8339.

The bandit (whole-response) RM is normalised by one global mean and std instead (:class:`GlobalNormalizer`).

Both classes share the interface ``apply(segment_rewards, segment_ids)``, ``save(path)``, ``load(path)``; a saved
file carries a ``"kind"`` field (``"location"`` or ``"global"``) and :func:`load_normalizer` reads either.

Segment rewards are a (B, S') float tensor aligned with ``segment_ids`` (B, T) (:mod:`segrl.segmentation`): entry
[b, k] is the reward of segment k of row b; entries with k >= the row's segment count are ignored (any value, e.g. 0
or NaN), and S' must be at least the batch's largest segment count. ``apply`` returns the same shape with **NaN
where a row has no segment**, so that an absent segment can never pass for a real reward of 0
(:func:`segrl.shaping.densify` never reads those entries).

Matches with, and deviations from, the released code:

- Bucket std is the population std (ddof 0, ``np.std``), as released. A bucket holding a single reward has no usable
  std (0 by that formula), so it is left out of the σ fit (it still enters the μ fit); the released code keeps it as
  a point at 0. Fitting raises :class:`segrl.errors.UserError` when fewer than 2 buckets remain for either fit.
- σ floor: the released code applies a_σ ln p + b_σ as it is, which reaches 0 and goes negative for small p (long
  responses of many segments) and then flips or blows up the normalised reward. We clamp σ(p) at ``sigma_floor``.
  Default when fitting: 0.1 × the pooled population std of all the fitted rewards, stored in the fitted object (and
  its file); pass ``sigma_floor`` to override.
- Positions below 0.0005 (responses of more than 2000 segments) round to 0, whose log is undefined; they go to the
  0.001 bucket. The released code takes ln(p + 1e-10) ≈ -23 there, a far-off leverage point.
- HuberRegressor is used with scikit-learn's defaults otherwise (``alpha=1e-4``, ``max_iter=100``), as released.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from segrl.errors import UserError
from segrl.files import read_kind_json, write_text_atomic
from segrl.segmentation import num_segments

__all__ = [
    "GlobalNormalizer",
    "HUBER_EPSILON",
    "LocationNormalizer",
    "flatten_segment_rewards",
    "load_normalizer",
    "relative_positions",
]

HUBER_EPSILON = 1.35  # the paper's and the released code's HuberRegressor epsilon
FLOOR_FRACTION = 0.1  # default sigma floor: this fraction of the pooled std of the fitted rewards


# ------------------------------------------------------------------------------------------------- positions


def relative_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Relative position p = k / K of every segment (k 1-based, K the row's segment count).

    Args:
        segment_ids: (B, T) long, -1 off the completion.

    Returns:
        (B, S) float64, S the batch's largest segment count; NaN where the row has no such segment. Float64 keeps
        the ratios exact enough that rounding them to 3 decimals matches ``round(k / K, 3)``.
    """
    counts = num_segments(segment_ids).unsqueeze(1).double()  # (B, 1)
    total = int(counts.max()) if counts.numel() else 0
    k = torch.arange(1, total + 1, dtype=torch.float64, device=segment_ids.device)
    positions = k / counts
    return torch.where(k <= counts, positions, torch.full_like(positions, float("nan")))


def flatten_segment_rewards(
    segment_rewards: torch.Tensor, segment_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The real segments of a batch as flat (reward, position) pairs, the input of the ``fit`` methods.

    Score a held-out set batch by batch, collect the pairs, concatenate, fit::

        rewards, positions = zip(*(flatten_segment_rewards(r, ids) for r, ids in scored_batches))
        normalizer = LocationNormalizer.fit(torch.cat(rewards), torch.cat(positions))

    Args:
        segment_rewards: (B, S') float, S' >= the batch's largest segment count.
        segment_ids: (B, T) long.

    Returns:
        ``(rewards, positions)``, both (M,), M the number of segments in the batch, row-major; positions float64.
    """
    positions = relative_positions(segment_ids)
    present = ~positions.isnan()
    return _columns(segment_rewards, positions)[present], positions[present]


def _columns(segment_rewards: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The first S columns of ``segment_rewards``, checking that it has the rows and columns it needs."""
    batch, total = positions.shape
    if segment_rewards.dim() != 2 or segment_rewards.shape[0] != batch or segment_rewards.shape[1] < total:
        raise ValueError(
            f"segment_rewards must have shape (B={batch}, S>={total}) for these segment_ids, "
            f"got {tuple(segment_rewards.shape)}"
        )
    return segment_rewards[:, :total]


def _output(segment_rewards: torch.Tensor, positions: torch.Tensor, normalized: torch.Tensor) -> torch.Tensor:
    """``normalized`` (B, S) padded with NaN to the columns of ``segment_rewards``, NaN on absent segments."""
    dtype = torch.promote_types(segment_rewards.dtype, torch.float32)
    out = torch.full(segment_rewards.shape, float("nan"), dtype=dtype, device=segment_rewards.device)
    out[:, : positions.shape[1]] = torch.where(positions.isnan(), float("nan"), normalized).to(dtype)
    return out


def _finite_1d(values: torch.Tensor, name: str) -> np.ndarray:
    array = torch.as_tensor(values).detach().double().cpu().numpy()
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per segment), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise UserError(f"{name}: {int((~np.isfinite(array)).sum())} of {array.size} values are NaN or infinite")
    return array


# ------------------------------------------------------------------------------------------------ files


def _save(path: str | Path, kind: str, params: dict) -> Path:
    return write_text_atomic(path, json.dumps({"kind": kind, **params}, indent=2) + "\n")


def _read(path: str | Path) -> tuple[Path, dict]:
    """The JSON object in ``path`` with a valid ``kind``."""
    return read_kind_json(path, "normalizer", _KINDS)


def _load(cls, path: Path, data: dict):
    """Build ``cls`` from the numeric fields of ``data``, naming the file and the field on any problem."""
    values = {}
    for field in fields(cls):
        if field.name not in data:
            raise UserError(f"{path}: missing field '{field.name}'")
        value = data[field.name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{path}: field '{field.name}' should be a finite number, got {value!r}")
        values[field.name] = float(value)
    try:
        return cls(**values)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def _check_kind(path: Path, data: dict, kind: str) -> None:
    if data["kind"] != kind:
        raise UserError(f"{path}: field 'kind' is {data['kind']!r}, expected {kind!r}")


def load_normalizer(path: str | Path) -> LocationNormalizer | GlobalNormalizer:
    """Load a normaliser saved by either class, dispatching on its ``"kind"`` field.

    Raises:
        UserError: missing or malformed file (the message names the file and the field).
    """
    path, data = _read(path)
    return _load(_KINDS[data["kind"]], path, data)


# ------------------------------------------------------------------------------------------- location-aware


def _huber_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of a Huber regression of y on the single feature x."""
    from sklearn.linear_model import HuberRegressor  # imported here: scikit-learn is slow to import, needed to fit

    huber = HuberRegressor(epsilon=HUBER_EPSILON).fit(x.reshape(-1, 1), y)
    return float(huber.coef_[0]), float(huber.intercept_)


@dataclass(frozen=True)
class LocationNormalizer:
    """μ(p) = mu_slope · ln p + mu_intercept, σ(p) = max(sigma_slope · ln p + sigma_intercept, sigma_floor).

    Attributes:
        mu_slope, mu_intercept: a_μ, b_μ.
        sigma_slope, sigma_intercept: a_σ, b_σ.
        sigma_floor: the positive lower bound of σ(p).
    """

    mu_slope: float
    mu_intercept: float
    sigma_slope: float
    sigma_intercept: float
    sigma_floor: float

    def __post_init__(self):
        if not self.sigma_floor > 0:
            raise UserError(f"sigma_floor must be positive, got {self.sigma_floor}")

    def mu(self, positions: torch.Tensor) -> torch.Tensor:
        """μ(p) at ``positions`` (any shape, values in (0, 1])."""
        return self.mu_slope * torch.log(positions) + self.mu_intercept

    def sigma(self, positions: torch.Tensor) -> torch.Tensor:
        """σ(p) at ``positions``, floored at ``sigma_floor``."""
        return (self.sigma_slope * torch.log(positions) + self.sigma_intercept).clamp(min=self.sigma_floor)

    def apply(self, segment_rewards: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        """Normalise segment rewards: (r_k - μ(k/K)) / σ(k/K).

        Args:
            segment_rewards: (B, S') float, S' >= the batch's largest segment count.
            segment_ids: (B, T) long.

        Returns:
            (B, S') float (``segment_rewards``' dtype, at least float32); NaN where the row has no segment. A NaN
            reward of a real segment stays NaN.
        """
        positions = relative_positions(segment_ids)
        rewards = _columns(segment_rewards, positions).double()
        return _output(segment_rewards, positions, (rewards - self.mu(positions)) / self.sigma(positions))

    @classmethod
    def fit(
        cls, rewards: torch.Tensor, positions: torch.Tensor, sigma_floor: float | None = None
    ) -> LocationNormalizer:
        """Fit μ(p) and σ(p) by Huber regression on ln p over per-bucket means and stds.

        Args:
            rewards: (M,) float, the segment rewards of many responses (e.g. chosen and rejected responses of a
                held-out preference set, scored by the trained RM), all finite.
            positions: (M,) float, each reward's relative position k / K in its response
                (:func:`flatten_segment_rewards` gives both).
            sigma_floor: lower bound of σ(p). Default: 0.1 × the population std of all ``rewards``.

        Returns:
            The fitted :class:`LocationNormalizer`.

        Raises:
            UserError: NaN or infinite rewards; fewer than 2 buckets for the μ fit, or fewer than 2 buckets of at
                least 2 rewards for the σ fit; all rewards equal (no default floor).
        """
        reward = _finite_1d(rewards, "rewards")
        position = _finite_1d(positions, "positions")
        if reward.shape != position.shape:
            raise ValueError(f"rewards {reward.shape} and positions {position.shape} must have the same shape")
        if reward.size and not ((position > 0) & (position <= 1)).all():
            raise UserError("positions must lie in (0, 1] (p = k / K for segment k of K)")

        # Bucket by p rounded to 3 decimals, as integer thousandths (0 has no log: send it to 0.001).
        bucket = np.maximum(np.round(position * 1000).astype(np.int64), 1)
        keys, index, counts = np.unique(bucket, return_inverse=True, return_counts=True)
        means = np.bincount(index, weights=reward) / counts
        stds = np.sqrt(np.bincount(index, weights=(reward - means[index]) ** 2) / counts)
        log_p = np.log(keys / 1000)

        if keys.size < 2:
            raise UserError(
                f"cannot fit the location-aware normalizer: the rewards fall into {keys.size} position bucket(s), "
                "need at least 2 (score responses with different numbers of segments)"
            )
        several = counts >= 2
        if several.sum() < 2:
            raise UserError(
                f"cannot fit sigma(p) of the location-aware normalizer: {int(several.sum())} position bucket(s) "
                "hold 2 or more rewards, need at least 2 (score more responses)"
            )
        if sigma_floor is None:
            sigma_floor = FLOOR_FRACTION * float(reward.std())
            if sigma_floor <= 0:
                raise UserError("cannot fit the location-aware normalizer: all rewards are equal")
        mu_slope, mu_intercept = _huber_line(log_p, means)
        sigma_slope, sigma_intercept = _huber_line(log_p[several], stds[several])
        return cls(mu_slope, mu_intercept, sigma_slope, sigma_intercept, float(sigma_floor))

    def save(self, path: str | Path) -> Path:
        """Write ``{"kind": "location", "mu_slope": ..., ...}`` as JSON, atomically."""
        return _save(path, "location", asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> LocationNormalizer:
        """Read a file written by :meth:`save`; UserError naming the file and the field if it is malformed."""
        path, data = _read(path)
        _check_kind(path, data, "location")
        return _load(cls, path, data)


# ------------------------------------------------------------------------------------------------- global


@dataclass(frozen=True)
class GlobalNormalizer:
    """(r - mean) / std for every segment, whatever its position: the bandit RM's normaliser.

    Attributes:
        mean: the mean reward.
        std: the std of the rewards, positive.
    """

    mean: float
    std: float

    def __post_init__(self):
        if not self.std > 0:
            raise UserError(f"std must be positive, got {self.std}")

    def apply(self, segment_rewards: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        """Normalise segment rewards: (r_k - mean) / std. Same arguments and output as
        :meth:`LocationNormalizer.apply` (NaN where the row has no segment)."""
        positions = relative_positions(segment_ids)
        rewards = _columns(segment_rewards, positions).double()
        return _output(segment_rewards, positions, (rewards - self.mean) / self.std)

    @classmethod
    def fit(cls, rewards: torch.Tensor) -> GlobalNormalizer:
        """Mean and population std of ``rewards`` (M,) (e.g. the rewards of :func:`flatten_segment_rewards`).

        Raises:
            UserError: no reward, NaN or infinite rewards, or all rewards equal (std 0).
        """
        reward = _finite_1d(rewards, "rewards")
        if reward.size == 0:
            raise UserError("cannot fit the global normalizer: no rewards")
        if not reward.std() > 0:
            raise UserError("cannot fit the global normalizer: all rewards are equal (std 0)")
        return cls(float(reward.mean()), float(reward.std()))

    def save(self, path: str | Path) -> Path:
        """Write ``{"kind": "global", "mean": ..., "std": ...}`` as JSON, atomically."""
        return _save(path, "global", asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> GlobalNormalizer:
        """Read a file written by :meth:`save`; UserError naming the file and the field if it is malformed."""
        path, data = _read(path)
        _check_kind(path, data, "global")
        return _load(cls, path, data)


_KINDS = {"location": LocationNormalizer, "global": GlobalNormalizer}
