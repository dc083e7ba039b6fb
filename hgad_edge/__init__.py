"""hgad_edge: one unified HGAD model that finds and localizes defects in many product classes.

    >>> from hgad_edge import Detector
    >>> det = Detector("runs/demo")
    >>> result = det(frame_bgr_uint8)            # class routed; or class_name="brick"
"""
from hgad_edge.config import ModelConfig, TrainConfig
from hgad_edge.version import __version__
__all__ = ["Detector", "Result", "ModelConfig", "TrainConfig", "StreamConfig", "run_stream", "__version__"]


def __getattr__(name):
    # Lazy: `import hgad_edge` stays light (no torch/onnxruntime import until a Detector is made).
    if name == "Detector":
        from hgad_edge.detector import Detector

        return Detector
    if name == "Result":
        from hgad_edge.result import Result

        return Result
    if name in ("StreamConfig", "run_stream"):
        from hgad_edge.stream import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'hgad_edge' has no attribute {name!r}")
