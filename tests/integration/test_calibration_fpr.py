"""The target FPR moves the threshold even when it is finer than the held-out scores resolve.

n calibration scores resolve an FPR down to 1/n; below it the threshold comes from a Gumbel tail
fitted to them (``calibrate.threshold``), and the Detector says so once. Checked on a trained
model (6 held-out images a class, so 0.05, 0.01 and 0.001 are all finer than 1/6) and against a
float64 reference of the tail written here with the standard library only.
"""
from __future__ import annotations

import logging
import math
import statistics

import numpy as np
import pytest

from hgad_edge import data
from hgad_edge.calibrate import MIN_TAIL_SCORES, gumbel_quantile, threshold, threshold_basis
from hgad_edge.config import ModelConfig, TrainConfig
from hgad_edge.detector import Detector
from hgad_edge.train.loop import train

FPRS = (0.05, 0.01, 0.001)


def _reference(scores, fpr):
    """The threshold by the documented rule, in float64 with the standard library only."""
    s = sorted(float(x) for x in scores)
    n = len(s)
    if fpr * n >= 1:
        return s[math.ceil((1.0 - fpr) * (n - 1))]  # numpy's quantile method="higher"
    if n < MIN_TAIL_SCORES:
        return s[-1]
    beta = statistics.stdev(s) * math.sqrt(6.0) / math.pi
    mu = statistics.fmean(s) - 0.5772156649015329 * beta
    return max(s[-1], mu - beta * math.log(-math.log(1.0 - fpr)))


@pytest.fixture(scope="module")
def run6(tiny_root, tmp_path_factory) -> str:
    """A 2-epoch model of tiny_root (grass, retina: 8 train/good each), 6 of them held out a class."""
    out = str(tmp_path_factory.mktemp("fpr") / "run")
    mcfg = ModelConfig(class_names=data.resolve_classes(tiny_root, None), image_size=64, coupling_blocks=1,
                       n_intra=2, pos_dim=32)
    train(tiny_root, out, mcfg, TrainConfig(epochs=2, batch_size=4, stage1_epochs=1, calib_fraction=0.75),
          progress=False, replay_per_class=0)
    return out


def test_three_fprs_give_three_thresholds_on_a_trained_model(run6):
    det = Detector(run6, backend="torch", target_fpr=FPRS[0])
    by_fpr, info = {}, {}
    for fpr in FPRS:
        det.set_target_fpr(fpr)
        by_fpr[fpr], info[fpr] = [t for t, _ in det.thresholds], getattr(det, "threshold_info", None)
    for c in range(len(det.class_names)):
        assert by_fpr[0.05][c] < by_fpr[0.01][c] < by_fpr[0.001][c]  # the old rule gave the maximum for all three
    for fpr in FPRS:
        for c, name in enumerate(det.class_names):
            assert info[fpr][name] == {"n": 6, "finest_fpr": pytest.approx(1 / 6), "basis": "gumbel"}
            assert by_fpr[fpr][c] == pytest.approx(_reference(det.artifact.scores(name, det.combine), fpr),
                                                   rel=1e-12, abs=1e-12)
    # scoring follows: a frame between two thresholds flips its verdict
    frame = data.read_image(data.test_samples(det.artifact.data["root"], det.class_names)[0].path)
    det.set_target_fpr(0.5)  # resolved by 6 scores: the empirical quantile
    assert set(b["basis"] for b in det.threshold_info.values()) == {"empirical"}
    r = det(frame)
    assert r.threshold == pytest.approx(_reference(det.artifact.scores(r.class_name, det.combine), 0.5))


def test_a_fpr_finer_than_the_scores_resolve_is_logged_once(run6, tiny_root, caplog):
    frame = data.read_image(data.train_samples(tiny_root, ["grass"])[0].path)

    def said():
        return [r.getMessage() for r in caplog.records if "finer than the calibration scores" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="hgad_edge.detector"):
        det = Detector(run6, backend="torch", target_fpr=0.01)
        assert said() == []  # not at load: a CLI run that fails before scoring prints only its error
        det(frame)
        det.predict([frame, frame])
        det.set_target_fpr(0.2)  # 0.2 · 6 ≥ 1: resolved, no warning
        det(frame)
        det.set_target_fpr(0.01)  # said already
        det(frame)
        assert len(said()) == 1, said()
        det.set_target_fpr(0.001)
        det(frame)
    assert len(said()) == 2, said()
    first = said()[0]
    assert "target FPR 0.01 " in first and "n = 6" in first and "finest FPR 1/n = 0.167" in first
    assert "grass" in first and "retina" in first and "target FPR 0.001 " in said()[1]


def test_threshold_rule_matches_a_float64_reference():
    rng = np.random.default_rng(3)
    for n in (1, 2, 4, 5, 12, 60, 101, 400):
        scores = list(rng.gumbel(5.0, 1.5, size=n).astype(np.float32))
        last = -math.inf
        for fpr in (0.9, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.001, 1e-5):
            thr, spread = threshold(scores, fpr)
            assert thr == pytest.approx(_reference(scores, fpr), rel=1e-12, abs=1e-12), (n, fpr)
            assert thr >= last and spread > 0  # a finer FPR never lowers the threshold
            last = thr
        assert threshold_basis(n, 1e-5) == ("gumbel" if n >= MIN_TAIL_SCORES else "max")
    # the fitted tail recovers a known Gumbel's quantiles from many samples
    big = rng.gumbel(2.0, 0.5, size=400_000)
    for q in (0.99, 0.999):
        assert gumbel_quantile(big, q) == pytest.approx(2.0 - 0.5 * math.log(-math.log(q)), rel=5e-3)
    with pytest.raises(ValueError, match="target_fpr"):
        threshold([1.0, 2.0], 0.0)
