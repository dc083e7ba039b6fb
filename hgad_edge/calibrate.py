"""Calibration on held-out normal images: per-class normalizers, score distributions, thresholds.

No anomalous sample is needed: the threshold is the (1 − target FPR) quantile of the image
scores of held-out normal images of that class, and can be moved at load time. n scores resolve
an FPR down to 1/n; a finer one is read off a Gumbel distribution fitted to them (an image score
is the maximum of a map, and maxima have Gumbel tails), never below their largest score.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from hgad_edge.postprocess import COMBINE_MODES, Normalizer, anomaly_map, normality_sums
from hgad_edge.postprocess import FrameRaw


def fit_normalizer(raws: Sequence[FrameRaw], image_size: int) -> Normalizer:
    """Per-level maxima/minima over normal frames, then the maxima of the summed maps; per level
    also the mean log-likelihood at each position and its spread (std over frames and positions)."""
    if not raws:
        raise ValueError("calibration needs at least one normal image per class")
    n_levels = len(raws[0].logp)
    ll_max = [max(float(r.logp[l].max()) for r in raws) for l in range(n_levels)]
    ent_min = [min(float(r.entropy[l].min()) for r in raws) for l in range(n_levels)]
    provisional = Normalizer(ll_max, ent_min, 0.0, 0.0)
    sums = [normality_sums(r.logp, r.entropy, provisional, image_size) for r in raws]
    stacks = [np.stack([r.logp[l] for r in raws]).astype(np.float64) for l in range(n_levels)]  # (n, h, w)
    return Normalizer(ll_max, ent_min, max(float(s[0].max()) for s in sums), max(float(s[1].max()) for s in sums),
                      ll_pos_mean=[st.mean(axis=0).astype(np.float32) for st in stacks],
                      ll_pos_sd=[max(float(st.std()), 1e-6) for st in stacks])


def _leave_one_out(norm: Normalizer, raws: Sequence[FrameRaw], i: int) -> Normalizer:
    """``norm`` with frame ``i`` taken out of the per-position means, so a calibration frame is scored
    like an unseen frame (its own values would pull the means toward it and its score down)."""
    n = len(raws)
    if n < 2:
        return norm
    means = [(n * m - raws[i].logp[l]) / (n - 1) for l, m in enumerate(norm.ll_pos_mean)]
    return dataclasses.replace(norm, ll_pos_mean=[m.astype(np.float32) for m in means])


def image_scores(raws: Sequence[FrameRaw], norm: Normalizer, image_size: int, combine: str) -> List[float]:
    """Image scores of calibration frames; for "position", each frame left out of the means."""
    return [float(anomaly_map(r.logp, r.entropy, _leave_one_out(norm, raws, i) if combine == "position" else norm,
                              image_size, combine).max()) for i, r in enumerate(raws)]


# Fewer scores than this fit no tail: an FPR finer than 1/n then gets their largest score.
MIN_TAIL_SCORES = 5
_EULER_GAMMA = 0.5772156649015329


def threshold_basis(n_scores: int, target_fpr: float) -> str:
    """How :func:`threshold` sets a threshold from ``n_scores`` normal scores at ``target_fpr``:
    "empirical" (FPR ≥ 1/n, the sample quantile), "gumbel" (finer, extrapolated from the fitted
    tail) or "max" (finer, but fewer than ``MIN_TAIL_SCORES`` scores: the largest of them)."""
    if target_fpr * n_scores >= 1.0:
        return "empirical"
    return "gumbel" if n_scores >= MIN_TAIL_SCORES else "max"


def gumbel_quantile(scores: Sequence[float], q: float) -> float:
    """The ``q`` quantile of the Gumbel (maximum) distribution with the mean and standard deviation
    (ddof 1) of ``scores``: μ − β·ln(−ln q), β = σ·√6/π, μ = mean − γ·β (float64)."""
    s = np.asarray(scores, dtype=np.float64)
    beta = float(s.std(ddof=1)) * math.sqrt(6.0) / math.pi
    mu = float(s.mean()) - _EULER_GAMMA * beta
    return mu - beta * math.log(-math.log(q))


def threshold(scores: Sequence[float], target_fpr: float) -> Tuple[float, float]:
    """(threshold, spread) of a class at ``target_fpr`` from its normal calibration scores.

    The threshold is the (1 − FPR) sample quantile (``method="higher"``) when the scores resolve
    the FPR (FPR ≥ 1/n); for a finer FPR the larger of their maximum and the (1 − FPR) quantile of
    a Gumbel fitted to them (:func:`threshold_basis`), so a larger FPR never gives a higher one. The
    spread (scale of the logistic score) is threshold − median (fallback: their std).
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if s.size == 0:
        raise ValueError("no calibration scores stored for this class")
    basis = threshold_basis(s.size, target_fpr)
    if basis == "empirical":
        thr = float(np.quantile(s, 1.0 - target_fpr, method="higher"))
    elif basis == "gumbel":
        thr = max(float(s[-1]), gumbel_quantile(s, 1.0 - target_fpr))
    else:
        thr = float(s[-1])
    spread = thr - float(np.median(s))
    if spread <= 0:
        spread = float(s.std()) or max(abs(thr) * 1e-3, 1e-12)
    return thr, spread


def calibrate_class(raws: Sequence[FrameRaw], image_size: int) -> Dict[str, object]:
    """Normalizer and, per combine mode, the sorted image scores of one class's normal frames."""
    norm = fit_normalizer(raws, image_size)
    scores = {mode: sorted(image_scores(raws, norm, image_size, mode)) for mode in COMBINE_MODES}
    return {"normalizer": norm.to_dict(), "scores": scores}
