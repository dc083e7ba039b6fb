"""The ONNX Runtime backend: the exported backbone and folded flows, fp32 or a quantized variant.

Follows ``hgad_edge.runtime.base.Backend``; ``make_session`` is also what export validation uses.

Precisions: "fp32" (``exports.onnxruntime.files``), "int8" (QDQ graphs of
``exports.onnxruntime.variants.int8.files``, statically quantized at export) and "bf16": the
fp32 graphs with MLAS's bf16 fast-math GEMM, which ONNX Runtime has on aarch64 CPUs with BF16
only (its x86 CPU EP has no bf16 Conv/MatMul kernels).
"""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hgad_edge.artifact import Artifact
from hgad_edge.runtime.base import LevelArrays

log = logging.getLogger(__name__)

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
SESSION_MODES = ("merged", "split")
# Measured on the 256² default model, batch 1, CPU EP, 150 interleaved runs each: one session
# over model.onnx (backbone + flows merged) vs two sessions (backbone.onnx → flows.onnx):
# 1 thread best 18.99 vs 18.91 ms, 2 threads best 20.87 vs 20.97 ms (box under load ~6) — no
# measurable difference. "split" is the default because at equal speed it reports the per-stage
# split (backbone / flow) of the Result timings; "merged" stays available.
DEFAULT_SESSION_MODE = "split"


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("the onnxruntime backend needs ONNX Runtime: pip install onnxruntime "
                          "(or onnxruntime-gpu on a CUDA machine)") from e
    return ort


def select_providers(device: str = "cpu", available: Optional[Sequence[str]] = None) -> List[str]:
    """Execution providers in preference order: TensorRT EP > CUDA EP > CPU EP.

    ``device="cpu"`` uses the CPU EP only; ``device="cuda"`` takes the GPU providers that this
    ONNX Runtime build has (raising ``ValueError`` when it has none), the CPU EP last.
    """
    if available is None:
        available = _import_ort().get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if not device.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if not gpu:
        raise ValueError(f"device={device!r} but this onnxruntime has no GPU provider (has {list(available)}); "
                         "pip install onnxruntime-gpu, or use device='cpu'")
    return gpu + ["CPUExecutionProvider"]


def bf16_fastmath_supported() -> bool:
    """ONNX Runtime's bf16 path exists here: an aarch64 CPU with the BF16 extension."""
    import platform

    if platform.machine().lower() not in ("aarch64", "arm64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("Features") and " bf16" in line for line in f)
    except OSError:
        return False


def make_session(path: str, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None,
                 bf16_fastmath: bool = False):
    """InferenceSession with ``threads`` intra-op threads, all graph optimizations, sequential
    (``bf16_fastmath``: fp32 GEMMs in bf16, aarch64 only)."""
    ort = _import_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = int(threads) if threads else 0  # 0: ONNX Runtime's default (physical cores)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    # No busy-waiting after a run: the GMM kernel (OpenMP) and postprocessing run right after the
    # network on the same cores, and spinning ORT workers starved them (measured: gmm 0.3 → 200+ ms).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if bf16_fastmath:
        if not bf16_fastmath_supported():
            raise ValueError("ONNX Runtime runs bf16 only on aarch64 CPUs with BF16 (its x86 CPU EP has no bf16 "
                             "kernels); use the openvino backend for bf16 on x86")
        so.add_session_config_entry("mlas.enable_gemm_fastmath_arm64_bfloat16", "1")
    return ort.InferenceSession(path, sess_options=so, providers=list(providers or ["CPUExecutionProvider"]))


class OnnxRuntimeBackend:
    """ONNX Runtime over the exported graphs of a model directory.

    Args:
        art: the model (``hgad-edge export RUN_DIR --format onnx`` done).
        device: "cpu" or "cuda" (TensorRT EP > CUDA EP when installed).
        threads: intra-op threads (default: ONNX Runtime's choice).
        mode: "split" (backbone.onnx then flows.onnx, reports both stages) or "merged"
            (model.onnx, one session, reported as backbone with flow = 0).
        precision: "fp32" (default), "int8" or "bf16" (an exported variant; see the module doc).
    """

    name = "onnxruntime"

    def __init__(self, art: Artifact, device: str = "cpu", threads: Optional[int] = None,
                 mode: str = DEFAULT_SESSION_MODE, precision: Optional[str] = None):
        if mode not in SESSION_MODES:
            raise ValueError(f"mode must be one of {SESSION_MODES}, got {mode!r}")
        precision = precision or "fp32"
        if art.exports.get("onnxruntime", {}).get("status") == "failed" or not art.usable_precisions("onnxruntime"):
            raise RuntimeError(f"{art.run_dir} has no usable ONNX export: run "
                               f"`hgad-edge export {art.run_dir} --format onnx`")
        info = art.variant("onnxruntime", precision)
        if not info or info.get("status") == "failed":
            raise RuntimeError(f"{art.run_dir} has no usable onnxruntime {precision} export (exported: "
                               f"{art.usable_precisions('onnxruntime')}): run "
                               f"`hgad-edge export {art.run_dir} --format onnx --precision {precision}`")
        providers = select_providers(device)
        if precision != "fp32" and device != "cpu":
            raise ValueError(f"the onnxruntime {precision} graphs run on the CPU EP; use device='cpu'")
        files = info["files"]
        if mode == "merged" and "model" not in files:
            raise ValueError(f"the onnxruntime {precision} export has no merged graph; use mode='split'")
        fastmath = precision == "bf16"
        self.mode = mode
        self.device = device
        self.precision = precision
        self.n_levels = art.n_levels
        if mode == "merged":
            self._net = make_session(art.path(files["model"]), threads, providers, fastmath)
        else:
            self._bb = make_session(art.path(files["backbone"]), threads, providers, fastmath)
            self._fl = make_session(art.path(files["flows"]), threads, providers, fastmath)
            self._feat_names = [o.name for o in self._bb.get_outputs()]
        self.providers = (self._net if mode == "merged" else self._bb).get_providers()
        log.info("onnxruntime %s %s session(s), providers %s, threads %s", precision, mode, self.providers, threads)

    def _levels(self, outs: Sequence[np.ndarray]) -> LevelArrays:
        return [(outs[2 * l], outs[2 * l + 1]) for l in range(self.n_levels)]

    def run(self, batch: np.ndarray) -> Tuple[LevelArrays, Dict[str, float]]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        t0 = time.perf_counter()
        if self.mode == "merged":
            outs = self._net.run(None, {"image": batch})
            return self._levels(outs), {"backbone": (time.perf_counter() - t0) * 1e3, "flow": 0.0}
        feats = self._bb.run(None, {"image": batch})
        t1 = time.perf_counter()
        outs = self._fl.run(None, dict(zip(self._feat_names, feats)))
        t2 = time.perf_counter()
        return self._levels(outs), {"backbone": (t1 - t0) * 1e3, "flow": (t2 - t1) * 1e3}

    def close(self) -> None:
        """Drop the sessions (ONNX Runtime frees them with the last reference)."""
        for attr in ("_net", "_bb", "_fl"):
            self.__dict__.pop(attr, None)

