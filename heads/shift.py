"""Out-of-distribution guard: is this embedding like the data the head was calibrated on?

Thresholds fitted on one kind of profile do not transfer to another: the default model's labels,
calibrated on simulated profiles, were right 83% of the time on real geotagged tweets where the
promise is 90%. ``MahalanobisGuard`` measures how far an embedding lies from the calibration data
(the smallest class-conditional Mahalanobis distance with a shared covariance, Lee et al. 2018) and
refuses rows beyond the distance that ``quantile`` of the calibration rows stay within. On the real
development sets this kept the promise where thresholds alone did not (docs/REAL_DATA.md,
``bench/abstention_rules.py``).

The covariance is inverted once and factored (``precision = L L^T``), so scoring is two matrix
products: ``||x L - m_c L||^2`` for every class mean ``m_c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedder.errors import ArtifactError, InvalidInputError

#: Fewer calibration rows than this leave the covariance too noisy to say what is unusual.
MIN_ROWS = 50


@dataclass
class MahalanobisGuard:
    """Class means and a whitening factor, plus the cutoff on the squared distance.

    Attributes:
        means_w: ``(k, d)`` whitened class means (``m_c @ L``); rows of classes without
            calibration rows are NaN and never nearest.
        whiten: ``(d, d)`` factor ``L`` of the shared precision matrix.
        cutoff: rows whose smallest squared distance exceeds it are out of distribution.
        quantile: the share of calibration rows within ``cutoff``.
        n: calibration rows it was fitted on.
    """

    means_w: np.ndarray
    whiten: np.ndarray
    cutoff: float
    quantile: float
    n: int

    @classmethod
    def fit(
        cls, x: np.ndarray, y: np.ndarray, k: int, *, quantile: float = 0.99, seed: int = 0
    ) -> MahalanobisGuard | None:
        """Fit on calibration embeddings ``x`` with class indices ``y``; None when too few rows.

        The cutoff is the ``quantile`` of *out-of-fold* distances (each half scored by a guard
        fitted on the other half): distances of the rows a guard was fitted on are too small, by
        more the fewer rows there are per dimension, and an in-sample cutoff refused most new rows
        of a head calibrated on a few hundred.
        """
        if not 0.0 < quantile <= 1.0:
            raise InvalidInputError(f"ood quantile must be in (0, 1], got {quantile}")
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        if len(x) < max(MIN_ROWS, 2 * x.shape[1] // 4):
            return None
        half = np.random.default_rng(seed).permutation(len(x)) % 2 == 0
        held = np.concatenate(
            [
                cls._fit_stats(x[~half], y[~half], k).distance(x[half]),
                cls._fit_stats(x[half], y[half], k).distance(x[~half]),
            ]
        )
        guard = cls._fit_stats(x, y, k)
        guard.cutoff, guard.quantile = float(np.quantile(held, quantile)), quantile
        return guard

    @classmethod
    def _fit_stats(cls, x: np.ndarray, y: np.ndarray, k: int) -> MahalanobisGuard:
        """Class means and the shared covariance, shrunk towards its mean variance by ``d / n``
        (more shrinkage with fewer rows per dimension, so the inverse stays stable)."""
        means = np.full((k, x.shape[1]), np.nan)
        for c in np.unique(y):
            means[c] = x[y == c].mean(axis=0)
        centred = x - means[y]
        cov = centred.T @ centred / len(x)
        shrink = min(0.5, max(1e-3, x.shape[1] / len(x) / 4))
        target = np.trace(cov) / len(cov) * np.eye(len(cov))
        cov = (1 - shrink) * cov + shrink * target
        whiten = np.linalg.cholesky(np.linalg.inv(cov))
        return cls(means @ whiten, whiten, np.inf, 1.0, len(x))

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Smallest squared Mahalanobis distance of each row to a class mean."""
        xw = np.asarray(x, dtype=np.float64) @ self.whiten
        means = self.means_w[~np.isnan(self.means_w[:, 0])]
        d2 = (xw * xw).sum(1)[:, None] - 2 * xw @ means.T + (means * means).sum(1)[None, :]
        return np.maximum(d2.min(axis=1), 0.0)

    def in_distribution(self, x: np.ndarray) -> np.ndarray:
        """True where a row is within the cutoff."""
        return self.distance(x) <= self.cutoff

    def to_config(self) -> dict[str, Any]:
        return {
            "kind": "mahalanobis",
            "cutoff": self.cutoff,
            "quantile": self.quantile,
            "n": self.n,
        }

    def to_tensors(self) -> dict[str, np.ndarray]:
        # float64, as computed: rounded to float32 on disk, a row scored exactly at a
        # threshold or cutoff came back on the other side of it after loading.
        return {
            "ood.means_w": self.means_w.astype(np.float64),
            "ood.whiten": self.whiten.astype(np.float64),
        }

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, Any]) -> MahalanobisGuard:
        try:
            means = np.asarray(tensors["ood.means_w"], dtype=np.float64)
            whiten = np.asarray(tensors["ood.whiten"], dtype=np.float64)
            guard = cls(
                means, whiten, float(config["cutoff"]), float(config["quantile"]), int(config["n"])
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(
                f"the head's out-of-distribution guard is incomplete: {err}"
            ) from err
        if whiten.ndim != 2 or means.ndim != 2 or means.shape[1] != whiten.shape[1]:
            raise ArtifactError(
                "the head's out-of-distribution guard has arrays that do not fit together: "
                f"ood.whiten {whiten.shape}, ood.means_w {means.shape}"
            )
        return guard
