"""Detection and localization metrics: image/pixel AUROC (scikit-learn) and AUPRO."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present (say so instead of crashing)."""
    labels = np.asarray(labels).ravel().astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).ravel()))


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_fpr: float = 0.3, steps: int = 301) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, normalised to [0, 1].

    PRO(t) is the mean, over connected ground-truth regions, of the fraction of the region
    above threshold t; FPR(t) is over normal pixels. Thresholds are placed at quantiles of the
    normal pixels so the FPR axis is sampled evenly; per-region overlaps come from sorted values
    (searchsorted) instead of re-thresholding every map at every step.
    """
    normal, regions = [], []
    for m, a in zip(masks, maps):
        m = np.asarray(m, dtype=bool)
        a = np.asarray(a, dtype=np.float32)
        normal.append(a[~m])
        if m.any():
            n, lab = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
            for r in range(1, n):
                regions.append(np.sort(a[lab == r]))
    if not regions:
        return float("nan")
    normal_v = np.sort(np.concatenate(normal))
    fprs = np.linspace(0.0, max_fpr, steps)
    thr = np.quantile(normal_v, 1.0 - fprs)  # (T,) descending
    fpr_actual = 1.0 - np.searchsorted(normal_v, thr, side="right") / normal_v.size  # (T,)
    pro = np.mean([1.0 - np.searchsorted(r, thr, side="right") / r.size for r in regions], axis=0)  # (T,)
    keep = fpr_actual <= max_fpr
    x, y = fpr_actual[keep], pro[keep]
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if x[-1] < max_fpr:  # extend to exactly max_fpr with the last PRO value
        x, y = np.append(x, max_fpr), np.append(y, y[-1])
    return float(np.trapezoid(y, x) / max_fpr)
