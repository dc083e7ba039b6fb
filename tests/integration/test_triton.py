"""``hgad-edge export RUN_DIR --format triton --out MODEL_REPO``: layout, config, and the exported
model run by ONNX Runtime (what Triton's onnxruntime backend runs) scoring like the Detector.

No Triton server runs here: the config is checked by parsing it (our minimal text-format reader,
and Triton's own ``ModelConfig`` proto when ``tritonclient[grpc]`` is installed).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from hgad_edge import data
from hgad_edge.cli.commands import main as cli_main
from hgad_edge.detector import Detector
from hgad_edge.preprocess import preprocess

SCORE_TOL = 1e-4  # |Δ raw score| relative to the raw-score range; the ORT-vs-torch map tolerance of test_runtimes


@pytest.fixture(scope="module")
def repo(trained_run, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("triton") / "models")
    assert cli_main(["export", trained_run, "--format", "triton", "--out", out, "--instance-kind", "cpu",
                     "--instance-count", "2", "--max-batch", "16"]) == 0
    return out


@pytest.fixture(scope="module")
def config(repo) -> dict:
    from hgad_edge.export.triton import parse_pbtxt

    with open(os.path.join(repo, "hgad_edge", "config.pbtxt"), encoding="utf-8") as f:
        return parse_pbtxt(f.read())


def _params(config) -> dict:
    return {p["key"][0]: p["value"][0]["string_value"][0] for p in config["parameters"]}


def test_layout(repo, trained_run):
    assert sorted(os.listdir(repo)) == ["hgad_edge"]
    assert sorted(os.listdir(os.path.join(repo, "hgad_edge"))) == ["1", "config.pbtxt", "labels.txt"]
    assert os.listdir(os.path.join(repo, "hgad_edge", "1")) == ["model.onnx"]
    names = Detector(trained_run, backend="torch").class_names
    with open(os.path.join(repo, "hgad_edge", "labels.txt")) as f:
        assert f.read().splitlines() == names
    assert not any(f.endswith(".onnx") for f in os.listdir(trained_run)), "the run directory is left as it was"


def test_config_matches_the_graph(repo, config, trained_run):
    import onnx

    assert config["name"] == ["hgad_edge"] and config["backend"] == ["onnxruntime"]
    assert config["max_batch_size"] == [16]
    assert config["dynamic_batching"][0]["max_queue_delay_microseconds"][0] > 0
    assert config["instance_group"] == [{"count": [2], "kind": ["KIND_CPU"]}]
    graph = onnx.load(os.path.join(repo, "hgad_edge", "1", "model.onnx")).graph

    def dims(vi):  # without the batch axis; -1 where the graph leaves a dimension symbolic
        return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim[1:]]

    for section, values in (("input", graph.input), ("output", graph.output)):
        cfg = {t["name"][0]: t for t in config[section]}
        assert list(cfg) == [v.name for v in values]
        for v in values:
            want = cfg[v.name]["dims"] if "reshape" not in cfg[v.name] else []
            got = dims(v)
            assert len(got) == len(want) and all(g in (-1, w) for g, w in zip(got, want)), (v.name, got, want)
            elem = {1: "TYPE_FP32", 7: "TYPE_INT64"}[v.type.tensor_type.elem_type]
            assert cfg[v.name]["data_type"] == [elem]
    det = Detector(trained_run, backend="torch")
    params = _params(config)
    assert json.loads(params["classes"]) == det.class_names
    for name, (thr, spread) in zip(det.class_names, det.thresholds):
        assert float(params[f"class.{name}.threshold"]) == thr and float(params[f"class.{name}.spread"]) == spread


def test_config_is_a_valid_triton_model_config(repo):
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] not installed")
    from google.protobuf import text_format

    with open(os.path.join(repo, "hgad_edge", "config.pbtxt"), encoding="utf-8") as f:
        cfg = text_format.Parse(f.read(), pb2.ModelConfig())
    assert cfg.max_batch_size == 16 and cfg.dynamic_batching.max_queue_delay_microseconds > 0


def test_onnxruntime_scores_like_the_detector(repo, config, trained_run, demo_root):
    """All demo test images in one batch (as Triton's dynamic batcher would send them)."""
    from hgad_edge.runtime.ort import make_session
    from hgad_edge.export.triton import client_postprocess

    det = Detector(trained_run, backend="torch", threads=1)
    frames = [data.read_image(s.path) for s in data.test_samples(demo_root, det.class_names)]
    sess = make_session(os.path.join(repo, "hgad_edge", "1", "model.onnx"), threads=1)
    batch = preprocess(frames, det.image_size)
    outs = dict(zip([o.name for o in sess.get_outputs()],
                    sess.run(None, {"image": batch, "class_index": np.full(len(frames), -1, dtype=np.int64)})))
    for t in config["output"]:  # the concrete shapes are the configured dims (after reshape)
        want = [] if "reshape" in t else t["dims"]
        assert list(outs[t["name"][0]].shape) == [len(frames), *want], t["name"]
    params = _params(config)
    got = [client_postprocess(outs, params, i, f.shape[:2]) for i, f in enumerate(frames)]
    want = det.predict([np.ascontiguousarray(f) for f in frames])
    raw = np.array([w.raw_score for w in want])
    span = float(raw.max() - raw.min())
    assert span > 0
    for g, w in zip(got, want):
        assert g.class_name == w.class_name
        assert abs(g.raw_score - w.raw_score) <= SCORE_TOL * span
        assert abs(g.score - w.score) <= 1e-3
        assert abs(g.class_confidence - w.class_confidence) <= 1e-4
        if abs(w.raw_score - w.threshold) > SCORE_TOL * span:
            assert g.is_anomaly == w.is_anomaly
        # both resize the map to the frame and threshold it into the same mask
        np.testing.assert_allclose(g.anomaly_map, w.anomaly_map, atol=SCORE_TOL * span)
        assert g.mask.shape == w.mask.shape


def test_cli_errors(trained_run, repo, capsys):
    assert cli_main(["export", trained_run, "--format", "triton"]) == 2
    assert "--out MODEL_REPO" in capsys.readouterr().err
    assert cli_main(["export", trained_run, "--format", "triton", "--out", repo]) == 2
    assert "already exists" in capsys.readouterr().err
