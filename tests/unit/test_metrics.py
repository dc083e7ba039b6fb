import numpy as np
import pytest

from hgad_edge.evaluation.metrics import aupro, auroc


def test_auroc_perfect_and_nan():
    assert auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert np.isnan(auroc(np.array([0, 0]), np.array([0.1, 0.2])))


def test_aupro_perfect_map_is_one_and_random_is_low():
    rng = np.random.default_rng(0)
    masks = [np.zeros((32, 32), bool) for _ in range(4)]
    masks[0][4:8, 4:8] = True
    masks[1][20:30, 2:5] = True
    perfect = [m.astype(np.float32) + 0.01 * rng.random(m.shape) for m in masks]
    assert aupro(masks, perfect) == pytest.approx(1.0, abs=1e-6)
    noise = [rng.random(m.shape).astype(np.float32) for m in masks]
    assert aupro(masks, noise) < 0.3


def test_aupro_matches_bruteforce_thresholding():
    """Against the textbook definition: threshold every map, average region overlaps."""
    import cv2

    rng = np.random.default_rng(1)
    masks = [np.zeros((24, 24), bool) for _ in range(3)]
    masks[0][2:6, 2:9] = True
    masks[0][15:20, 15:18] = True
    masks[2][10:14, 3:7] = True
    maps = [m * 0.6 + rng.random(m.shape).astype(np.float32) for m in masks]
    normal = np.concatenate([a[~m] for a, m in zip(maps, masks)])
    fprs, pros = [], []
    for t in np.sort(np.concatenate([a.ravel() for a in maps]))[::-1]:
        fpr = (normal > t).mean()
        if fpr > 0.3:
            break
        ov = []
        for a, m in zip(maps, masks):
            n, lab = cv2.connectedComponents(m.astype(np.uint8))
            ov += [(a[lab == r] > t).mean() for r in range(1, n)]
        fprs.append(fpr)
        pros.append(np.mean(ov))
    fprs, pros = np.array([0.0] + fprs + [0.3]), np.array([pros[0]] + pros + [pros[-1]])
    ref = np.trapezoid(pros, fprs) / 0.3
    assert aupro(masks, maps, steps=2001) == pytest.approx(ref, abs=0.01)
