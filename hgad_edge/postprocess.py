"""Per-level log-likelihood / entropy maps → anomaly map, image score, threshold → ``Result``
(docs/design.md §2). ``finalize`` is the one post-processing step of every path (Detector,
evaluation, bench, the Triton client).

The official HGAD normalises each level by its maximum over the *test set*. A stream has no
test set, so every such maximum here is a constant calibrated on held-out normal images of the
routed class (``Normalizer``); one frame's score never depends on another frame.

The "position" map goes one step further: per level it subtracts the mean log-likelihood that
normal images of the class reach *at each feature position* and divides by the class's spread.
Border cells of a zero-padded CNN have their own feature statistics and were the likeliest false
alarms of the global-maximum maps; measured on the demo dataset (README "Accuracy") this map
gained +0.015 to +0.05 image AUROC over "loglik" on the same unpooled models and +0.08 on the
pooled default (0.960 vs 0.882) (``benchmarks/accuracy_sweep.py``, ``hgad-edge eval --full``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from hgad_edge.result import Result

COMBINE_MODES = ("product", "loglik", "entropy", "position")
BLUR_SIGMA = 4.0
# A routed frame is of an unknown class when its familiarity (below) is under this many
# calibration spreads: on the demo model normal, defective and pasted-patch test images reach
# >= -1.6 and photographs of other things (skimage astronaut, chelsea, coffee mug, ...) <= -5.9
# (README "Routing under anomaly").
UNKNOWN_Z = -4.0


@dataclass
class FrameRaw:
    """The routed class and per-level maps of one frame, before normalisation (the scorer's output)."""

    class_index: int
    class_confidence: float
    posterior: np.ndarray  # (C,) image-mean inter-class posterior, averaged over levels
    logp: List[np.ndarray]  # per level (h_l, w_l)
    entropy: List[np.ndarray]  # per level (h_l, w_l)
    routed: bool = False  # the class was routed (not given): only then can the frame be unknown


@dataclass
class Normalizer:
    """Calibrated constants of one class (all lists have one entry per level)."""

    ll_max: List[float]  # max logp per level over normal images
    ent_min: List[float]  # min entropy per level over normal images
    ll_sum_max: float  # max of the summed log-likelihood normality map
    ent_sum_max: float  # max of the summed entropy normality map
    ll_pos_mean: Optional[List[np.ndarray]] = None  # per level (h_l, w_l): mean logp at each position
    ll_pos_sd: Optional[List[float]] = None  # per level: spread of logp around those means

    def to_dict(self) -> Dict[str, object]:
        d = {"ll_max": list(map(float, self.ll_max)), "ent_min": list(map(float, self.ent_min)),
             "ll_sum_max": float(self.ll_sum_max), "ent_sum_max": float(self.ent_sum_max)}
        if self.ll_pos_mean is not None:
            d["ll_pos_mean"] = [np.asarray(m, np.float32).tolist() for m in self.ll_pos_mean]
            d["ll_pos_sd"] = list(map(float, self.ll_pos_sd))
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, object]) -> "Normalizer":
        pos = d.get("ll_pos_mean")
        return cls(list(d["ll_max"]), list(d["ent_min"]), float(d["ll_sum_max"]), float(d["ent_sum_max"]),
                   None if pos is None else [np.asarray(m, np.float32) for m in pos],
                   None if pos is None else [float(v) for v in d["ll_pos_sd"]])


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


def position_map(logp: Sequence[np.ndarray], norm: Normalizer, size: int) -> np.ndarray:
    """Σ_l upsample((mean_l − logp_l) / sd_l) at size×size: the per-position calibrated anomaly."""
    if norm.ll_pos_mean is None:
        raise ValueError("this model's calibration has no per-position statistics (written by an older "
                         "hgad_edge); retrain, or use combine='loglik'")
    total = np.zeros((size, size), dtype=np.float32)
    for m, mean, sd in zip(logp, norm.ll_pos_mean, norm.ll_pos_sd):
        z = (mean - m.astype(np.float32)) * np.float32(1.0 / sd)  # (h, w)
        total += cv2.resize(z, (size, size), interpolation=cv2.INTER_LINEAR)
    return total


def anomaly_map(logp: Sequence[np.ndarray], entropy: Sequence[np.ndarray], norm: Normalizer, size: int,
                combine: str = "product", blur_sigma: float = BLUR_SIGMA) -> np.ndarray:
    """The blurred anomaly map (S, S) float32 of one frame.

    Args:
        logp, entropy: per-level (h_l, w_l) maps of the routed class.
        combine: "product" (official: log-likelihood × entropy anomaly), "loglik", "entropy" or
            "position" (per-position calibrated log-likelihood, see the module docstring).
    """
    if combine not in COMBINE_MODES:
        raise ValueError(f"combine={combine!r}; choose one of {COMBINE_MODES}")
    if combine == "position":
        amap = position_map(logp, norm, size)
    else:
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


def familiarity(raw: FrameRaw, norm: Normalizer) -> float:
    """How normal the frame looks under its class, robustly: the median over the finest level's
    positions of ``(logp − ll_pos_mean) / ll_pos_sd`` (the class's per-position calibration on
    held-out normal images). About 0 for normal frames; a defect, even a large one, leaves most
    positions normal, so the median hardly moves; a product the model does not know moves every
    position. NaN when the calibration has no per-position statistics (older models)."""
    if norm.ll_pos_mean is None or not raw.logp:
        return float("nan")
    z = (raw.logp[0].astype(np.float64) - norm.ll_pos_mean[0]) / float(norm.ll_pos_sd[0])  # (h_0, w_0)
    return float(np.median(z))


def score_map(raw: FrameRaw, norm: Normalizer, image_size: int, combine: str,
              out_hw: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, float]:
    """(anomaly map at ``out_hw`` (default S×S), raw image score = the map's maximum at S×S)."""
    amap = anomaly_map(raw.logp, raw.entropy, norm, image_size, combine)
    raw_score = float(amap.max())
    if out_hw is not None:
        h, w = int(out_hw[0]), int(out_hw[1])
        if (h, w) != amap.shape:
            amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    return amap, raw_score


def finalize(raw: FrameRaw, norm: Normalizer, threshold: Tuple[float, float], class_name: str, image_size: int,
             combine: str, out_hw: Optional[Tuple[int, int]] = None) -> Result:
    """One frame's ``Result``: normalise with the routed class's constants, blur, resize to the
    input (``out_hw``), threshold (``threshold`` = (raw threshold, spread) of that class). A
    routed frame whose :func:`familiarity` is below ``UNKNOWN_Z`` is of an unknown class
    (``class_name=None``, ``is_unknown``; scored against the nearest class all the same)."""
    amap, raw_score = score_map(raw, norm, image_size, combine, out_hw)
    thr, spread = threshold
    unknown = bool(raw.routed and familiarity(raw, norm) < UNKNOWN_Z)  # NaN (no statistics): known
    return Result(score=calibrated_score(raw_score, thr, spread), raw_score=raw_score, is_anomaly=raw_score > thr,
                  anomaly_map=amap, mask=amap > thr, class_name=None if unknown else class_name,
                  class_confidence=raw.class_confidence, threshold=thr, is_unknown=unknown,
                  nearest_class=class_name)

