"""OpenVINO variants of an exported model: fp32 and bf16 over the ONNX graphs, int8 through NNCF.

* fp32 / bf16 need no new file: OpenVINO's ONNX frontend reads ``backbone.onnx`` / ``flows.onnx``;
  the precision is the CPU plugin's ``INFERENCE_PRECISION_HINT`` (``runtime/openvino.py``).
* int8: ``nncf.quantize`` (post-training quantization: activation ranges from normal images,
  per-channel symmetric int8 weights, fast bias correction) on the OpenVINO model read from the
  ONNX graph, saved as OpenVINO IR (``<part>_ov_int8.xml`` + ``.bin``).

``openvino`` and ``nncf`` are imported inside the functions (``pip install hgad_edge[openvino]``).
"""
from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

from hgad_edge import fileio

log = logging.getLogger(__name__)

PARTS = ("backbone", "flows", "both")
PRESETS = ("performance", "mixed")


@dataclass(frozen=True)
class NNCFPlan:
    """What the OpenVINO INT8 export quantizes.

    Attributes:
        parts: "backbone", "flows" or "both" (the other part stays float).
        skip_depthwise: keep the depthwise convolutions (``GroupConvolution``) in float.
        preset: NNCF preset ("performance": symmetric activations; "mixed": asymmetric).
        inference_precision: what the parts NNCF left in float run at ("f32" or "bf16").
    """

    parts: str = "backbone"
    skip_depthwise: bool = False
    preset: str = "performance"
    inference_precision: str = "f32"

    def __post_init__(self) -> None:
        if self.parts not in PARTS:
            raise ValueError(f"parts={self.parts!r}; choose one of {PARTS}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r}; choose one of {PRESETS}")
        if self.inference_precision not in ("f32", "bf16"):
            raise ValueError(f"inference_precision={self.inference_precision!r}; choose 'f32' or 'bf16'")

    def to_dict(self) -> Dict[str, object]:
        return {"parts": self.parts, "skip_depthwise": self.skip_depthwise, "preset": self.preset,
                "inference_precision": self.inference_precision, "weights": "int8 per-channel symmetric",
                "tool": "nncf.quantize"}


# The measured choice (default demo model, `python benchmarks/quant_sweep.py`; gate drop, test
# image / pixel AUROC with fp32 at 0.960 / 0.943):
#   backbone (NNCF default)          drop 0.021   0.920 / 0.941
#     … mixed preset                 drop 0.026   0.901 / 0.940
#     … depthwise convs in float     drop 0.021   0.918 / 0.941
#     … the rest in bf16             drop 0.023   0.918 / 0.940
#   flows                            drop 0.006   0.957 / 0.943   ← default
#     … the rest in bf16             drop 0.006   0.960 / 0.943
#   both                             drop 0.027   0.932 / 0.940
# The backbone loses ~0.04 image AUROC under NNCF's int8 whatever is kept in float; the flows
# keep it. The rest runs in f32 by default (portable: a bf16 rest needs AVX512_BF16 / AMX).
DEFAULT_PLAN = NNCFPlan(parts="flows")


def versions() -> Dict[str, str]:
    import openvino as ov

    out = {"openvino": ov.__version__.split("-")[0]}
    try:
        import nncf

        out["nncf"] = nncf.__version__
    except ImportError:
        pass
    return out


def import_nncf():
    try:
        import nncf
    except ImportError as e:
        raise ImportError("the OpenVINO int8 export needs NNCF: pip install hgad_edge[openvino] "
                          "(= pip install openvino nncf)") from e
    return nncf


def _save_ir(model, run_dir: str, name: str) -> Tuple[str, str]:
    """``model`` as ``name``.xml + ``name``.bin in ``run_dir``, both written atomically."""
    import openvino as ov

    xml, bin_ = f"{name}.xml", f"{name}.bin"
    with tempfile.TemporaryDirectory(prefix="hgad_ov_", dir=run_dir) as tmp:
        ov.save_model(model, os.path.join(tmp, xml), compress_to_fp16=False)
        for f in (xml, bin_):
            with open(os.path.join(tmp, f), "rb") as fh:
                fileio.write_bytes(os.path.join(run_dir, f), fh.read())
    return xml, bin_


def quantize_part(onnx_path: str, feeds: Sequence[Dict[str, np.ndarray]], plan: NNCFPlan, run_dir: str,
                  name: str) -> Tuple[Dict[str, str], Dict[str, object]]:
    """NNCF post-training quantization of one ONNX graph → IR; (files, what was done).
    ``feeds``: one calibration sample (input name → batch of 1) per item."""
    import openvino as ov

    nncf = import_nncf()
    t0 = time.perf_counter()
    model = ov.Core().read_model(onnx_path)
    ignored = nncf.IgnoredScope(types=["GroupConvolution"], validate=False) if plan.skip_depthwise else None
    preset = {"performance": nncf.QuantizationPreset.PERFORMANCE, "mixed": nncf.QuantizationPreset.MIXED}[plan.preset]
    items = list(feeds)
    q = nncf.quantize(model, nncf.Dataset(items), preset=preset, target_device=nncf.TargetDevice.CPU,
                      subset_size=len(items), fast_bias_correction=True,
                      **({"ignored_scope": ignored} if ignored is not None else {}))
    n_fq = sum(1 for op in q.get_ops() if op.get_type_name() == "FakeQuantize")
    xml, bin_ = _save_ir(q, run_dir, name)
    log.info("NNCF quantized %s → %s (%d FakeQuantize, %.1f s)", os.path.basename(onnx_path), xml, n_fq,
             time.perf_counter() - t0)
    return {"xml": xml, "bin": bin_}, {"fake_quantize": n_fq}


def quantize_network(run_dir: str, files: Dict[str, str], images: np.ndarray, plan: NNCFPlan = DEFAULT_PLAN
                     ) -> Tuple[Dict[str, str], Dict[str, object]]:
    """The OpenVINO int8 variant's files ({"backbone", "flows"} graphs + their IR weights) and
    what was quantized. The part ``plan`` leaves in float is read from its fp32 ONNX file."""
    from hgad_edge.export.quantize import backbone_feeds, flow_feeds

    out: Dict[str, str] = {"backbone": files["backbone"], "flows": files["flows"]}
    info: Dict[str, object] = {"plan": plan.to_dict(), "calibration_images": int(len(images)), **versions()}
    bb = os.path.join(run_dir, files["backbone"])
    if plan.parts in ("backbone", "both"):
        f, info["backbone"] = quantize_part(bb, backbone_feeds(images, 1), plan, run_dir,
                                               "backbone_ov_int8")
        out["backbone"], out["backbone_weights"] = f["xml"], f["bin"]
    if plan.parts in ("flows", "both"):
        f, info["flows"] = quantize_part(os.path.join(run_dir, files["flows"]), flow_feeds(bb, images, 1), plan,
                                         run_dir, "flows_ov_int8")
        out["flows"], out["flows_weights"] = f["xml"], f["bin"]
    return out, info


def float_files(files: Dict[str, str]) -> Dict[str, str]:
    """The fp32 / bf16 variants read the fp32 ONNX graphs."""
    return {"backbone": files["backbone"], "flows": files["flows"]}


def level_errors(got: List[Tuple[np.ndarray, np.ndarray]], want: List[Tuple[np.ndarray, np.ndarray]]
                 ) -> Dict[str, float]:
    """Worst |got − want| per output kind relative to that output's range (as ONNX validation)."""
    err = {"z": 0.0, "logdet": 0.0}
    for (gz, gl), (wz, wl) in zip(got, want):
        for kind, g, w in (("z", gz, wz), ("logdet", gl, wl)):
            span = float(w.max() - w.min()) or 1.0
            err[kind] = max(err[kind], float(np.abs(g - w).max()) / span)
    return err
