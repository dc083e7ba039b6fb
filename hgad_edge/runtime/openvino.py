"""The OpenVINO backend (``pip install hgad_edge[openvino]``): the exported graphs on OpenVINO's
CPU plugin, at fp32, bf16 or int8.

Follows ``hgad_edge.runtime.base.Backend``. What each precision runs (``exports.openvino.variants``):

* "fp32": the ONNX graphs of the fp32 export (``backbone.onnx``, ``flows.onnx``), read by
  OpenVINO's ONNX frontend, with ``INFERENCE_PRECISION_HINT=f32``. OpenVINO's CPU plugin
  otherwise *defaults to bf16* on CPUs that have it (AVX512_BF16 / AMX): without the hint the
  "fp32" maps were 1–3 % of their range off ONNX Runtime's, with it ≤ 5e-6.
* "bf16": the same graphs with ``INFERENCE_PRECISION_HINT=bf16`` (AMX / AVX512_BF16 kernels);
  refused on a CPU without bf16 (OpenVINO would emulate it in fp32 and call it bf16).
* "int8": OpenVINO IR written by NNCF post-training quantization at export
  (``backbone_int8.xml/.bin`` …); the parts NNCF left in float run at the precision the
  variant records (``inference_precision``).

``openvino`` is imported when a backend is made, never at package import.
"""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hgad_edge.artifact import Artifact
from hgad_edge.runtime.base import LevelArrays

log = logging.getLogger(__name__)

HINTS = {"fp32": "f32", "bf16": "bf16"}  # INFERENCE_PRECISION_HINT per precision


def import_openvino():
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError("the openvino backend needs OpenVINO: pip install hgad_edge[openvino] "
                          "(= pip install openvino nncf)") from e
    return ov


def cpu_has_bf16(core=None) -> bool:
    """OpenVINO's CPU plugin has native bf16 here (AVX512_BF16 or AMX)."""
    ov = import_openvino()
    core = core or ov.Core()
    try:
        return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except RuntimeError:  # pragma: no cover - a plugin without the property
        return False


def compile_model(core, model, threads: Optional[int], inference_precision: str):
    """Compile for the CPU: latency hint, one stream, ``threads`` inference threads (0 = OpenVINO's
    choice), the given inference precision ("f32" or "bf16")."""
    config = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
              "INFERENCE_PRECISION_HINT": inference_precision}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(int(threads))
    return core.compile_model(model, "CPU", config)


class OpenVinoBackend:
    """OpenVINO over the exported graphs of a model directory (CPU plugin).

    Args:
        art: the model (``hgad-edge export RUN_DIR --format openvino`` done).
        device: "cpu" (OpenVINO's GPU/NPU plugins are not used).
        threads: inference threads (default: OpenVINO's choice).
        precision: "fp32" (default), "bf16" or "int8": an exported variant.
    """

    name = "openvino"

    def __init__(self, art: Artifact, device: str = "cpu", threads: Optional[int] = None,
                 precision: Optional[str] = None):
        if device != "cpu":
            raise ValueError(f"the openvino backend runs on the CPU; device={device!r} (use device='cpu')")
        precision = precision or "fp32"
        info = art.variant("openvino", precision)
        if not info or info.get("status") == "failed":
            raise RuntimeError(f"{art.run_dir} has no usable openvino {precision} export (exported: "
                               f"{art.usable_precisions('openvino')}): run "
                               f"`hgad-edge export {art.run_dir} --format openvino --precision {precision}`")
        ov = import_openvino()
        core = ov.Core()
        hint = info.get("inference_precision", HINTS.get(precision, "f32"))
        if hint == "bf16" and not cpu_has_bf16(core):
            raise ValueError("this CPU has no native bf16 (AVX512_BF16 / AMX): OpenVINO would emulate it; "
                             "use precision='fp32' or 'int8'")
        files = info["files"]
        self.device = device
        self.precision = precision
        self.n_levels = art.n_levels
        self._compiled = []
        self._requests = []
        for key in ("backbone", "flows"):
            model = core.read_model(art.path(files[key]))
            compiled = compile_model(core, model, threads, hint)
            self._compiled.append(compiled)
            self._requests.append(compiled.create_infer_request())
        bb, fl = self._compiled
        self._feat_names = [o.get_any_name() for o in bb.outputs]
        self._flow_inputs = [i.get_any_name() for i in fl.inputs]
        self._flow_outputs = [o.get_any_name() for o in fl.outputs]
        want = [n for l in range(self.n_levels) for n in (f"z_{l}", f"logdet_{l}")]
        if self._flow_outputs != want:
            raise RuntimeError(f"{files['flows']}: outputs {self._flow_outputs}, expected {want}")
        log.info("openvino %s (inference precision %s), threads %s, OpenVINO %s", precision, hint, threads,
                 ov.__version__)

    @staticmethod
    def _outputs(request, n: int) -> List[np.ndarray]:
        # the request reuses its output buffers on the next inference: copy
        return [np.array(request.get_output_tensor(i).data, copy=True) for i in range(n)]

    def run(self, batch: np.ndarray) -> Tuple[LevelArrays, Dict[str, float]]:
        if not self._requests:
            raise RuntimeError("this OpenVINO backend was closed")
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        bb, fl = self._requests
        t0 = time.perf_counter()
        bb.infer({0: batch})
        feats = [bb.get_output_tensor(i).data for i in range(len(self._feat_names))]
        t1 = time.perf_counter()
        fl.infer(dict(zip(self._flow_inputs, self._match(feats))))
        outs = self._outputs(fl, 2 * self.n_levels)
        t2 = time.perf_counter()
        return [(outs[2 * l], outs[2 * l + 1]) for l in range(self.n_levels)], \
            {"backbone": (t1 - t0) * 1e3, "flow": (t2 - t1) * 1e3}

    def _match(self, feats: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Backbone outputs in the order of the flow graph's inputs (both are named feat_l)."""
        by_name = dict(zip(self._feat_names, feats))
        return [by_name[n] for n in self._flow_inputs]

    def close(self) -> None:
        """Drop the infer requests and compiled models (OpenVINO frees them with the last reference)."""
        self._requests = []
        self._compiled = []
