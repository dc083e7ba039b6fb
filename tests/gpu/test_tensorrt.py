"""TensorRT engines for real (fp32 / fp16 / int8) and ONNX Runtime's CUDA EP: parity with torch,
the device GMM path against the host path, chunking, engine refusal, release.

Runs only on a machine with an NVIDIA GPU, TensorRT >= 10 and pycuda (``pip install
hgad_edge[tensorrt]``); elsewhere every test is skipped with the reason. The same code paths run
on CPU against the stand-ins in ``tests/integration/test_tensorrt_standin.py``.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.integration.conftest import trained_run  # noqa: F401  (session fixture)

from hgad_edge import data
from hgad_edge import gmm as G
from hgad_edge.artifact import Artifact
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


def _torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="module")
def engine_run(trained_run, tmp_path_factory):  # noqa: F811
    from hgad_edge.export.pipeline import ExportConfig, export_model

    run = str(tmp_path_factory.mktemp("trt") / "run")
    shutil.copytree(trained_run, run)
    export_model(run, ExportConfig(formats=("onnx", "tensorrt"), precisions=("fp32", "fp16", "int8"), max_batch=8,
                                   calib_images=32))
    return run


@pytest.fixture(scope="module")
def frames(engine_run, demo_root):
    return [data.read_image(s.path) for s in data.test_samples(demo_root, Artifact.read(engine_run).class_names)]


def test_engines_record_the_device(engine_run):
    from hgad_edge.runtime import trt_compat

    art = Artifact.read(engine_run)
    here = trt_compat.device_info(0)
    for p, e in art.exports["tensorrt"]["engines"].items():
        header, _ = trt_compat.read_engine(art.path(e["file"]), read_plan=False)
        assert header["precision"] == p
        for k in ("gpu", "compute_capability", "tensorrt"):
            assert header[k] == here[k] == e[k]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_matches_torch(engine_run, demo_root, frames, precision):
    auroc_tol, map_tol = TOL[precision]
    with Detector(engine_run, backend="torch", device=_torch_device()) as torch_det, \
            Detector(engine_run, backend="tensorrt", device="cuda", precision=precision) as trt_det:
        assert trt_det.precision == precision
        assert trt_det.scorer.device_scoring() == G.has_cuda()  # the CUDA GMM path whenever it is built
        worst = 0.0
        for f in frames:
            a, b = torch_det(f), trt_det(f)
            worst = max(worst, float(np.abs(a.anomaly_map - b.anomaly_map).max() / (np.ptp(a.anomaly_map) or 1.0)))
        assert worst <= map_tol, f"{precision}: worst relative map error {worst:.2e}"
        ref = evaluate(engine_run, demo_root, detector=torch_det, progress=False)["mean"]["known"]["image_auroc"]
        got = evaluate(engine_run, demo_root, detector=trt_det, progress=False)["mean"]["known"]["image_auroc"]
    assert abs(got - ref) <= auroc_tol


@pytest.mark.skipif(not G.has_cuda(), reason="hgad_edge._C built without CUDA: no device GMM path to compare")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_device_gmm_path_equals_host_path(engine_run, frames, precision, monkeypatch):
    """The same engine: GMM on the GPU (z never leaves it) vs z copied back and the CPU kernel."""
    batch = frames[:11]  # > max_batch 8: two chunks
    classes = [None] * 6 + [0, 1, 2, 0, 1]
    with Detector(engine_run, backend="tensorrt", device="cuda", precision=precision) as det:
        assert det.scorer.device_scoring()
        device = det.scorer.raw(batch, classes)[0]
        monkeypatch.setattr(G, "has_cuda", lambda: False)
        assert not det.scorer.device_scoring()
        host = det.scorer.raw(batch, classes)[0]
    for d, h in zip(device, host):
        assert d.class_index == h.class_index
        np.testing.assert_allclose(d.posterior, h.posterior, atol=1e-5)
        for a, b in zip(d.logp + d.entropy, h.logp + h.entropy):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_batches_beyond_the_profile_are_chunked(engine_run, frames):
    with Detector(engine_run, backend="tensorrt", device="cuda", precision="fp32") as det:
        batch = det.predict(frames[:11])  # 11 > max_batch 8
        single = [det(f) for f in frames[:11]]
    for a, b in zip(batch, single):
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-4, atol=1e-5)


def test_close_releases_device_memory(engine_run, frames):
    import pycuda.driver as cuda

    from hgad_edge.runtime.tensorrt import CudaContext

    probe = CudaContext(0)
    try:
        free_before, _ = cuda.mem_get_info()
        det = Detector(engine_run, backend="tensorrt", device="cuda", precision="fp32")
        det(frames[0])
        det.close()
        det.close()  # idempotent
        free_after, _ = cuda.mem_get_info()
    finally:
        probe.close()
    assert free_after >= free_before - (8 << 20)  # allocator slack only
    with pytest.raises(RuntimeError, match="closed"):
        det(frames[0])


def test_engine_from_another_device_is_refused(engine_run, tmp_path):
    from hgad_edge.runtime import trt_compat

    run = str(tmp_path / "run")
    shutil.copytree(engine_run, run)
    art = Artifact.read(run)
    name = art.exports["tensorrt"]["engines"]["fp16"]["file"]
    header, plan = trt_compat.read_engine(art.path(name))
    trt_compat.write_engine(art.path(name), plan, dict(header, compute_capability="7.2", gpu="Xavier"))
    art.add_files([name])  # re-register the checksum: only the device check should fire
    with pytest.raises(trt_compat.EngineMismatchError, match="compute capability 7.2"):
        Detector(run, backend="tensorrt", device="cuda", precision="fp16")


def test_onnxruntime_cuda_provider(engine_run, frames):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without CUDAExecutionProvider (pip install onnxruntime-gpu)")
    with Detector(engine_run, backend="onnxruntime", device="cpu") as cpu, \
            Detector(engine_run, backend="onnxruntime", device="cuda") as gpu:
        assert gpu._backend.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
        a, b = cpu(frames[0]), gpu(frames[0])
    assert np.abs(a.anomaly_map - b.anomaly_map).max() <= 1e-3 * np.ptp(a.anomaly_map)
