"""hgad_edge.export: ONNX graphs with folded flows, TensorRT engines, and the optimized runtimes.

The top-level ``export/`` folder is this subpackage (``package_dir`` in setup.py).

* ``pipeline.export_model(run_dir, ExportConfig(...))`` — ``hgad-edge export``.
* ``runtime.make_backend(name, run_dir, meta, ...)`` — the ``onnxruntime`` / ``tensorrt``
  backends of ``hgad_edge.Detector``.
* ``bench.run_bench(run_dir, data_root)`` — ``hgad-edge bench``.
* ``fold.FoldedFlow`` — one level's flow with the positional condition folded into bias tables.

Importing this package imports neither TensorRT nor pycuda (nor ONNX Runtime): each is imported
by the function that needs it.
"""
from __future__ import annotations

__all__ = ["ExportConfig", "export_model", "make_backend", "run_bench", "FoldedFlow"]


def __getattr__(name: str):
    if name in ("ExportConfig", "export_model"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "make_backend":
        from .runtime import make_backend

        return make_backend
    if name == "run_bench":
        from .bench import run_bench

        return run_bench
    if name == "FoldedFlow":
        from .fold import FoldedFlow

        return FoldedFlow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
