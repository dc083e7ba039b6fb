"""The backend protocol: what every runtime (eager torch, ONNX Runtime, OpenVINO, TensorRT) provides.

A backend turns a preprocessed batch (B, 3, S, S) float32 into, per feature level, the flow's
z (B, N, D) and log|det J| (B, N) as numpy arrays, with per-stage timings in milliseconds.
A backend that can also score on its device (TensorRT with the CUDA GMM kernel) has
``score_on_device``; the scorer then uses it instead of the host GMM.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Protocol, Tuple, runtime_checkable

import numpy as np

LevelArrays = List[Tuple[np.ndarray, np.ndarray]]  # per level: z (B, N, D), logdet (B, N)
DEVICES = ("auto", "cpu", "cuda")


@runtime_checkable
class Backend(Protocol):
    name: str
    device: str

    def run(self, batch: np.ndarray) -> Tuple[LevelArrays, Dict[str, float]]:
        """(B, 3, S, S) float32 → per level (z, logdet), timings {"backbone", "flow"} in ms."""

    def close(self) -> None:
        """Release what the backend holds (sessions, engines, device memory). Idempotent."""


def check_device(device: str) -> str:
    """'auto', 'cpu', 'cuda' or 'cuda:N' (ValueError naming the valid ones otherwise)."""
    if device in DEVICES or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def cuda_available() -> bool:
    """A CUDA GPU is visible to torch, or (without torch's CUDA build) to pycuda."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:  # noqa: BLE001 - no pycuda, no driver, no device: all mean "no GPU"
        return False


def _ort_has_gpu() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return any(p in ort.get_available_providers() for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider"))


def resolve_device(device: str, backend: Optional[str] = None) -> str:
    """``device='auto'`` → 'cuda' when a CUDA GPU is visible (and, for ``backend='onnxruntime'``,
    this ONNX Runtime build has a GPU provider), else 'cpu' (always for ``backend='openvino'``,
    which runs on the CPU); other devices are returned unchanged."""
    device = check_device(device)
    if device != "auto":
        return device
    if backend == "openvino" or not cuda_available():
        return "cpu"
    if backend == "onnxruntime" and not _ort_has_gpu():
        return "cpu"
    return "cuda"
