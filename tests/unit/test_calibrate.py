"""Per-position calibrated scoring ("position" map): formula, leave-one-out scores, serialisation."""
import json

import cv2
import numpy as np
import pytest

from hgad_edge.calibrate import calibrate_class, fit_normalizer, image_scores
from hgad_edge.postprocess import Normalizer, anomaly_map
from hgad_edge.postprocess import FrameRaw

SHAPES = [(8, 8), (4, 4)]
SIZE = 32


def _raws(n, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        logp = [(rng.normal(size=s) + shift + np.arange(s[1])[None, :] * 0.3).astype(np.float32) for s in SHAPES]
        ent = [rng.uniform(0, 1, size=s).astype(np.float32) for s in SHAPES]
        out.append(FrameRaw(0, 1.0, np.ones(1), logp, ent))
    return out


def test_position_map_matches_float64_formula():
    cal, test = _raws(12), _raws(1, seed=1)[0]
    norm = fit_normalizer(cal, SIZE)
    stacks = [np.stack([r.logp[l] for r in cal]).astype(np.float64) for l in range(len(SHAPES))]
    want = np.zeros((SIZE, SIZE))
    for l, st in enumerate(stacks):
        z = (st.mean(0) - test.logp[l].astype(np.float64)) / st.std()
        want += cv2.resize(z, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    got = anomaly_map(test.logp, test.entropy, norm, SIZE, "position", blur_sigma=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_position_map_removes_a_fixed_positional_offset():
    """A column-dependent offset shared by every normal frame must not show in the map."""
    norm = fit_normalizer(_raws(30), SIZE)
    test = _raws(20, seed=7)

    def left_minus_right(mode):
        amap = np.mean([anomaly_map(t.logp, t.entropy, norm, SIZE, mode, blur_sigma=0) for t in test], axis=0)
        return amap[:, :SIZE // 4].mean() - amap[:, -SIZE // 4:].mean()

    assert abs(left_minus_right("position")) < 0.3  # the offset spans 2.1 logp units (≈ 1.9 sd)
    assert left_minus_right("loglik") > 0  # the global-maximum map keeps the offset


def test_calibration_scores_leave_each_frame_out():
    cal = _raws(6)
    norm = fit_normalizer(cal, SIZE)
    got = image_scores(cal, norm, SIZE, "position")
    for i, r in enumerate(cal):
        others = fit_normalizer(cal[:i] + cal[i + 1:], SIZE)
        loo = Normalizer(norm.ll_max, norm.ent_min, norm.ll_sum_max, norm.ent_sum_max,
                         others.ll_pos_mean, norm.ll_pos_sd)
        want = float(anomaly_map(r.logp, r.entropy, loo, SIZE, "position").max())
        assert got[i] == pytest.approx(want, rel=1e-5, abs=1e-5)
    in_sample = [float(anomaly_map(r.logp, r.entropy, norm, SIZE, "position").max()) for r in cal]
    assert np.mean(got) > np.mean(in_sample)  # seen-frame scores are optimistic; LOO ones are not


def test_normalizer_round_trips_through_json():
    norm = Normalizer.from_dict(calibrate_class(_raws(5), SIZE)["normalizer"])
    back = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    for a, b in zip(norm.ll_pos_mean, back.ll_pos_mean):
        np.testing.assert_array_equal(a, b)
    assert back.ll_pos_sd == norm.ll_pos_sd


def test_old_calibration_without_positions_says_so():
    d = calibrate_class(_raws(3), SIZE)["normalizer"]
    old = {k: v for k, v in d.items() if not k.startswith("ll_pos")}
    raw = _raws(1)[0]
    with pytest.raises(ValueError, match="per-position"):
        anomaly_map(raw.logp, raw.entropy, Normalizer.from_dict(old), SIZE, "position")
    anomaly_map(raw.logp, raw.entropy, Normalizer.from_dict(old), SIZE, "loglik")  # other maps still work
