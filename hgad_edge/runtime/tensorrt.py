"""The ``tensorrt`` backend: runs an engine built by ``hgad-edge export --format tensorrt``.

Written against the TensorRT 10 name-based Python API (``num_io_tensors``, ``get_tensor_name``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) with pycuda device buffers
and a stream. Version differences (TensorRT 10 vs 11) and the engine header live in
``trt_compat``; tensorrt/pycuda are imported inside functions only. The builder is
``hgad_edge.export.tensorrt_build``.

Two ways to score (``Scorer.raw`` picks):

* device (``score_on_device``, when ``hgad_edge._C`` has CUDA and the mixtures are native): the
  engine's z/logdet output buffers go straight to the CUDA GMM kernel — per frame and level
  ``GaussianMixture.inter_cuda`` (entropy, posterior image mean and vote shares into row l of
  two (L, C) buffers), ``route_cuda`` over the L rows, ``intra_cuda`` of the routed class — and only the
  per-level logp/entropy maps, the means and the class come back to the host.
* host (``run``): z/logdet are copied back and the numpy/CPU GMM scores them (evaluation, and
  wherever the device path is not available).

The CUDA context is the device's primary context (shared with the CUDA runtime that TensorRT
and the GMM kernel use); it is made current only while the backend works, so a backend may be
used from any thread (calls are serialised: the device buffers are shared).

On CPU the whole backend runs in CI against test-only stand-ins of the ``tensorrt`` and
``pycuda`` APIs (``tests/standins``); ``tests/gpu`` runs it on a real GPU.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

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
    """The primary CUDA context of one device (shared with the CUDA runtime), retained and made
    current in the constructing thread; ``close()`` pops it (if still pushed) and releases it."""

    def __init__(self, index: int):
        cuda = trt_compat.import_pycuda()
        self.cuda = cuda
        self.device = cuda.Device(index)
        self.ctx = self.device.retain_primary_context()
        self.ctx.push()
        self._pushed = True
        self._closed = False

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make the context current in this thread for the block (contexts are per thread)."""
        self.ctx.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def pop(self) -> None:
        """Undo the constructor's push (the context is then current only inside ``active()``)."""
        if self._pushed:
            self._pushed = False
            self.cuda.Context.pop()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.pop()
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
        self._ctx: Optional[CudaContext] = None
        self._ctx_pushed = False
        self._lock = threading.Lock()  # one call at a time: the buffers are shared
        self._dev: Dict[str, object] = {}
        self._host: Dict[str, np.ndarray] = {}
        self.context = self.engine = self._runtime = self._logger = self.stream = None
        self._device_ok, self._device_why = False, "not initialised"
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
        self._ctx_pushed = True
        try:
            trt_compat.check_compatible(header, trt_compat.device_info(index), path)
            self._open(trt, art, header, plan, path)
        except BaseException:
            self.close()  # whatever was made so far, the context's retain included
            raise
        self._ctx.pop()  # current only while working (see active())
        self._ctx_pushed = False
        self.precision = precision

    # ---------------------------------------------------------------- setup
    def _open(self, trt, art: Artifact, header: dict, plan: bytes, path: str) -> None:
        cuda = self._cuda = self._ctx.cuda
        self.n_levels = art.n_levels
        self.n_classes = len(art.class_names)
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
        self._set_shape((self.max_batch, 3, size, size))
        self._dtype: Dict[str, np.dtype] = {}
        self._shape: Dict[str, tuple] = {}
        for n in names:
            shape = tuple(self.context.get_tensor_shape(n))
            dtype = self._dtype[n] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
            self._shape[n] = shape
            self._host[n] = cuda.pagelocked_empty(shape, dtype)
            self._dev[n] = cuda.mem_alloc(self._host[n].nbytes)
            if not self.context.set_tensor_address(n, int(self._dev[n])):
                raise RuntimeError(f"TensorRT refused the address of tensor {n!r} ({path})")
        # output order as the ONNX graph: z_0, logdet_0, z_1, …
        self.outputs.sort(key=lambda n: (int(n.split("_")[-1]), 0 if n.startswith("z_") else 1))
        self._open_device_scoring(cuda)

    def _open_device_scoring(self, cuda) -> None:
        """Device buffers of the GMM outputs, sized for max_batch (when the engine's dtypes allow)."""
        L, C, B = self.n_levels, self.n_classes, self.max_batch
        why = []
        for l in range(L):
            z, ld = f"z_{l}", f"logdet_{l}"
            if z not in self._dtype or ld not in self._dtype:
                why.append(f"the engine has no {z}/{ld} outputs")
                continue
            if self._dtype[z] not in (np.float32, np.float16):
                why.append(f"{z} is {self._dtype[z]} (the kernel takes float32 or float16)")
            if self._dtype[ld] != np.float32:
                why.append(f"{ld} is {self._dtype[ld]} (the kernel takes float32)")
            if len(self._shape[z]) != 3 or self._shape[ld] != self._shape[z][:2]:
                why.append(f"{z} {self._shape[z]} / {ld} {self._shape[ld]} are not (B, N, D) / (B, N)")
        if why:
            self._device_ok, self._device_why = False, "; ".join(why)
            log.info("TensorRT backend: GMM on the host (%s)", self._device_why)
            return
        self._n = [self._shape[f"z_{l}"][1] for l in range(L)]  # positions N_l
        self._d = [self._shape[f"z_{l}"][2] for l in range(L)]  # dims D_l
        self._gmm_host: Dict[str, np.ndarray] = {}
        shapes = {**{f"logp_{l}": (B, self._n[l]) for l in range(L)},
                  **{f"entropy_{l}": (B, self._n[l]) for l in range(L)},
                  "means": (B, L, C)}
        for key, shape in shapes.items():
            self._gmm_host[key] = cuda.pagelocked_empty(shape, np.float32)
            self._dev["gmm." + key] = cuda.mem_alloc(self._gmm_host[key].nbytes)
        self._gmm_host["class"] = cuda.pagelocked_empty((B,), np.int32)
        self._dev["gmm.class"] = cuda.mem_alloc(self._gmm_host["class"].nbytes)
        self._dev["gmm.votes"] = cuda.mem_alloc(self._gmm_host["means"].nbytes)  # (B, L, C), stays on the device
        self._device_ok, self._device_why = True, ""

    # ---------------------------------------------------------------- state
    @property
    def closed(self) -> bool:
        return self._ctx is None

    def _check_open(self) -> None:
        if self._ctx is None:
            raise RuntimeError("this TensorRT backend was closed (Detector.close()); make a new Detector")

    def _active(self):
        """The context made current for a call (under ``self._lock``); RuntimeError once closed."""
        self._check_open()
        return self._ctx.active()

    @property
    def device_scoring(self) -> bool:
        """True when ``score_on_device`` can run: engine dtypes fit and ``hgad_edge._C`` has CUDA."""
        from hgad_edge import gmm

        return self._ctx is not None and self._device_ok and gmm.has_cuda()

    def _set_shape(self, shape: tuple) -> None:
        if not self.context.set_input_shape("image", shape):
            raise RuntimeError(f"TensorRT refused input shape {shape} (the engine's profile is batch "
                               f"1..{getattr(self, 'max_batch', '?')} at its image size)")

    def _enqueue_network(self, batch: np.ndarray) -> None:
        """Upload ``batch`` (b <= max_batch) and queue the engine on the stream."""
        cuda, b = self._cuda, batch.shape[0]
        host_in = self._host["image"][:b]  # page-locked; referenced by self until the stream syncs
        host_in[...] = batch
        self._set_shape(batch.shape)
        cuda.memcpy_htod_async(self._dev["image"], host_in, self.stream)
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    # ---------------------------------------------------------------- host path
    def _run_chunk(self, batch: np.ndarray) -> List[np.ndarray]:
        cuda, b = self._cuda, batch.shape[0]
        self._enqueue_network(batch)
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
        with self._lock, self._active():
            chunks = [self._run_chunk(batch[i:i + self.max_batch]) for i in range(0, len(batch), self.max_batch)]
        outs = [np.concatenate([c[k] for c in chunks]) for k in range(len(self.outputs))]
        levels = [(outs[2 * l], outs[2 * l + 1]) for l in range(self.n_levels)]
        # one merged engine: backbone and flows are fused, so the whole network counts as backbone
        return levels, {"backbone": (time.perf_counter() - t0) * 1e3, "flow": 0.0}

    # ---------------------------------------------------------------- device path
    def _check_mixtures(self, gmms, feature_shapes) -> None:
        if len(gmms) != self.n_levels or len(feature_shapes) != self.n_levels:
            raise ValueError(f"{len(gmms)} mixtures / {len(feature_shapes)} feature shapes for an engine of "
                             f"{self.n_levels} levels")
        for l, (g, (h, w)) in enumerate(zip(gmms, feature_shapes)):
            if g.backend != "native":
                raise ValueError(f"level {l}: the device path needs native mixtures (got backend {g.backend!r})")
            if g.n_classes != self.n_classes or g.dim != self._d[l] or h * w != self._n[l]:
                raise ValueError(f"level {l}: mixture (C={g.n_classes}, D={g.dim}) and map {h}x{w} do not fit the "
                                 f"engine's z_{l} (N={self._n[l]}, D={self._d[l]}, C={self.n_classes})")

    def score_on_device(self, batch: np.ndarray, class_indices: Sequence[Optional[int]], gmms,
                        feature_shapes: Sequence[Tuple[int, int]]):
        """Network and GMM on the GPU; returns (``FrameRaw`` per frame, timings ms).

        Args:
            batch: (B, 3, S, S) float32 preprocessed frames (chunked by the engine's max batch).
            class_indices: per frame the class (``0..C-1``) or ``None`` to route.
            gmms: the L ``GaussianMixture`` (native) of the model.
            feature_shapes: (h_l, w_l) per level (the maps are reshaped to them).
        """
        from hgad_edge import gmm as gmm_mod
        from hgad_edge.postprocess import FrameRaw

        self._check_open()
        if not self.device_scoring:
            raise RuntimeError("score_on_device is not available: " + (
                self._device_why or "hgad_edge._C was built without CUDA"))
        self._check_mixtures(gmms, feature_shapes)
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if len(class_indices) != len(batch):
            raise ValueError(f"{len(batch)} frames but {len(class_indices)} class indices")
        L, C = self.n_levels, self.n_classes
        classes = []
        for c in class_indices:
            if c is not None and not 0 <= int(c) < C:
                raise ValueError(f"class index must be None (route) or 0..{C - 1}, got {c}")
            classes.append(-1 if c is None else int(c))
        with self._lock, self._active():
            cuda, dev, host, handle = self._cuda, self._dev, self._gmm_host, self.stream.handle
            zsize = [self._n[l] * self._d[l] * self._dtype[f"z_{l}"].itemsize for l in range(L)]
            half = [self._dtype[f"z_{l}"] == np.float16 for l in range(L)]
            z0 = [int(dev[f"z_{l}"]) for l in range(L)]
            ld0 = [int(dev[f"logdet_{l}"]) for l in range(L)]
            lp0 = [int(dev[f"gmm.logp_{l}"]) for l in range(L)]
            en0 = [int(dev[f"gmm.entropy_{l}"]) for l in range(L)]
            means0, votes0, cls0 = int(dev["gmm.means"]), int(dev["gmm.votes"]), int(dev["gmm.class"])
            out, t_net, t_gmm = [], 0.0, 0.0
            for start in range(0, len(batch), self.max_batch):
                chunk = batch[start:start + self.max_batch]
                b = len(chunk)
                t0 = time.perf_counter()
                self._enqueue_network(chunk)
                self.stream.synchronize()  # honest stage timings: one sync per chunk
                t1 = time.perf_counter()
                for i in range(b):
                    row, vrow = means0 + i * L * C * 4, votes0 + i * L * C * 4
                    cls = cls0 + i * 4
                    for l, g in enumerate(gmms):
                        n = self._n[l]
                        g.inter_cuda(z0[l] + i * zsize[l], n, en0[l] + i * n * 4, row + l * C * 4, vrow + l * C * 4,
                                     stream=handle, z_half=half[l])
                    gmm_mod.route_cuda(vrow, row, L, C, classes[start + i], cls, stream=handle)
                    for l, g in enumerate(gmms):
                        n = self._n[l]
                        g.intra_cuda(z0[l] + i * zsize[l], ld0[l] + i * n * 4, n, cls, lp0[l] + i * n * 4,
                                     stream=handle, z_half=half[l])
                for key in [f"logp_{l}" for l in range(L)] + [f"entropy_{l}" for l in range(L)] + ["means", "class"]:
                    cuda.memcpy_dtoh_async(host[key][:b], dev["gmm." + key], self.stream)
                self.stream.synchronize()
                for i in range(b):
                    c = int(host["class"][i])
                    if not 0 <= c < C:
                        raise RuntimeError(f"device routing gave class {c} (expected 0..{C - 1})")
                    posterior = host["means"][i].mean(axis=0)  # (C,) level-averaged, as Scorer.score
                    out.append(FrameRaw(
                        c, float(posterior[c]), posterior,
                        [host[f"logp_{l}"][i].reshape(feature_shapes[l]).copy() for l in range(L)],
                        [host[f"entropy_{l}"][i].reshape(feature_shapes[l]).copy() for l in range(L)],
                        routed=classes[start + i] < 0))
                t_net += (t1 - t0) * 1e3
                t_gmm += (time.perf_counter() - t1) * 1e3
        return out, {"backbone": t_net, "flow": 0.0, "gmm": t_gmm}

    # ---------------------------------------------------------------- release
    def _release(self) -> None:
        """Engine objects, then device memory, then the stream (the context is current)."""
        errors = []
        if self.stream is not None:
            try:
                self.stream.synchronize()  # nothing in flight may touch what is freed next
            except Exception as e:  # noqa: BLE001 - keep releasing; reported below
                errors.append(e)
        # TensorRT objects hold device memory: drop them while the context is alive
        self.context = None
        self.engine = None
        self._runtime = None
        for key, mem in list(self._dev.items()):
            try:
                mem.free()
            except Exception as e:  # noqa: BLE001
                errors.append(e)
            del self._dev[key]
        self._host.clear()
        self.__dict__.pop("_gmm_host", None)
        self.stream = None
        if errors:
            log.warning("TensorRT backend close: %s", "; ".join(map(str, errors)))

    def close(self) -> None:
        """Release the execution context, engine, device buffers and the CUDA context, in that
        order. Idempotent; the backend cannot be used afterwards."""
        with self._lock:
            ctx, self._ctx = self._ctx, None
        if ctx is None:
            return
        try:
            if self._ctx_pushed:  # failed construction: the constructor's push is still current
                self._release()
            else:
                with ctx.active():
                    self._release()
        finally:
            self._ctx_pushed = False
            ctx.close()
