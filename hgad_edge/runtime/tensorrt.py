"""TensorRT engines from the exported ONNX graph, and the ``tensorrt`` Detector backend.

Written against the TensorRT 10 name-based Python API (``num_io_tensors``, ``get_tensor_name``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) with pycuda device buffers
and a stream. One engine per precision is built from ``model.onnx`` (backbone + folded flows:
TensorRT fuses across the cut), with an optimization profile for batch 1..max_batch. INT8 uses
an entropy calibrator fed with the artifact's held-out normal images. Version differences
(TensorRT 10 vs 11) live in ``trt_compat``; tensorrt/pycuda are imported inside functions only.

Tested only where a GPU and TensorRT exist (tests/gpu/test_tensorrt.py); the file format and the
mismatch check are tested on CPU.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import trt_compat

log = logging.getLogger(__name__)


def engine_file(precision: str) -> str:
    return f"model_{precision}.engine"


def _device_index(device: str) -> int:
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise ValueError(f"the tensorrt backend runs on a CUDA GPU: pass device='cuda' or 'cuda:N', got {device!r}")


class _CudaContext:
    """The primary CUDA context of one device, made current (shared with the CUDA runtime)."""

    def __init__(self, index: int):
        cuda = trt_compat.import_pycuda()
        self.cuda = cuda
        self.device = cuda.Device(index)
        self.ctx = self.device.retain_primary_context()
        self.ctx.push()

    def close(self) -> None:
        try:
            self.cuda.Context.pop()
        finally:
            self.ctx.detach()


def _make_calibrator(trt, cuda, images: np.ndarray, batch: int, cache_path: str):
    """An ``IInt8EntropyCalibrator2`` over (n, 3, S, S) preprocessed images, ``batch`` at a time."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # required for Python subclasses
            n = max(len(images), batch)
            idx = np.arange(n) % len(images)  # wrap around so every batch is full
            self.data = np.ascontiguousarray(images[idx], dtype=np.float32)  # (n, 3, S, S)
            self.batch, self.pos = batch, 0
            self.host = cuda.pagelocked_empty((batch,) + images.shape[1:], np.float32)
            self.device = cuda.mem_alloc(self.host.nbytes)

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names):  # noqa: ARG002 - one input
            if self.pos + self.batch > len(self.data):
                return None
            self.host[...] = self.data[self.pos:self.pos + self.batch]
            cuda.memcpy_htod(self.device, self.host)  # synchronous: TensorRT reads right after
            self.pos += self.batch
            return [int(self.device)]

        def read_calibration_cache(self):
            if os.path.isfile(cache_path):
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache) -> None:
            with open(cache_path, "wb") as f:
                f.write(bytes(cache))

    return EntropyCalibrator()


def build_engine(onnx_path: str, out_path: str, precision: str, image_size: int, max_batch: int = 8,
                 workspace_mb: int = 1024, calib_images: Optional[np.ndarray] = None,
                 device_index: int = 0) -> Dict[str, object]:
    """Build and write one engine; returns its header (what it was built for).

    Args:
        onnx_path: ``model.onnx`` (input ``image`` (B, 3, S, S), dynamic batch).
        precision: "fp32", "fp16" or "int8" (INT8 needs ``calib_images`` and TensorRT 10).
        calib_images: (n, 3, S, S) preprocessed normal images for INT8 calibration.
    """
    trt = trt_compat.import_tensorrt()
    ctx = _CudaContext(device_index)
    try:
        here = trt_compat.device_info(device_index)
        weak = trt_compat.has_weak_typing(trt.__version__)
        if not weak and precision != "fp32":
            raise RuntimeError(f"precision {precision} needs TensorRT 10.x builder flags; TensorRT "
                               f"{trt.__version__} removed them (strong typing: FP16 needs an FP16 ONNX "
                               "graph, INT8 explicit Q/DQ nodes). Build fp32 here, or use TensorRT 10 "
                               "(JetPack 6)")
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(trt_compat.network_flags(trt, strongly_typed=not weak))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(onnx_path):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
        shape = lambda b: (b, 3, image_size, image_size)  # noqa: E731
        profile = builder.create_optimization_profile()
        profile.set_shape("image", shape(1), shape(1), shape(max_batch))  # optimised for batch 1 (streams)
        config.add_optimization_profile(profile)
        calibrator = None
        if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default: fp32 means fp32 here
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)  # int8 falls back to fp16 where int8 has no kernel
        if precision == "int8":
            if calib_images is None or len(calib_images) == 0:
                raise ValueError("INT8 needs calibration images (the artifact's calibration files or --calib-data)")
            config.set_flag(trt.BuilderFlag.INT8)
            cb = min(max_batch, len(calib_images))
            cal_profile = builder.create_optimization_profile()
            cal_profile.set_shape("image", shape(cb), shape(cb), shape(cb))
            config.set_calibration_profile(cal_profile)
            calibrator = _make_calibrator(trt, ctx.cuda, calib_images, cb, out_path + ".calib")
            config.int8_calibrator = calibrator
        t0 = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build the {precision} engine from {onnx_path} (see its log)")
        header = dict(here, precision=precision, max_batch=int(max_batch), image_size=int(image_size),
                      onnx=os.path.basename(onnx_path), build_s=round(time.perf_counter() - t0, 1))
        trt_compat.write_engine(out_path, plan, header)
        if os.path.isfile(out_path + ".calib"):
            os.remove(out_path + ".calib")
        return header
    finally:
        ctx.close()


def build_engines(run_dir: str, meta: dict, cfg) -> dict:
    """Build every precision of ``cfg`` (an ``ExportConfig``) and register the engines."""
    from hgad_edge import artifact

    from .pipeline import calibration_images, load_batch

    size = int(meta["model_config"]["image_size"])
    onnx_path = os.path.join(run_dir, meta["exports"]["onnxruntime"]["files"]["model"])
    engines: Dict[str, Dict[str, object]] = {}
    for precision in cfg.precisions:
        calib = None
        if precision == "int8":
            paths = calibration_images(meta, cfg.calib_data, cfg.calib_images)
            if not paths:
                raise ValueError("INT8 calibration needs normal images: the artifact's calibration files "
                                 f"are not under {meta.get('data', {}).get('root')!r}; pass --calib-data DIR")
            calib = load_batch(paths, size)
        name = engine_file(precision)
        header = build_engine(onnx_path, os.path.join(run_dir, name), precision, size, cfg.max_batch,
                              cfg.workspace_mb, calib)
        engines[precision] = {"file": name, **header}
        log.info("built TensorRT %s engine %s for %s (sm %s, TensorRT %s)", precision, name, header["gpu"],
                 header["compute_capability"], header["tensorrt"])

    def update(m: dict) -> None:
        trt_info = m.setdefault("exports", {}).setdefault("tensorrt", {"engines": {}})
        trt_info["engines"].update(engines)
        trt_info["default"] = "fp16" if "fp16" in trt_info["engines"] else sorted(trt_info["engines"])[0]

    return artifact.add_files(run_dir, [e["file"] for e in engines.values()], update=update)


class TensorRTBackend:
    """Detector backend running a TensorRT engine of the model directory.

    Args:
        run_dir, meta: the model directory and its metadata.
        device: "cuda" or "cuda:N".
        precision: which engine (default: the export's default, fp16 when built).
    """

    name = "tensorrt"

    def __init__(self, run_dir: str, meta: dict, device: str = "cuda", precision: Optional[str] = None):
        info = meta.get("exports", {}).get("tensorrt")
        if not info or not info.get("engines"):
            raise RuntimeError(f"{run_dir} has no TensorRT engine: run `hgad-edge export {run_dir} --format tensorrt`"
                               " on the target device")
        index = _device_index(device)
        precision = precision or info.get("default")
        if precision not in info["engines"]:
            raise ValueError(f"no {precision} engine in {run_dir}; built: {sorted(info['engines'])}")
        path = os.path.join(run_dir, info["engines"][precision]["file"])
        header, plan = trt_compat.read_engine(path)
        trt = trt_compat.import_tensorrt()
        self._ctx = _CudaContext(index)
        cuda = self._cuda = self._ctx.cuda
        trt_compat.check_compatible(header, trt_compat.device_info(index), path)
        self.precision = precision
        self.n_levels = len(meta["feature_shapes"])
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.max_batch = int(header["max_batch"])
        size = int(header["image_size"])
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        # Buffers for the largest batch, allocated once; tensor addresses set once.
        self.context.set_input_shape("image", (self.max_batch, 3, size, size))
        self._host: Dict[str, np.ndarray] = {}
        self._dev: Dict[str, object] = {}
        for n in names:
            shape = tuple(self.context.get_tensor_shape(n))
            dtype = trt.nptype(self.engine.get_tensor_dtype(n))
            self._host[n] = cuda.pagelocked_empty(shape, dtype)
            self._dev[n] = cuda.mem_alloc(self._host[n].nbytes)
            self.context.set_tensor_address(n, int(self._dev[n]))
        # output order as the ONNX graph: z_0, logdet_0, z_1, …
        self.outputs.sort(key=lambda n: (int(n.split("_")[-1]), 0 if n.startswith("z_") else 1))

    def _run_chunk(self, batch: np.ndarray) -> List[np.ndarray]:
        cuda, b = self._cuda, batch.shape[0]
        host_in = self._host["image"][:b]  # page-locked; referenced by self until the stream syncs
        host_in[...] = batch
        self.context.set_input_shape("image", batch.shape)
        cuda.memcpy_htod_async(self._dev["image"], host_in, self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        outs = []
        for n in self.outputs:
            host = self._host[n][:b]
            cuda.memcpy_dtoh_async(host, self._dev[n], self.stream)
            outs.append(host)
        self.stream.synchronize()
        return [np.array(o, dtype=np.float32) for o in outs]  # copies: the page-locked buffers are reused

    def run(self, batch: np.ndarray) -> Tuple[List[Tuple[np.ndarray, np.ndarray]], Dict[str, float]]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        t0 = time.perf_counter()
        chunks = [self._run_chunk(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        outs = [np.concatenate([c[k] for c in chunks]) for k in range(len(self.outputs))]
        levels = [(outs[2 * l], outs[2 * l + 1]) for l in range(self.n_levels)]
        # one merged engine: backbone and flows are fused, so the whole network counts as backbone
        return levels, {"backbone": (time.perf_counter() - t0) * 1e3, "flow": 0.0}

    def close(self) -> None:
        self._ctx.close()

