"""A Triton Inference Server model repository of the full-graph model (docs/design.md §5).

``export_triton(run_dir, repo)`` writes::

    repo/<name>/config.pbtxt     backend onnxruntime, dynamic batching, instance groups,
                                 classes / thresholds / normalizers as parameters
    repo/<name>/labels.txt       one class name per line (label file of the posterior output)
    repo/<name>/1/model.onnx     full_graph.onnx: backbone + folded flows + GMM scoring

Graph (tensor names; Triton adds the batch axis):
``image`` FP32 [3, S, S] (preprocessed: BGR→RGB, /255, ImageNet mean/std, NCHW) and
``class_index`` INT64 [1] (−1 = route) → ``posterior`` FP32 [C], ``routed_class`` INT64 [1],
``logp_l`` / ``entropy_l`` FP32 [h_l, w_l] per level.

The map normalisation, upsampling, blur and threshold (``hgad_edge.postprocess.finalize``) stay
on the client, as with every other backend: they need the routed class's constants (in the
parameters here), the threshold moves with the target false-positive rate without a re-export,
and the client resizes the map to its own frame size. ``client_postprocess`` is that step.

With ``accelerator="tensorrt"`` the config asks Triton's ONNX Runtime backend for its TensorRT
execution provider (``optimization.execution_accelerators``): TensorRT speed with the same
model.onnx, built by Triton on the serving GPU — no engine tied to another GPU or TensorRT
version is shipped.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np

from hgad_edge import fileio
from hgad_edge.artifact import Artifact
from hgad_edge.calibrate import threshold
from hgad_edge.postprocess import FrameRaw, Normalizer, finalize
from hgad_edge.result import Result

log = logging.getLogger(__name__)

INSTANCE_KINDS = ("gpu", "cpu")
ACCELERATORS = ("none", "tensorrt")
LABELS = "labels.txt"
# Cameras send frames independently; a short queue delay lets Triton batch concurrent frames
# without adding visible latency (1 ms ≪ one 30 fps frame interval).
QUEUE_DELAY_US = 1000


def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor(name: str, dtype: str, dims: Sequence[int], extra: str = "") -> str:
    body = f"name: {_q(name)} data_type: {dtype} dims: [ {', '.join(str(int(d)) for d in dims)} ]"
    return "  {\n    " + body + (("\n    " + extra) if extra else "") + "\n  }"


def parameters(art: Artifact, target_fpr: Optional[float] = None) -> Dict[str, str]:
    """Everything a client needs beyond the graph, as Triton string parameters."""
    combine = art.combine
    fpr = float(art.target_fpr if target_fpr is None else target_fpr)
    params = {"classes": json.dumps(art.class_names), "image_size": str(art.image_size),
              "feature_shapes": json.dumps([list(s) for s in art.feature_shapes]), "combine": combine,
              "target_fpr": repr(fpr), "input_format": "BGR uint8 -> resize SxS, RGB, /255, ImageNet mean/std, NCHW float32",
              "postprocess": "hgad_edge.postprocess.finalize (anomaly_map(logp_l, entropy_l, normalizer[class], "
                             "S, combine); raw score = map max; anomaly if raw > threshold[class])"}
    for name in art.class_names:
        cal = art.calibration[name]
        thr, spread = threshold(cal["scores"][combine], fpr)
        params[f"class.{name}.threshold"] = repr(float(thr))
        params[f"class.{name}.spread"] = repr(float(spread))
        params[f"class.{name}.normalizer"] = json.dumps(cal["normalizer"])
        params[f"class.{name}.scores"] = json.dumps(cal["scores"][combine])  # re-threshold at another FPR
    return params


def config_pbtxt(name: str, art: Artifact, max_batch: int = 8, instance_kind: str = "gpu", instance_count: int = 1,
                 accelerator: str = "none", precision: str = "fp16", target_fpr: Optional[float] = None) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""
    if instance_kind not in INSTANCE_KINDS:
        raise ValueError(f"instance kind must be one of {INSTANCE_KINDS}, got {instance_kind!r}")
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}")
    if accelerator == "tensorrt" and instance_kind != "gpu":
        raise ValueError("the TensorRT accelerator needs GPU instances (instance kind 'gpu')")
    if max_batch < 1 or instance_count < 1:
        raise ValueError(f"max_batch and instance_count must be >= 1, got {max_batch}, {instance_count}")
    s = art.image_size
    n_classes = len(art.class_names)
    scalar = "reshape: { shape: [ ] }"  # the graph's (B,) tensors: Triton dims [1] without the batch axis
    inputs = [_tensor("image", "TYPE_FP32", [3, s, s]), _tensor("class_index", "TYPE_INT64", [1], scalar)]
    outputs = [_tensor("posterior", "TYPE_FP32", [n_classes], f"label_filename: {_q(LABELS)}"),
               _tensor("routed_class", "TYPE_INT64", [1], scalar)]
    for l, (h, w) in enumerate(art.feature_shapes):
        outputs += [_tensor(f"logp_{l}", "TYPE_FP32", [h, w]), _tensor(f"entropy_{l}", "TYPE_FP32", [h, w])]
    lines = [f"name: {_q(name)}", 'backend: "onnxruntime"', f"max_batch_size: {int(max_batch)}",
             "input [\n" + ",\n".join(inputs) + "\n]", "output [\n" + ",\n".join(outputs) + "\n]",
             f"dynamic_batching {{\n  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n}}",
             f"instance_group [\n  {{\n    count: {int(instance_count)}\n    kind: KIND_{instance_kind.upper()}\n  }}\n]"]
    if accelerator == "tensorrt":
        mode = "FP16" if precision in ("fp16", "int8") else "FP32"
        lines.append("optimization {\n  execution_accelerators {\n    gpu_execution_accelerator : [ {\n"
                     f'      name : "tensorrt"\n      parameters {{ key: "precision_mode" value: {_q(mode)} }}\n'
                     '      parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
                     "    } ]\n  }\n}")
    for key, value in parameters(art, target_fpr).items():
        lines.append(f"parameters {{\n  key: {_q(key)}\n  value: {{ string_value: {_q(value)} }}\n}}")
    return "\n".join(lines) + "\n"


def export_triton(run_dir: str, repo: str, name: str = "hgad_edge", max_batch: int = 8, instance_kind: str = "gpu",
                  instance_count: int = 1, accelerator: str = "none", precision: str = "fp16",
                  opset: int = 17, target_fpr: Optional[float] = None, overwrite: bool = False) -> str:
    """Write ``repo/<name>/`` (see the module docstring); returns the model folder.

    Raises ``ValueError`` when the model folder exists and ``overwrite`` is false.
    """
    from hgad_edge.export.onnx_export import FILES, export_onnx
    from hgad_edge.runtime.eager import load_model

    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"model name {name!r} must be a plain folder name")
    art = Artifact.read(run_dir)
    text = config_pbtxt(name, art, max_batch, instance_kind, instance_count, accelerator, precision, target_fpr)
    folder = os.path.join(repo, name)
    if os.path.exists(folder) and not overwrite:
        raise ValueError(f"{folder} already exists; choose another --model-name or remove it")
    os.makedirs(repo, exist_ok=True)
    stage = tempfile.mkdtemp(prefix="." + name + ".", suffix=".tmp", dir=repo)  # exclusive, same filesystem
    try:
        os.chmod(stage, 0o777 & ~fileio.umask())  # mkdtemp's 0700 would become the model folder's mode
        with tempfile.TemporaryDirectory(prefix="hgad_triton_") as tmp:
            export_onnx(load_model(art), tmp, opset=opset, full_graph=True)
            os.makedirs(os.path.join(stage, "1"))
            shutil.copyfile(os.path.join(tmp, FILES["full_graph"]), os.path.join(stage, "1", "model.onnx"))
        fileio.write_bytes(os.path.join(stage, "config.pbtxt"), text.encode("utf-8"))
        fileio.write_bytes(os.path.join(stage, LABELS), ("\n".join(art.class_names) + "\n").encode("utf-8"))
        if os.path.islink(folder):  # a link at the name is replaced, never followed into
            os.unlink(folder)
        elif os.path.exists(folder):
            shutil.rmtree(folder)
        os.replace(stage, folder)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("Triton model %r written to %s", name, folder)
    return folder


def parse_pbtxt(text: str):
    """A minimal protobuf text-format reader (enough for config.pbtxt): messages become dicts,
    repeated fields lists; scalars are str/int/float, enum names str. For tests and clients
    without ``tritonclient``."""
    import re

    tokens = re.findall(r'"(?:\\.|[^"\\])*"|[{}\[\]:,]|[^\s{}\[\]:,"]+', re.sub(r"#[^\n]*", "", text))
    pos = 0

    def scalar(tok: str):
        if tok.startswith('"'):
            return bytes(tok[1:-1], "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
        for cast in (int, float):
            try:
                return cast(tok)
            except ValueError:
                pass
        return tok

    def value():
        nonlocal pos
        tok = tokens[pos]
        if tok == "{":
            pos += 1
            return message("}")
        if tok == "[":
            pos += 1
            items = []
            while tokens[pos] != "]":
                items.append(value())
                if tokens[pos] == ",":
                    pos += 1
            pos += 1
            return items
        pos += 1
        return scalar(tok)

    def message(end: Optional[str]):
        nonlocal pos
        out: Dict[str, List] = {}
        while pos < len(tokens) and tokens[pos] != end:
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            v = value()
            out.setdefault(key, []).extend(v if isinstance(v, list) else [v])
            if pos < len(tokens) and tokens[pos] == ",":
                pos += 1
        pos += 1
        return out

    return message(None)


def client_postprocess(outputs: Dict[str, np.ndarray], params: Dict[str, str], index: int = 0,
                       out_hw: Optional[Sequence[int]] = None) -> Result:
    """What a Triton client does with one image's outputs: the Detector's post-processing
    (``hgad_edge.postprocess.finalize``), with the constants from the model's parameters.

    Args:
        outputs: the graph outputs by name (batched arrays).
        params: ``config.pbtxt`` parameters (key → string value).
        index: the image within the batch.
        out_hw: (height, width) of the client's frame: the map and mask are resized to it
            (default: S×S).
    """
    classes = json.loads(params["classes"])
    c = int(np.asarray(outputs["routed_class"]).reshape(-1)[index])
    name = classes[c]
    n_levels = len(json.loads(params["feature_shapes"]))
    posterior = np.asarray(outputs["posterior"])[index]
    raw = FrameRaw(c, float(posterior[c]), posterior, [outputs[f"logp_{l}"][index] for l in range(n_levels)],
                   [outputs[f"entropy_{l}"][index] for l in range(n_levels)])
    norm = Normalizer.from_dict(json.loads(params[f"class.{name}.normalizer"]))
    thr = (float(params[f"class.{name}.threshold"]), float(params[f"class.{name}.spread"]))
    return finalize(raw, norm, thr, name, int(params["image_size"]), params["combine"], out_hw)
