"""The ``tensorrt`` backend: runs an engine built by ``hgad-edge export --format tensorrt``.

Written against the TensorRT 10 name-based Python API (``num_io_tensors``, ``get_tensor_name``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) with pycuda device buffers
and a stream. Version differences (TensorRT 10 vs 11) and the engine header live in
``trt_compat``; tensorrt/pycuda are imported inside functions only. The builder is
``hgad_edge.export.tensorrt_build``.

On CPU the whole backend runs in CI against test-only stand-ins of the ``tensorrt`` and
``pycuda`` APIs (``tests/standins``); ``tests/gpu`` runs it on a real GPU.
"""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from hgad_edge.artifact import Artifact
from hgad_edge.runtime import trt_compat

log = logging.getLogger(__name__)


def engine_file(precision: str) -> str:
    return f"model_{precision}.engine"


def _device_index(device: str) -> int:
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise ValueError(f"the tensorrt backend runs on a CUDA GPU: pass device='cuda' or 'cuda:N', got {device!r}")


class CudaContext:
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


class TensorRTBackend:
    """Detector backend running a TensorRT engine of the model directory.

    Args:
        art: the model (with a TensorRT export).
        device: "cuda" or "cuda:N".
        precision: which engine (default: the export's default, fp16 when built).
    """

    name = "tensorrt"

    def __init__(self, art: Artifact, device: str = "cuda", precision: Optional[str] = None):
        info = art.usable_exports().get("tensorrt")
        if not info or not info.get("engines"):
            raise RuntimeError(f"{art.run_dir} has no TensorRT engine: run "
                               f"`hgad-edge export {art.run_dir} --format tensorrt` on the target device")
        index = _device_index(device)
        self.device = device
        precision = precision or info.get("default")
        if precision not in info["engines"]:
            raise ValueError(f"no {precision} engine in {art.run_dir}; built: {sorted(info['engines'])}")
        path = art.path(info["engines"][precision]["file"])
        header, plan = trt_compat.read_engine(path)
        trt = trt_compat.import_tensorrt()
        self._ctx = CudaContext(index)
        cuda = self._cuda = self._ctx.cuda
        trt_compat.check_compatible(header, trt_compat.device_info(index), path)
        self.precision = precision
        self.n_levels = art.n_levels
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

