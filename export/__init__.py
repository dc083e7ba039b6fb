"""hgad_edge.export: the build side — ONNX graphs with folded flows, TensorRT engines (builder and
INT8 calibrator) and Triton model repositories. Imported by the CLI only; running an artifact
needs none of it (that is ``hgad_edge.runtime``).

The top-level ``export/`` folder is this subpackage (``package_dir`` in setup.py).

* ``pipeline.export_model(run_dir, ExportConfig(...))`` — ``hgad-edge export``.
* ``fold.FoldedFlow`` — one level's flow with the positional condition folded into bias tables.
* ``triton.export_triton(run_dir, repo)`` — ``hgad-edge export --format triton``.

Importing this package imports neither TensorRT nor pycuda (nor ONNX Runtime): each is imported
by the function that needs it.
"""
from __future__ import annotations

__all__ = ["ExportConfig", "export_model", "FoldedFlow", "export_triton"]


def __getattr__(name: str):
    if name in ("ExportConfig", "export_model"):
        from hgad_edge.export import pipeline

        return getattr(pipeline, name)
    if name == "FoldedFlow":
        from hgad_edge.export.fold import FoldedFlow

        return FoldedFlow
    if name == "export_triton":
        from hgad_edge.export.triton import export_triton

        return export_triton
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
