"""ONNX Runtime INT8: static post-training quantization of the exported graphs (QDQ format,
per-channel int8 weights, activation ranges calibrated on normal images).

``onnxruntime.quantization`` does the work (``quant_pre_process`` then ``quantize_static``);
this module decides *what* is quantized. Which parts to quantize was measured on the default
demo model (README "Precision tiers", ``benchmarks/quant_sweep.py``); see ``DEFAULT_PLAN`` for the
numbers behind the choice.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from hgad_edge import fileio

log = logging.getLogger(__name__)

PARTS = ("backbone", "flows", "both")
METHODS = ("minmax", "percentile", "entropy")
ACTIVATIONS = ("uint8", "int8")


@dataclass(frozen=True)
class QuantPlan:
    """What the INT8 export quantizes.

    Attributes:
        parts: "backbone", "flows" or "both"; the other graph stays fp32.
        skip_depthwise: keep the depthwise convolutions (``group > 1``) in fp32.
        skip_first: keep the stem convolution (the first layer, on the raw image) in fp32.
        skip_last: keep the last convolution before each feature output in fp32.
        op_types: operator types that get quantized (QDQ around them); empty: every operator ONNX
            Runtime can quantize (activations then stay int8 between the convolutions / matmuls,
            instead of a Dequantize → float op → Quantize round trip around each).
        method: activation range calibration ("minmax", "percentile", "entropy").
        activation: activation type ("uint8": U8S8, the VNNI/AMX-friendly form; "int8": S8S8).
    """

    parts: str = "backbone"
    skip_depthwise: bool = False
    skip_first: bool = False
    skip_last: bool = False
    op_types: Tuple[str, ...] = ("Conv", "MatMul", "Gemm")
    method: str = "minmax"
    activation: str = "uint8"

    def __post_init__(self) -> None:
        for name, value, valid in (("parts", self.parts, PARTS), ("method", self.method, METHODS),
                                   ("activation", self.activation, ACTIVATIONS)):
            if value not in valid:
                raise ValueError(f"{name}={value!r}; choose one of {valid}")

    def to_dict(self) -> Dict[str, object]:
        return {"parts": self.parts, "skip_depthwise": self.skip_depthwise, "skip_first": self.skip_first,
                "skip_last": self.skip_last, "op_types": list(self.op_types), "method": self.method,
                "activation": self.activation, "weights": "int8 per-channel", "format": "QDQ"}


# The measured choice. Default demo model (256², EfficientNet-Lite0, 8 coupling blocks), Xeon with
# AVX512-VNNI/AMX, 2 threads, `python benchmarks/quant_sweep.py` (gate drop on the synthetic
# defects; test image / pixel AUROC, fp32 0.960 / 0.943; network latency vs fp32, interleaved):
#   backbone, Conv/MatMul only        drop 0.147   0.803 / 0.854   1.03×
#     … without the depthwise convs   drop 0.079   0.840 / 0.880   0.81×
#     … without the stem + last convs drop 0.017   0.922 / 0.932   0.88×  (the stem is the sensitive one:
#     … without the last convs only   drop 0.147   0.806 / 0.856          skipping only the last ones = nothing)
#   backbone, every op (int8 between convs)     drop 0.008   0.944 / 0.941   1.23×   ← default
#     … without the stem + last convs           drop 0.012   0.946 / 0.941   1.10×
#   flows, MatMul only                drop -0.000  0.963 / 0.943   0.83×  (lossless, but Q/DQ around every
#   flows, every op                   drop 0.012   0.964 / 0.942   1.03×   matmul eats the gain)
#   both, every op, stem + last fp32  drop 0.016   0.945 / 0.941   1.28×
# Conv/MatMul-only QDQ leaves a Dequantize → float op → Quantize round trip around every
# quantized node (measured slower than fp32); quantizing every op keeps activations int8
# between the convolutions. The flows quantize without loss but gain nothing (small inner
# dimensions 20 / 56, the time is in the bias-table adds); the backbone gains ~1.2× at an
# image-AUROC cost that the default gate (0.005) refuses on the demo model — accepted with
# `--max-drop 0.01`. S8S8 and percentile calibration were worse than U8S8 MinMax (0.169, 0.129).
DEFAULT_PLAN = QuantPlan(parts="backbone", op_types=())


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs every weight-scale adjustment at INFO on the root logger."""
    root = logging.getLogger()
    before = root.level
    root.setLevel(max(before, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(before)


class _Reader:
    """``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: Sequence[Dict[str, np.ndarray]]):
        self._it: Iterator[Dict[str, np.ndarray]] = iter(list(feeds))

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._it, None)


def classify_nodes(model) -> Dict[str, List[str]]:
    """Node names of an ONNX graph by role: "depthwise" (Conv with group > 1), "first" (the
    first Conv), "last" (the last Conv on the way to each graph output)."""
    graph = model.graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    producer = {o: n for n in graph.node for o in n.output}
    last = []
    for out in graph.output:  # walk back from each output to the first Conv met
        todo, seen = [out.name], set()
        while todo:
            t = todo.pop()
            n = producer.get(t)
            if n is None or n.name in seen:
                continue
            seen.add(n.name)
            if n.op_type == "Conv":
                last.append(n.name)
                continue
            todo += list(n.input)
    return {"depthwise": depthwise, "first": [convs[0].name] if convs else [], "last": sorted(set(last))}


def quantize_graph(src: str, dst: str, feeds: Sequence[Dict[str, np.ndarray]], plan: QuantPlan,
                   exclude: Sequence[str] = ()) -> Dict[str, object]:
    """Statically quantize the ONNX graph ``src`` into ``dst`` (atomically).

    ``feeds``: calibration inputs (one dict of input name → batch per step). ``exclude``: node
    names kept in fp32 beside what ``plan`` skips. Returns what was done (for model.json).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as _quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hgad_quant_") as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(src, pre, skip_symbolic_shape=True)
        model = onnx.load(pre)
        roles = classify_nodes(model)
        skip = set(exclude)
        if plan.skip_depthwise:
            skip |= set(roles["depthwise"])
        if plan.skip_first:
            skip |= set(roles["first"])
        if plan.skip_last:
            skip |= set(roles["last"])
        method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                  "entropy": CalibrationMethod.Entropy}[plan.method]
        act = QuantType.QUInt8 if plan.activation == "uint8" else QuantType.QInt8
        n_ops = sum(1 for n in model.graph.node
                    if (not plan.op_types or n.op_type in plan.op_types) and n.name not in skip)

        def write(tmp_dst: str) -> None:
            with _quiet_root_logger():
                _quantize_static(pre, tmp_dst, _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=act, weight_type=QuantType.QInt8, op_types_to_quantize=list(plan.op_types),
                            nodes_to_exclude=sorted(skip), calibrate_method=method,
                            extra_options={"ActivationSymmetric": plan.activation == "int8",
                                           "CalibMovingAverage": False})

        fileio.atomic_write(dst, write)
    log.info("quantized %s → %s: %d %s nodes int8, %d kept fp32 (%.1f s)", os.path.basename(src),
             os.path.basename(dst), n_ops, "/".join(plan.op_types) or "", len(skip), time.perf_counter() - t0)
    return {"quantized_nodes": n_ops, "fp32_nodes": sorted(skip)}


def backbone_feeds(images: np.ndarray, batch: int = 8) -> List[Dict[str, np.ndarray]]:
    """Calibration feeds of ``backbone.onnx``: preprocessed images (n, 3, S, S), ``batch`` at a time."""
    return [{"image": np.ascontiguousarray(images[i:i + batch], dtype=np.float32)}
            for i in range(0, len(images), batch)]


def flow_feeds(backbone_path: str, images: np.ndarray, batch: int = 8) -> List[Dict[str, np.ndarray]]:
    """Calibration feeds of ``flows.onnx``: the fp32 backbone's features of ``images``."""
    from hgad_edge.runtime.ort import make_session

    sess = make_session(backbone_path)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(None, f))) for f in backbone_feeds(images, batch)]


def quantize_network(run_dir: str, files: Dict[str, str], images: np.ndarray, plan: QuantPlan = DEFAULT_PLAN,
                     suffix: str = "int8") -> Tuple[Dict[str, str], Dict[str, object]]:
    """Write the INT8 graphs of an exported model: ``backbone_<suffix>.onnx`` and/or
    ``flows_<suffix>.onnx`` (the part ``plan`` leaves in fp32 keeps the fp32 file).

    Args:
        run_dir: the model directory; files: the fp32 export's files ({"backbone", "flows", ...}).
        images: preprocessed calibration images (n, 3, S, S) float32.

    Returns:
        (files of the int8 variant {"backbone", "flows"}, what was quantized for model.json).
    """
    out = {"backbone": files["backbone"], "flows": files["flows"]}
    info: Dict[str, object] = {"plan": plan.to_dict(), "calibration_images": int(len(images))}
    bb_src = os.path.join(run_dir, files["backbone"])
    if plan.parts in ("backbone", "both"):
        out["backbone"] = f"backbone_{suffix}.onnx"
        info["backbone"] = quantize_graph(bb_src, os.path.join(run_dir, out["backbone"]), backbone_feeds(images), plan)
    if plan.parts in ("flows", "both"):
        out["flows"] = f"flows_{suffix}.onnx"
        info["flows"] = quantize_graph(os.path.join(run_dir, files["flows"]), os.path.join(run_dir, out["flows"]),
                                       flow_feeds(bb_src, images), plan)
    return out, info
