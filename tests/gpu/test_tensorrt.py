"""TensorRT engines for real (fp32 / fp16 / int8) and ONNX Runtime's CUDA EP: parity with torch.

Runs only on a machine with an NVIDIA GPU, TensorRT >= 10 and pycuda (``pip install
hgad_edge[tensorrt]``); elsewhere every test is skipped with the reason.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.integration.conftest import trained_run  # noqa: F401  (session fixture)

from hgad_edge import artifact, data
from hgad_edge.detector import Detector
from hgad_edge.evaluation.evaluator import evaluate


def _gpu_reason() -> str:
    try:
        import tensorrt  # noqa: F401
        import pycuda.driver as cuda
    except ImportError as e:
        return f"TensorRT/pycuda not installed ({e}): pip install hgad_edge[tensorrt]"
    try:
        cuda.init()
        if cuda.Device.count() < 1:
            return "no CUDA device"
    except cuda.Error as e:  # driver present but no usable GPU
        return f"CUDA unavailable: {e}"
    return ""


REASON = _gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt, pytest.mark.skipif(bool(REASON), reason=REASON or "ok")]
# image AUROC vs torch, and anomaly-map error relative to the map's range, per precision
TOL = {"fp32": (1e-3, 1e-3), "fp16": (1e-2, 2e-2), "int8": (5e-2, 1e-1)}


@pytest.fixture(scope="module")
def engine_run(trained_run, tmp_path_factory):  # noqa: F811
    from hgad_edge.export.pipeline import ExportConfig, export_model

    run = str(tmp_path_factory.mktemp("trt") / "run")
    shutil.copytree(trained_run, run)
    export_model(run, ExportConfig(formats=("onnx", "tensorrt"), precisions=("fp32", "fp16", "int8"), max_batch=8,
                                   calib_images=32))
    return run


def test_engines_record_the_device(engine_run):
    from hgad_edge.runtime import trt_compat

    meta = artifact.Artifact.read(engine_run).to_dict()
    here = trt_compat.device_info(0)
    for p, e in meta["exports"]["tensorrt"]["engines"].items():
        header, _ = trt_compat.read_engine(f"{engine_run}/{e['file']}", read_plan=False)
        assert header["precision"] == p
        for k in ("gpu", "compute_capability", "tensorrt"):
            assert header[k] == here[k] == e[k]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_matches_torch(engine_run, demo_root, precision):
    from hgad_edge.runtime.tensorrt import TensorRTBackend

    torch_det = Detector(engine_run, backend="torch", device="cuda")
    trt_det = Detector(engine_run, backend="tensorrt", device="cuda")
    trt_det._backend = trt_det.scorer.backend = TensorRTBackend(engine_run, trt_det.meta, "cuda", precision)
    auroc_tol, map_tol = TOL[precision]
    names = trt_det.class_names
    frames = [data.read_image(s.path) for s in data.test_samples(demo_root, names)]
    worst = 0.0
    for f in frames:
        a, b = torch_det(f), trt_det(f)
        worst = max(worst, float(np.abs(a.anomaly_map - b.anomaly_map).max() / (np.ptp(a.anomaly_map) or 1.0)))
    assert worst <= map_tol, f"{precision}: worst relative map error {worst:.2e}"
    ref = evaluate(engine_run, demo_root, detector=torch_det, progress=False)["mean"]["known"]["image_auroc"]
    got = evaluate(engine_run, demo_root, detector=trt_det, progress=False)["mean"]["known"]["image_auroc"]
    assert abs(got - ref) <= auroc_tol


def test_batches_beyond_the_profile_are_chunked(engine_run, demo_root):
    det = Detector(engine_run, backend="tensorrt", device="cuda")
    frames = [data.read_image(s.path) for s in data.test_samples(demo_root, det.class_names)][:11]
    batch = det.predict(frames)  # 11 > max_batch 8
    single = [det(f) for f in frames]
    for a, b in zip(batch, single):
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-4, atol=1e-5)


def test_engine_from_another_device_is_refused(engine_run, tmp_path):
    from hgad_edge.runtime import trt_compat

    run = str(tmp_path / "run")
    shutil.copytree(engine_run, run)
    meta = artifact.Artifact.read(run).to_dict()
    name = meta["exports"]["tensorrt"]["engines"]["fp16"]["file"]
    header, plan = trt_compat.read_engine(f"{run}/{name}")
    trt_compat.write_engine(f"{run}/{name}", plan, dict(header, compute_capability="7.2", gpu="Xavier"))
    artifact.add_files(run, [name])  # re-register the checksum: only the device check should fire
    with pytest.raises(trt_compat.EngineMismatchError, match="compute capability 7.2"):
        Detector(run, backend="tensorrt", device="cuda")


def test_onnxruntime_cuda_provider(engine_run, demo_root):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider (pip install onnxruntime-gpu)")
    cpu = Detector(engine_run, backend="onnxruntime")
    gpu = Detector(engine_run, backend="onnxruntime", device="cuda")
    assert gpu._backend.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    f = data.read_image(data.test_samples(demo_root, cpu.class_names)[0].path)
    a, b = cpu(f), gpu(f)
    assert np.abs(a.anomaly_map - b.anomaly_map).max() <= 1e-3 * np.ptp(a.anomaly_map)
