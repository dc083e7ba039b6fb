"""Per-level log-likelihood / entropy maps → one anomaly map and image score (DESIGN.md §2).

The official HGAD normalises each level by its maximum over the *test set*. A stream has no
test set, so every such maximum here is a constant calibrated on held-out normal images of the
routed class (``Normalizer``); one frame's score never depends on another frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence

import cv2
import numpy as np

COMBINE_MODES = ("product", "loglik", "entropy")
BLUR_SIGMA = 4.0


@dataclass
class Normalizer:
    """Calibrated constants of one class (all lists have one entry per level)."""

    ll_max: List[float]  # max logp per level over normal images
    ent_min: List[float]  # min entropy per level over normal images
    ll_sum_max: float  # max of the summed log-likelihood normality map
    ent_sum_max: float  # max of the summed entropy normality map

    def to_dict(self) -> Dict[str, object]:
        return {"ll_max": list(map(float, self.ll_max)), "ent_min": list(map(float, self.ent_min)),
                "ll_sum_max": float(self.ll_sum_max), "ent_sum_max": float(self.ent_sum_max)}

    @classmethod
    def from_dict(cls, d: Dict[str, object]) -> "Normalizer":
        return cls(list(d["ll_max"]), list(d["ent_min"]), float(d["ll_sum_max"]), float(d["ent_sum_max"]))


def _upsampled_sum(maps: Sequence[np.ndarray], offsets: Sequence[float], sign: float, size: int) -> np.ndarray:
    """Σ_l upsample(exp(sign·(map_l − offset_l))) at size×size."""
    total = np.zeros((size, size), dtype=np.float32)
    for m, off in zip(maps, offsets):
        normality = np.exp(sign * (m.astype(np.float32) - np.float32(off)))  # (h, w)
        total += cv2.resize(normality, (size, size), interpolation=cv2.INTER_LINEAR)
    return total


def normality_sums(logp: Sequence[np.ndarray], entropy: Sequence[np.ndarray], norm: Normalizer,
                   size: int) -> tuple:
    """Summed normality maps (S, S): log-likelihood and negative entropy."""
    ll = _upsampled_sum(logp, norm.ll_max, 1.0, size)
    ent = _upsampled_sum(entropy, norm.ent_min, -1.0, size)
    return ll, ent


def anomaly_map(logp: Sequence[np.ndarray], entropy: Sequence[np.ndarray], norm: Normalizer, size: int,
                combine: str = "product", blur_sigma: float = BLUR_SIGMA) -> np.ndarray:
    """The blurred anomaly map (S, S) float32 of one frame.

    Args:
        logp, entropy: per-level (h_l, w_l) maps of the routed class.
        combine: "product" (official: log-likelihood × entropy anomaly), "loglik" or "entropy".
    """
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine={combine!r}; choose one of {COMBINE_MODES}")
    ll, ent = normality_sums(logp, entropy, norm, size)
    a_ll = np.float32(norm.ll_sum_max) - ll
    a_ent = np.float32(norm.ent_sum_max) - ent
    amap = {"product": lambda: a_ll * a_ent, "loglik": lambda: a_ll, "entropy": lambda: a_ent}[combine]()
    if blur_sigma > 0:
        amap = cv2.GaussianBlur(amap, (0, 0), sigmaX=blur_sigma, sigmaY=blur_sigma,
                                borderType=cv2.BORDER_REFLECT)
    return amap.astype(np.float32, copy=False)


def calibrated_score(raw: float, threshold: float, spread: float) -> float:
    """Map a raw image score so the class threshold lands on 0.5 (logistic, scale = ``spread``)."""
    x = (raw - threshold) / max(spread, 1e-12)
    return float(1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0))))
