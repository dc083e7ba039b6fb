"""Routing under anomaly (issue 18) and the unknown-class outcome (issue 17).

The rule (``hgad_edge.gmm.route``): each position votes for the argmax of its inter-class
posterior, the class with the largest vote share averaged over the levels wins, ties go to the
level-averaged posterior mean. A
defect can be confidently "another class" at its own positions; under the old rule (argmax of the
image-mean posterior) such positions outweighed a larger, less confidently classified normal
surface. Every backend follows the rule: the numpy fallback, the native kernel (``class_index=-1``
of one level and the Scorer's multi-level path), the full ONNX graph (run in ONNX Runtime), and
the CUDA entry points (``tests/gpu/test_gmm_device.py``, and their stand-in here).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hgad_edge import data
from hgad_edge import gmm as G
from hgad_edge.detector import Detector
from hgad_edge.postprocess import UNKNOWN_Z, FrameRaw, Normalizer, familiarity, finalize
from hgad_edge.runtime.scorer import Scorer

SHAPES = [(8, 8), (4, 4), (2, 2)]  # finest level first, as every model orders its levels
D = 4


def _two_class_level(seed: int):
    """Two classes 4 apart on axis 0; 10 intra centers each around its main center."""
    rng = np.random.default_rng(seed)
    mu = np.zeros((2, D), np.float32)
    mu[1, 0] = 4.0
    mu_intra = (mu[:, None, :] + 0.1 * rng.standard_normal((2, 10, D))).astype(np.float32)
    mu_intra[:, 0] = mu
    return dict(mu=mu, log_pi_inter=np.log(np.full(2, 0.5, np.float32)), mu_intra=mu_intra,
                log_pi_intra=np.log(np.full((2, 10), 0.1, np.float32)))


def _frame_with_defect(defect_share: float, seed: int = 0, defect_x: float = 12.0):
    """Per level z (1, N, D): normal positions of class 0 that the posterior calls class 0 only
    softly (x = 1.9, posterior ≈ 0.6), and a block of ``defect_share`` of the positions on the
    class-1 side: ``defect_x`` = 12 is out of distribution for both classes (posterior ≈ 1 for
    class 1), 4 is class 1's own surface (a piece of the other product pasted in)."""
    rng = np.random.default_rng(seed)
    levels = []
    for h, w in SHAPES:
        z = np.zeros((h, w, D), np.float32)
        z[..., 0] = 1.9
        z[..., 1:] = 0.05 * rng.standard_normal((h, w, D - 1))
        n_def = int(round(defect_share * h * w))
        z.reshape(-1, D)[:n_def, 0] = defect_x  # the defect: the first rows of the map
        levels.append((z.reshape(1, h * w, D), np.zeros((1, h * w), np.float32)))
    return levels


class _NoBackend:
    """The Scorer's backend is not used by ``score`` (the levels are given)."""


@pytest.mark.parametrize("defect_x", [12.0, 4.0], ids=["foreign", "pasted-from-other-class"])
@pytest.mark.parametrize("backend", [pytest.param("native", marks=pytest.mark.skipif(
    not G.has_native(), reason="hgad_edge._C not built")), "numpy"])
def test_confident_defect_positions_do_not_drag_the_class(backend, defect_x):
    """A defect of 25 % of the frame, pasted from another class (or foreign), stays on its class."""
    params = [_two_class_level(l) for l in range(len(SHAPES))]
    gmms = [G.GaussianMixture(**p, backend=backend) for p in params]
    scorer = Scorer(_NoBackend(), gmms, SHAPES, 64)
    levels = _frame_with_defect(0.25, defect_x=defect_x)
    raw = scorer.score(levels, 0, None)
    # what the old rule saw: more posterior mass on class 1 (the defect is sure, the surface is not)
    assert raw.posterior[1] > raw.posterior[0]
    assert raw.class_index == 0 and raw.routed
    # every level alone, through the one-level entry point (native kernel / numpy: class_index=-1)
    for g, (z, ld) in zip(gmms, levels):
        assert g.fused(z[0], ld[0], -1).class_index == 0
    # a given class is taken as is, and such a frame is then never "unknown"
    assert scorer.score(levels, 0, 1).class_index == 1 and not scorer.score(levels, 0, 1).routed
    # up to the point where the defect covers most of the positions
    assert scorer.score(_frame_with_defect(0.45, defect_x=defect_x), 0, None).class_index == 0
    assert scorer.score(_frame_with_defect(0.6, defect_x=defect_x), 0, None).class_index == 1


def test_route_matches_a_float64_reference_of_the_rule():
    """route() of float32 inputs == the rule written out in float64 (on inputs where float32 and
    float64 agree: dyadic vote shares, means on a 1/8 grid)."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        L, C = int(rng.integers(1, 5)), int(rng.integers(1, 9))
        votes = (rng.integers(0, 5, size=(L, C)) / 4).astype(np.float32)
        means = (rng.integers(0, 9, size=(L, C)) / 8).astype(np.float32)
        v0, m = votes.astype(np.float64).mean(axis=0), means.astype(np.float64).mean(axis=0)
        want = max(range(C), key=lambda c: (v0[c], m[c], -c))
        assert G.route(votes, means) == want


def _gmm_only_onnx(params, tmp_path) -> str:
    from hgad_edge.export.gmm_graph import GMMScoring

    scoring = GMMScoring.from_arrays(params, SHAPES)

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scoring = scoring

        def forward(self, z0, l0, z1, l1, z2, l2, class_index):
            return self.scoring([(z0, l0), (z1, l1), (z2, l2)], class_index)

    path = str(tmp_path / "gmm.onnx")
    args = tuple(torch.from_numpy(a) for lv in _frame_with_defect(0.25) for a in lv) + (torch.tensor([-1]),)
    names = ["z0", "l0", "z1", "l1", "z2", "l2", "class_index"]
    torch.onnx.export(Flat().eval(), args, path, dynamo=False, opset_version=17, input_names=names,
                      output_names=["posterior", "routed_class"] + [f"m{i}" for i in range(6)],
                      dynamic_axes={n: {0: "b"} for n in names})
    return path


def test_full_onnx_graph_routes_by_the_same_rule(tmp_path):
    from hgad_edge.runtime.ort import make_session

    params = [_two_class_level(l) for l in range(len(SHAPES))]
    sess = make_session(_gmm_only_onnx(params, tmp_path), threads=1)
    gmms = [G.GaussianMixture(**p, backend="numpy") for p in params]
    scorer = Scorer(_NoBackend(), gmms, SHAPES, 64)
    for share in (0.0, 0.25, 0.45, 0.6, 1.0):
        levels = _frame_with_defect(share, seed=int(share * 100))
        feed = {n: a for n, a in zip(["z0", "l0", "z1", "l1", "z2", "l2"], [a for lv in levels for a in lv])}
        out = sess.run(None, {**feed, "class_index": np.array([-1], np.int64)})
        assert int(out[1][0]) == scorer.score(levels, 0, None).class_index == (0 if share < 0.5 else 1), share


@pytest.fixture(scope="module")
def detector(trained_run):
    with Detector(trained_run, backend="torch", device="cpu") as det:
        yield det


def test_a_frame_of_no_known_product_is_an_unknown_class(detector, demo_root):
    """The Detector's verdict is ``familiarity < UNKNOWN_Z`` of the routed class; a blank white
    frame is far from every class even for the small test model, the normal test images are
    known, and a given class is never "unknown". (The 3-epoch test model is too weak to tell
    photographs apart from its classes; on the demo model they are: README "Routing under
    anomaly".)"""
    import skimage.data

    white = np.full((128, 128, 3), 255, np.uint8)
    photos = [np.ascontiguousarray(p[..., ::-1]) for p in (skimage.data.astronaut(), skimage.data.chelsea())]
    frames = [white] + photos
    results = detector.predict(frames)
    levels, _ = detector.scorer.forward(frames)
    for j, r in enumerate(results):
        raw = detector.scorer.score(levels, j, None)
        assert r.is_unknown == (familiarity(raw, detector.normalizers[raw.class_index]) < UNKNOWN_Z)
        assert r.nearest_class == detector.class_names[raw.class_index]
        assert r.class_name == (None if r.is_unknown else r.nearest_class)
    assert results[0].is_unknown and results[0].class_name is None
    assert results[0].summary()["is_unknown"] is True and results[0].summary()["class_name"] is None
    given = detector(white, class_name=detector.class_names[0])
    assert not given.is_unknown and given.class_name == detector.class_names[0]
    normal = [data.read_image(s.path) for s in data.test_samples(demo_root, detector.class_names) if not s.is_anomaly]
    assert not any(r.is_unknown for r in detector.predict(normal))


def test_familiarity_threshold_and_older_calibrations():
    norm = Normalizer([0.0], [0.0], 1.0, 1.0, ll_pos_mean=[np.zeros((2, 2), np.float32)], ll_pos_sd=[0.5])
    raw = FrameRaw(0, 0.9, np.array([0.9, 0.1]), [np.full((2, 2), -3.0, np.float32)], [np.zeros((2, 2), np.float32)],
                   routed=True)
    assert familiarity(raw, norm) == pytest.approx(-6.0) and -6.0 < UNKNOWN_Z
    r = finalize(raw, norm, (1.0, 0.1), "brick", 16, "loglik")
    assert r.is_unknown and r.class_name is None and r.nearest_class == "brick"
    # one position far off, the median (most of the frame) normal: known
    near = FrameRaw(0, 0.9, raw.posterior, [np.array([[-30.0, 0.0], [0.0, 0.1]], np.float32)], raw.entropy,
                    routed=True)
    assert not finalize(near, norm, (1.0, 0.1), "brick", 16, "loglik").is_unknown
    # a given class (not routed), or a calibration without per-position statistics: never unknown
    given = FrameRaw(0, 0.9, raw.posterior, raw.logp, raw.entropy)
    assert not finalize(given, norm, (1.0, 0.1), "brick", 16, "loglik").is_unknown
    old = Normalizer([0.0], [0.0], 1.0, 1.0)
    assert math.isnan(familiarity(raw, old))
    assert finalize(raw, old, (1.0, 0.1), "brick", 16, "loglik").class_name == "brick"


def test_eval_reports_routing_on_normal_and_defective_images_separately(detector, demo_root):
    from hgad_edge.evaluation.evaluator import evaluate, format_table
    from hgad_edge.fileio import dumps

    report = evaluate(detector.model_dir, demo_root, detector=detector, progress=False)
    for name, row in report["classes"].items():
        assert row["n_normal"] + row["n_defective"] == row["n_images"]
        for key in ("routing_normal", "routing_defective", "unknown_normal", "unknown_defective"):
            assert 0.0 <= row[key] <= 1.0, (name, key)
    mean = report["mean"]
    n_normal = sum(r["n_normal"] for r in report["classes"].values())
    pooled = sum(r["routing_normal"] * r["n_normal"] for r in report["classes"].values()) / n_normal
    assert mean["routing_normal"] == pytest.approx(pooled)
    assert '"routing_defective"' in dumps(report)
    table = format_table(report)
    assert "normal defect" in table and f"{mean['routing_defective']:.3f}" in table
