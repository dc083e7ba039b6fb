"""ONNX Runtime vs torch on the demo test images: anomaly maps, AUROC, the full graph, the CLI.

The trained model is copied before export so the shared ``trained_run`` stays torch-only.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from hgad_edge import artifact, data
from hgad_edge.detector import Detector
from hgad_edge.evaluation.evaluator import evaluate

MAP_TOL = 1e-4  # max |ORT − torch| over pixels, relative to the torch map's range


@pytest.fixture(scope="module")
def exported_run(trained_run, tmp_path_factory) -> str:
    from hgad_edge.export.pipeline import ExportConfig, export_model

    run = str(tmp_path_factory.mktemp("exported") / "run")
    shutil.copytree(trained_run, run)
    meta = export_model(run, ExportConfig(formats=("onnx",), full_graph=True))
    assert meta.exports["onnxruntime"]["validation"]["status"] == "passed"
    assert meta.exports["onnxruntime"]["status"] == "passed"
    return run


@pytest.fixture(scope="module")
def detectors(exported_run):
    return (Detector(exported_run, backend="torch", threads=1),
            Detector(exported_run, backend="onnxruntime", threads=1))


@pytest.fixture(scope="module")
def test_frames(demo_root, exported_run):
    names = artifact.Artifact.read(exported_run).to_dict()["model_config"]["class_names"]
    samples = data.test_samples(demo_root, names)
    return samples, [data.read_image(s.path) for s in samples]


def test_export_is_registered_with_checksums(exported_run):
    meta = artifact.Artifact.read(exported_run).to_dict()  # verifies every checksum
    info = meta["exports"]["onnxruntime"]
    assert info["opset"] >= 17 and info["folded"] and info["precision"] == "fp32"
    for name in info["files"].values():
        assert name in meta["files"]


def test_tampered_graph_is_refused(exported_run, tmp_path):
    run = str(tmp_path / "run")
    shutil.copytree(exported_run, run)
    with open(f"{run}/flows.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(artifact.ArtifactError, match="flows.onnx was modified"):
        Detector(run, backend="onnxruntime")


def test_auto_picks_onnxruntime(exported_run):
    assert Detector(exported_run, backend="auto").backend == "onnxruntime"


def test_anomaly_maps_match_torch(detectors, test_frames):
    """Every demo test image, class routed: ORT maps within 1e-4 of the map range, same routing."""
    torch_det, ort_det = detectors
    _, frames = test_frames
    worst = 0.0
    for frame in frames:
        a, b = torch_det(frame), ort_det(frame)
        assert a.class_name == b.class_name
        span = float(a.anomaly_map.max() - a.anomaly_map.min())
        assert span > 0
        worst = max(worst, float(np.abs(a.anomaly_map - b.anomaly_map).max()) / span)
        assert abs(a.score - b.score) <= 1e-4 * max(1.0, abs(a.score))
    assert worst <= MAP_TOL, f"worst relative map error {worst:.2e}"


def test_image_auroc_identical_to_3_decimals(exported_run, demo_root, detectors):
    torch_det, ort_det = detectors
    ref = evaluate(exported_run, demo_root, detector=torch_det, progress=False)
    got = evaluate(exported_run, demo_root, detector=ort_det, progress=False)
    assert got["backend"] == "onnxruntime"
    for cls in ref["classes"]:
        for mode in ("known", "auto"):
            assert round(got["classes"][cls][mode]["image_auroc"], 3) == round(ref["classes"][cls][mode]["image_auroc"], 3)
            assert abs(got["classes"][cls][mode]["pixel_auroc"] - ref["classes"][cls][mode]["pixel_auroc"]) < 1e-3


def test_full_graph_matches_detector_path(exported_run, detectors, test_frames):
    """full_graph.onnx (GMM as ONNX ops) gives the Scorer's routing and per-level maps."""
    from hgad_edge.runtime.ort import make_session
    from hgad_edge.preprocess import preprocess

    torch_det, _ = detectors
    sess = make_session(f"{exported_run}/full_graph.onnx", threads=1)
    _, frames = test_frames
    batch = preprocess(frames[:6], torch_det.image_size)
    out = dict(zip([o.name for o in sess.get_outputs()],
                   sess.run(None, {"image": batch, "class_index": np.full(len(batch), -1, dtype=np.int64)})))
    raws, _ = torch_det.scorer.raw(frames[:6], [None] * 6)
    for i, raw in enumerate(raws):
        assert int(out["routed_class"][i]) == raw.class_index
        np.testing.assert_allclose(out["posterior"][i], raw.posterior, atol=1e-4)
        for l, (lp, ent) in enumerate(zip(raw.logp, raw.entropy)):
            np.testing.assert_allclose(out[f"logp_{l}"][i], lp, rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(out[f"entropy_{l}"][i], ent, rtol=1e-3, atol=1e-4)


def test_cli_export_and_bench(exported_run, demo_root, tmp_path, capsys):
    from hgad_edge.cli.commands import main

    run = str(tmp_path / "run")
    shutil.copytree(exported_run, run)
    assert main(["export", run, "--format", "onnx"]) == 0
    assert main(["bench", run, "--data", demo_root, "--frames", "5", "--warmup", "1", "--threads", "1",
                 "--quiet", "--json", str(tmp_path / "bench.json")]) == 0
    table = capsys.readouterr().out.split("\n\n")[0]  # the main table; the stage split follows
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in table.splitlines() if line.startswith("| ")}
    assert "| passed |" in lines[("torch", "fp32")]
    assert "| passed |" in lines[("onnxruntime", "fp32")]
    assert "not available here" in lines[("tensorrt", "fp16")]
