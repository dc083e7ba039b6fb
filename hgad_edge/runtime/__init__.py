"""What a deployed artifact needs to run: the backend protocol and registry, the eager torch,
ONNX Runtime and TensorRT backends, the engine header checks, and the scorer (backend → GMM).

Nothing here builds an artifact (that is ``hgad_edge.export``); optional runtimes (onnxruntime,
tensorrt, pycuda) and torch are imported by the backend that needs them, on first use.
"""
from hgad_edge.runtime.base import DEVICES, Backend, LevelArrays, check_device, cuda_available, resolve_device
from hgad_edge.runtime.registry import AUTO_ORDER, BACKENDS, auto_backend, auto_order, make_backend
from hgad_edge.runtime.scorer import Scorer

__all__ = ["DEVICES", "Backend", "LevelArrays", "check_device", "cuda_available", "resolve_device", "AUTO_ORDER",
           "BACKENDS", "auto_backend", "auto_order", "make_backend", "Scorer", "TorchBackend", "load_model",
           "OnnxRuntimeBackend", "TensorRTBackend"]


def __getattr__(name: str):
    # the backends import torch / onnxruntime / tensorrt: on first use only
    if name in ("TorchBackend", "load_model"):
        from hgad_edge.runtime import eager

        return getattr(eager, name)
    if name == "OnnxRuntimeBackend":
        from hgad_edge.runtime.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend
    if name == "TensorRTBackend":
        from hgad_edge.runtime.tensorrt import TensorRTBackend

        return TensorRTBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
