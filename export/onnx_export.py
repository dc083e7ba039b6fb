"""HGAD → ONNX graphs (opset ≥ 17, dynamic batch, ``onnx.checker`` clean).

Files written into the model directory (tensor names in brackets; ``l`` = level):

* ``backbone.onnx``  [image] (B, 3, S, S) → [feat_l] (B, D_l, h_l, w_l), every level in one graph.
* ``flows.onnx``     [feat_l] → [z_l] (B, N_l, D_l), [logdet_l] (B, N_l): the folded flows.
* ``model.onnx``     [image] → [z_l], [logdet_l]: backbone and flows merged (what the ONNX
  Runtime backend runs; TensorRT builds its engine from it).
* ``full_graph.onnx`` (``full_graph=True``) [image], [class_index] (B,) int64, −1 = route →
  [posterior] (B, C), [routed_class] (B,) int64, [logp_l], [entropy_l] (B, h_l, w_l): the
  Gaussian-mixture scoring too, as standard ops (Triton / DeepStream).

The legacy TorchScript exporter (``dynamo=False``) is used: with torch 2.14 it exports these
graphs in seconds and exactly; the dynamo exporter takes minutes for the same backbone.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from hgad_edge import fileio
from hgad_edge.export.fold import FoldedFlows
from hgad_edge.export.gmm_graph import GMMScoring

log = logging.getLogger(__name__)

MIN_OPSET = 17
MAX_OPSET = 20  # the newest opset torch.onnx.export(dynamo=False) writes
DEFAULT_OPSET = 17
FILES = {"backbone": "backbone.onnx", "flows": "flows.onnx", "model": "model.onnx",
         "full_graph": "full_graph.onnx"}


def check_opset(opset: int) -> None:
    """Refuse an ONNX opset the exporter cannot write (before anything is built)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} and <= {MAX_OPSET} (what the ONNX exporter writes; "
                         f"--opset), got {opset!r}")


class BackboneGraph(nn.Module):
    """image (B, 3, S, S) → feat_0, feat_1, … (B, D_l, h_l, w_l)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.backbone(image))


class NetworkGraph(nn.Module):
    """image → z_0, logdet_0, z_1, logdet_1, … (backbone + folded flows)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.flows = FoldedFlows(model)

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self.flows(*self.backbone(image))


class FullGraph(nn.Module):
    """image, class_index → posterior, routed_class, logp_0, entropy_0, … (see module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.network = NetworkGraph(model)
        self.scoring = GMMScoring.from_arrays([model.gmm_arrays(l) for l in range(model.n_levels)],
                                              model.feature_shapes)

    def forward(self, image: torch.Tensor, class_index: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out = self.network(image)
        levels = [(out[2 * l], out[2 * l + 1]) for l in range(len(out) // 2)]
        return self.scoring(levels, class_index)


def io_names(n_levels: int) -> Dict[str, List[str]]:
    """Input/output tensor names of every graph."""
    feats = [f"feat_{l}" for l in range(n_levels)]
    zl = [n for l in range(n_levels) for n in (f"z_{l}", f"logdet_{l}")]
    scores = [n for l in range(n_levels) for n in (f"logp_{l}", f"entropy_{l}")]
    return {"backbone_in": ["image"], "backbone_out": feats, "flows_in": feats, "flows_out": zl,
            "model_in": ["image"], "model_out": zl, "full_in": ["image", "class_index"],
            "full_out": ["posterior", "routed_class"] + scores}


def _export(module: nn.Module, args: tuple, path: str, inputs: Sequence[str], outputs: Sequence[str],
            opset: int) -> None:
    dyn = {name: {0: "batch"} for name in list(inputs) + list(outputs)}

    def write(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            # dynamo=False is deliberate (see module docstring): silence only its deprecation notices.
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
            torch.onnx.export(module.eval(), args, tmp, dynamo=False, opset_version=opset, input_names=list(inputs),
                              output_names=list(outputs), dynamic_axes=dyn, do_constant_folding=True)
        check_onnx(tmp)

    fileio.atomic_write(path, write)


def check_onnx(path: str) -> None:
    """``onnx.checker`` with shape inference (``full_check``); raises ``onnx.checker.ValidationError``."""
    import onnx

    onnx.checker.check_model(path, full_check=True)


def export_onnx(model: nn.Module, out_dir: str, opset: int = DEFAULT_OPSET, full_graph: bool = False,
                batch: int = 2) -> Dict[str, str]:
    """Write the ONNX graphs of ``model`` (a loaded ``HGAD``) into ``out_dir``.

    Args:
        model: the eager model (``hgad_edge.detector.load_model``).
        out_dir: folder to write into (normally the model directory).
        opset: ONNX opset, at least 17.
        full_graph: also write ``full_graph.onnx`` (GMM scoring included).
        batch: batch size of the tracing example (the batch axis is dynamic anyway).

    Returns:
        ``{"backbone": file, "flows": file, "model": file[, "full_graph": file]}`` (names in out_dir).
    """
    check_opset(opset)
    model = model.float().cpu().eval()
    size = int(model.cfg.image_size)
    names = io_names(model.n_levels)
    image = torch.zeros(batch, 3, size, size)
    feats = tuple(model.extract_features(image))
    jobs = [("backbone", BackboneGraph(model), (image,), names["backbone_in"], names["backbone_out"]),
            ("flows", FoldedFlows(model), feats, names["flows_in"], names["flows_out"]),
            ("model", NetworkGraph(model), (image,), names["model_in"], names["model_out"])]
    if full_graph:
        jobs.append(("full_graph", FullGraph(model), (image, torch.full((batch,), -1, dtype=torch.int64)),
                     names["full_in"], names["full_out"]))
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    for key, module, args, ins, outs in jobs:
        t0 = time.perf_counter()
        _export(module, args, os.path.join(out_dir, FILES[key]), ins, outs, int(opset))
        written[key] = FILES[key]
        log.info("exported %s (%.1f s, %.1f MB)", FILES[key], time.perf_counter() - t0,
                 os.path.getsize(os.path.join(out_dir, FILES[key])) / 2**20)
    return written


def ort_session(path: str, threads: Optional[int] = None, providers: Optional[Sequence[str]] = None):
    """An ONNX Runtime session with our options (see ``runtime.session_options``)."""
    from hgad_edge.runtime.ort import make_session

    return make_session(path, threads=threads, providers=providers)


def validate_network(model: nn.Module, model_onnx: str, images: np.ndarray, threads: Optional[int] = None
                     ) -> Dict[str, float]:
    """ORT on ``model.onnx`` vs the eager (unfolded) torch model on the same preprocessed batch.

    Returns the worst error per output kind, relative to that output's range over the batch:
    ``{"z": …, "logdet": …}``.
    """
    sess = ort_session(model_onnx, threads=threads)
    outs = sess.run(None, {"image": images.astype(np.float32)})
    with torch.no_grad():
        ref = model.float().eval()(torch.from_numpy(images))
    err = {"z": 0.0, "logdet": 0.0}
    for l, r in enumerate(ref):
        for kind, got, want in (("z", outs[2 * l], r.z.numpy()), ("logdet", outs[2 * l + 1], r.logdet.numpy())):
            span = float(want.max() - want.min()) or 1.0
            err[kind] = max(err[kind], float(np.abs(got - want).max()) / span)
    return err
