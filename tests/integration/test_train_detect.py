"""Train → artifact → Detector → eval/predict, end to end on real photographs."""
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from safetensors.torch import load_file

from hgad_edge import artifact, data
from hgad_edge.artifact import ArtifactError
from hgad_edge.cli.commands import main as cli_main
from hgad_edge.detector import Detector
from hgad_edge.evaluation.evaluator import evaluate
from hgad_edge.train.loop import train

from .conftest import small_configs


@pytest.fixture(scope="module")
def det(trained_run):
    return Detector(trained_run, backend="torch")


def _test_frames(root, n=4):
    samples = data.test_samples(root, data.resolve_classes(root, None))
    return samples[:n], [data.read_image(s.path) for s in samples[:n]]


def test_artifact_layout_and_checksums(trained_run):
    meta = artifact.Artifact.read(trained_run).to_dict()
    assert meta["format_version"] == artifact.FORMAT_VERSION
    assert set(meta["files"]) >= {artifact.WEIGHTS, artifact.BACKBONE}
    assert len(meta["history"]) == 3
    for c in meta["model_config"]["class_names"]:
        cal = meta["calibration"][c]
        assert len(cal["normalizer"]["ll_max"]) == len(meta["feature_shapes"])
        assert all(len(v) >= 1 for v in cal["scores"].values())
    with open(os.path.join(trained_run, artifact.WEIGHTS), "rb") as f:
        assert b"\x80\x04" not in f.read(16), "weights must be safetensors, not a pickle"


def test_result_fields_and_shapes(det, demo_root):
    samples, frames = _test_frames(demo_root, 1)
    frame = cv2.resize(frames[0], (150, 100))  # non-square input: map comes back at input size
    r = det(frame)
    assert r.anomaly_map.shape == (100, 150) and r.anomaly_map.dtype == np.float32
    assert r.mask.shape == (100, 150) and r.mask.dtype == bool
    assert 0.0 <= r.score <= 1.0 and np.isfinite(r.raw_score)
    assert r.class_name in det.class_names and 0.0 <= r.class_confidence <= 1.0
    assert r.is_anomaly == (r.raw_score > r.threshold) == (r.score > 0.5)
    assert {"preprocess", "backbone", "flow", "gmm", "postprocess", "total"} <= set(r.timings_ms)
    given = det(frame, class_name=det.class_names[-1])
    assert given.class_name == det.class_names[-1]


def test_unknown_class_is_a_clear_error(det, demo_root):
    _, frames = _test_frames(demo_root, 1)
    with pytest.raises(ValueError, match="unknown class 'widget'"):
        det(frames[0], class_name="widget")


def test_score_of_a_frame_does_not_depend_on_its_batch(det, demo_root):
    _, frames = _test_frames(demo_root, 4)
    alone = [det(f) for f in frames]
    batch = det.predict(frames)
    reversed_batch = det.predict(frames[::-1])[::-1]
    for a, b, c in zip(alone, batch, reversed_batch):
        assert a.class_name == b.class_name == c.class_name
        assert b.raw_score == pytest.approx(a.raw_score, rel=1e-5, abs=1e-6)
        assert c.raw_score == pytest.approx(a.raw_score, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(b.anomaly_map, a.anomaly_map, rtol=1e-4, atol=1e-5)


def test_target_fpr_moves_the_threshold(trained_run):
    from hgad_edge.calibrate import threshold

    d = Detector(trained_run, backend="torch", target_fpr=0.99)
    cal = d.artifact.calibration
    assert d.thresholds == [threshold(cal[c]["scores"][d.combine], 0.99) for c in d.class_names]
    d.set_target_fpr(0.01)
    assert d.thresholds == [threshold(cal[c]["scores"][d.combine], 0.01) for c in d.class_names]
    with pytest.raises(ValueError, match="target_fpr"):
        d.set_target_fpr(1.5)
    scores = list(np.linspace(0.0, 1.0, 101))
    assert threshold(scores, 0.5)[0] == pytest.approx(0.5) and threshold(scores, 0.01)[0] == pytest.approx(0.99)
    assert threshold(scores, 0.5)[0] < threshold(scores, 0.1)[0] < threshold(scores, 0.01)[0]


def test_modified_missing_and_unknown_version_artifacts(trained_run, tmp_path):
    bad = str(tmp_path / "bad")
    shutil.copytree(trained_run, bad)
    with open(os.path.join(bad, artifact.WEIGHTS), "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ArtifactError, match="modified or damaged"):
        Detector(bad, backend="torch")
    os.remove(os.path.join(bad, artifact.WEIGHTS))
    with pytest.raises(ArtifactError, match="missing"):
        Detector(bad, backend="torch")
    shutil.rmtree(bad)
    shutil.copytree(trained_run, bad)
    meta = json.load(open(os.path.join(bad, artifact.META)))
    meta["format_version"] = 99
    json.dump(meta, open(os.path.join(bad, artifact.META), "w"))
    with pytest.raises(ArtifactError, match="format version 99"):
        Detector(bad, backend="torch")
    with pytest.raises(ArtifactError, match="not an hgad_edge model"):
        Detector(str(tmp_path), backend="torch")


def test_every_map_is_calibrated_and_older_artifacts_say_which(trained_run, demo_root, tmp_path):
    frame = data.read_image(data.test_samples(demo_root, ["brick"])[0].path)
    assert artifact.Artifact.read(trained_run).to_dict()["combine"] == "position"
    for mode in ("position", "loglik", "product", "entropy"):
        r = Detector(trained_run, backend="torch", combine=mode)(frame)
        assert np.isfinite(r.anomaly_map).all() and r.threshold == r.threshold, mode
    old = str(tmp_path / "old")  # as written before the "position" map existed
    shutil.copytree(trained_run, old)
    meta = json.load(open(os.path.join(old, artifact.META)))
    meta["combine"] = "loglik"
    for cal in meta["calibration"].values():
        del cal["scores"]["position"], cal["normalizer"]["ll_pos_mean"], cal["normalizer"]["ll_pos_sd"]
    meta[artifact.CONTENT_KEY] = artifact.content_checksum(meta)
    json.dump(meta, open(os.path.join(old, artifact.META), "w"))
    assert Detector(old, backend="torch")(frame).anomaly_map.shape == frame.shape[:2]
    with pytest.raises(ValueError, match="calibrated for the maps .*'loglik'.*not 'position'"):
        Detector(old, backend="torch", combine="position")


def test_resume_continues_exactly(demo_root, tmp_path):
    mcfg, tcfg = small_configs(demo_root, epochs=2)
    straight = str(tmp_path / "straight")
    train(demo_root, straight, mcfg, tcfg, progress=False)
    resumed = str(tmp_path / "resumed")
    _, t1 = small_configs(demo_root, epochs=1)
    train(demo_root, resumed, mcfg, t1, progress=False)
    os.remove(os.path.join(resumed, artifact.META))  # as if killed after epoch 1's checkpoint
    train(demo_root, resumed, mcfg, tcfg, resume=True, progress=False)
    a = load_file(os.path.join(straight, artifact.WEIGHTS))
    b = load_file(os.path.join(resumed, artifact.WEIGHTS))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    ma, mb = artifact.Artifact.read(straight).to_dict(), artifact.Artifact.read(resumed).to_dict()
    assert [h["epoch"] for h in mb["history"]] == [1, 2]
    assert mb["history"][-1]["loss"] == pytest.approx(ma["history"][-1]["loss"], rel=1e-5)


def test_training_refuses_to_overwrite_a_model(trained_run, demo_root):
    mcfg, tcfg = small_configs(demo_root)
    with pytest.raises(ValueError, match="already holds a trained model"):
        train(demo_root, trained_run, mcfg, tcfg, progress=False)


def test_evaluate_reports_every_metric(det, trained_run, demo_root):
    rep = evaluate(trained_run, demo_root, detector=det, full=True, progress=False)
    assert set(rep["classes"]) == set(det.class_names)
    for mode in ("known", "auto", "transductive", "known_loglik", "known_entropy", "known_product"):
        for k in ("image_auroc", "pixel_auroc", "aupro"):
            v = rep["mean"][mode][k]
            assert 0.0 <= v <= 1.0, (mode, k, v)
    assert 0.0 <= rep["mean"]["routing_accuracy"] <= 1.0
    # The routed class's metrics equal the known-class ones wherever routing was right.
    for name, row in rep["classes"].items():
        if row["routing_accuracy"] == 1.0:
            assert row["auto"] == row["known"], name


def test_cli_eval_and_predict(trained_run, demo_root, tmp_path, capsys):
    out_json = str(tmp_path / "m.json")
    assert cli_main(["eval", trained_run, "--data", demo_root, "--json", out_json, "--quiet"]) == 0
    assert "routing" in capsys.readouterr().out
    assert json.load(open(out_json))["mean"]["known"]["image_auroc"] >= 0.0
    samples, _ = _test_frames(demo_root, 2)
    out = str(tmp_path / "overlays")
    assert cli_main(["predict", trained_run, *[s.path for s in samples], "--out", out, "--backend", "torch"]) == 0
    pngs = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if f.endswith(".png")]
    assert len(pngs) == 2  # overlays keep the inputs' relative paths as subfolders
    img = cv2.imread(pngs[0])
    assert img is not None and img.shape[:2] == (128, 128)
    assert len(json.load(open(os.path.join(out, "predictions.json")))) == 2


def test_cli_errors_are_messages_not_tracebacks(tmp_path, capsys):
    assert cli_main(["eval", str(tmp_path), "--data", str(tmp_path), "--quiet"]) == 2
    assert "error" in capsys.readouterr().err


def test_rgb_channel_order_equals_bgr_input(trained_run, det, demo_root):
    _, frames = _test_frames(demo_root, 1)
    rgb = Detector(trained_run, backend="torch", channel_order="rgb")
    a, b = det(frames[0]), rgb(np.ascontiguousarray(frames[0][:, :, ::-1]))
    assert b.raw_score == pytest.approx(a.raw_score, rel=1e-6)
    with pytest.raises(ValueError, match="rgb"):
        Detector(trained_run, backend="torch", channel_order="hsv")
