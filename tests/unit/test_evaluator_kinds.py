"""Per-defect-kind metrics of the evaluation: each kind's images against the class's good ones."""
from __future__ import annotations

import numpy as np

from hgad_edge.evaluation.evaluator import _per_defect, class_metrics
from hgad_edge.postprocess import FrameRaw, Normalizer

SIZE = 32


def _frame(rng, spot: float) -> FrameRaw:
    """One level of 8x8 log-likelihoods: noise, and a dip of depth ``spot`` in the top-left quarter."""
    logp = rng.normal(0.0, 0.1, (8, 8)).astype(np.float32)
    logp[:4, :4] -= spot
    return FrameRaw(0, 1.0, np.ones(1), [logp], [np.zeros((8, 8), np.float32)])


def test_each_kind_is_scored_against_the_good_images_only():
    rng = np.random.default_rng(0)
    norm = Normalizer([0.0], [0.0], 1.0, 1.0, [np.zeros((8, 8), np.float32)], [0.1])
    kinds = ["good"] * 6 + ["loud"] * 3 + ["faint"] * 3
    spots = [0.0] * 6 + [5.0] * 3 + [0.0] * 3  # "faint" images look exactly like good ones
    frames = [_frame(rng, s) for s in spots]
    masks = [np.zeros((SIZE, SIZE), bool)] * 6 + [np.pad(np.ones((16, 16), bool), ((0, 16), (0, 16)))] * 6
    labels = np.array([k != "good" for k in kinds])
    p = {"known": frames, "auto": frames, "masks": masks, "labels": list(labels), "kinds": kinds}
    out = _per_defect(p, lambda _: norm, SIZE, "position")
    assert sorted(out) == ["faint", "loud"] and out["loud"]["n_images"] == 3
    assert out["loud"]["known"]["image_auroc"] == 1.0 and out["loud"]["known"]["pixel_auroc"] > 0.95
    assert out["faint"]["known"]["image_auroc"] < 0.9  # not lifted by the loud kind's images
    # the same as scoring the subset by hand; and the pooled AUROC is the positives' mean
    ref = class_metrics(frames[:6] + frames[9:], masks[:6] + masks[9:], labels[list(range(6)) + [9, 10, 11]],
                        lambda _: norm, SIZE, "position")
    assert out["faint"]["known"] == ref
    pooled = class_metrics(frames, masks, labels, lambda _: norm, SIZE, "position")["image_auroc"]
    assert np.isclose(pooled, np.mean([out[k]["known"]["image_auroc"] for k in out]))
