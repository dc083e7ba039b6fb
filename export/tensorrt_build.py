"""TensorRT engines as built by ``hgad-edge export --format tensorrt``: the builder with its INT8
entropy calibrator (fed with the artifact's held-out normal images).

Engines are built from ``model.onnx`` (backbone + folded flows: TensorRT fuses across the cut)
with an optimization profile for batch 1..max_batch, one per precision; the file format and
version differences are ``hgad_edge.runtime.trt_compat``, the runner ``hgad_edge.runtime.tensorrt``.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict, Optional

import numpy as np

from hgad_edge.artifact import Artifact
from hgad_edge.runtime import trt_compat
from hgad_edge.runtime.tensorrt import CudaContext, engine_file

log = logging.getLogger(__name__)


def _make_calibrator(trt, cuda, images: np.ndarray, batch: int):
    """An ``IInt8EntropyCalibrator2`` over (n, 3, S, S) preprocessed images, ``batch`` at a time.

    The calibration cache stays in memory (``.cache``): a cache file left by an interrupted
    build would be read back by the next build and silently calibrate it with another model's
    ranges. ``free()`` releases the device batch buffer (before the CUDA context is released).
    """

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)  # required for Python subclasses
            n = max(len(images), batch)
            idx = np.arange(n) % len(images)  # wrap around so every batch is full
            self.data = np.ascontiguousarray(images[idx], dtype=np.float32)  # (n, 3, S, S)
            self.batch, self.pos, self.batches = batch, 0, 0
            self.cache: Optional[bytes] = None
            self.host = cuda.pagelocked_empty((batch,) + images.shape[1:], np.float32)
            self.device = cuda.mem_alloc(self.host.nbytes)

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names):  # noqa: ARG002 - one input
            if self.device is None or self.pos + self.batch > len(self.data):
                return None
            self.host[...] = self.data[self.pos:self.pos + self.batch]
            cuda.memcpy_htod(self.device, self.host)  # synchronous: TensorRT reads right after
            self.pos += self.batch
            self.batches += 1
            return [int(self.device)]

        def read_calibration_cache(self):
            return None  # always calibrate this model from its own images

        def write_calibration_cache(self, cache) -> None:
            self.cache = bytes(cache)

        def free(self) -> None:
            if self.device is not None:
                self.device.free()
                self.device = None

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
    ctx = CudaContext(device_index)
    calibrator = None
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
            calibrator = _make_calibrator(trt, ctx.cuda, calib_images, cb)
            config.int8_calibrator = calibrator
        t0 = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build the {precision} engine from {onnx_path} (see its log)")
        header = dict(here, precision=precision, max_batch=int(max_batch), image_size=int(image_size),
                      onnx=os.path.basename(onnx_path), build_s=round(time.perf_counter() - t0, 1))
        if calibrator is not None:
            header["calibration_batches"] = int(calibrator.batches)
        trt_compat.write_engine(out_path, plan, header)
        return header
    finally:
        if calibrator is not None:
            calibrator.free()  # device memory first: it belongs to the context released next
        ctx.close()


def build_engines(art: Artifact, cfg, calib_images: Optional[np.ndarray] = None) -> Artifact:
    """Build every precision of ``cfg`` (an ``ExportConfig``) and register the engines.

    ``calib_images``: (n, 3, S, S) preprocessed normal images, needed for INT8."""
    size = art.image_size
    onnx_path = art.path(art.exports["onnxruntime"]["files"]["model"])
    engines: Dict[str, Dict[str, object]] = {}
    for precision in cfg.precisions:
        calib = calib_images if precision == "int8" else None
        name = engine_file(precision)
        header = build_engine(onnx_path, art.path(name), precision, size, cfg.max_batch,
                              cfg.workspace_mb, calib)
        engines[precision] = {"file": name, **header}
        log.info("built TensorRT %s engine %s for %s (sm %s, TensorRT %s)", precision, name, header["gpu"],
                 header["compute_capability"], header["tensorrt"])

    def update(a: Artifact) -> None:
        trt_info = a.exports.setdefault("tensorrt", {"engines": {}, "status": "unvalidated"})
        trt_info["engines"].update(engines)
        trt_info["default"] = "fp16" if "fp16" in trt_info["engines"] else sorted(trt_info["engines"])[0]

    return art.add_files([e["file"] for e in engines.values()], update=update)
