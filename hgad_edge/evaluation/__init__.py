"""Measuring a model: test-split metrics (AUROC, AUPRO, routing) and the backend × precision benchmark."""
from hgad_edge.evaluation.metrics import aupro, auroc

__all__ = ["aupro", "auroc", "evaluate", "format_table", "run_bench"]


def __getattr__(name: str):
    # evaluate/bench build Detectors (torch, ONNX Runtime): imported on first use only
    if name in ("evaluate", "format_table"):
        from hgad_edge.evaluation import evaluator as module

        return getattr(module, name)
    if name == "run_bench":
        from hgad_edge.evaluation.bench import run_bench

        return run_bench
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
