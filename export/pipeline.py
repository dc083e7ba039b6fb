"""``export_model``: add ONNX graphs / TensorRT engines to a model directory and register them.

Everything written is recorded in ``model.json`` with its checksum (``Artifact.add_files``) under
``Artifact.exports[backend]``:

* ``"onnxruntime"``: files, opset, precision, folded, validation errors vs the eager model and
  ``status`` ("passed" / "failed": a failed export is kept for inspection but never loaded).
* ``"tensorrt"``: per precision, the engine file and what it was built for (GPU, compute
  capability, TensorRT version).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional, Tuple

import numpy as np

from hgad_edge.artifact import Artifact
from hgad_edge.runtime.registry import PRECISIONS

log = logging.getLogger(__name__)

FORMATS = ("onnx", "tensorrt")
# ORT vs eager torch on calibration images, relative to each output's range: looser than the
# map tolerance (1e-4) is a failed export, not a rounding difference.
VALIDATION_TOL = 1e-3


@dataclass(frozen=True)
class ExportConfig:
    """What ``hgad-edge export`` writes.

    Attributes:
        formats: subset of ("onnx", "tensorrt"); TensorRT builds from the ONNX graph, so it
            implies onnx.
        precisions: TensorRT engine precisions, subset of ("fp32", "fp16", "int8").
        full_graph: also the whole path with GMM scoring as ONNX ops (``full_graph.onnx``).
        opset: ONNX opset (>= 17).
        calib_data: folder of normal images for INT8 calibration (default: the artifact's
            calibration images).
        calib_images: at most this many calibration images for INT8.
        max_batch: the TensorRT optimization profile covers batch 1..max_batch.
        workspace_mb: TensorRT builder workspace limit.
    """

    formats: Tuple[str, ...] = ("onnx",)
    precisions: Tuple[str, ...] = ("fp16",)
    full_graph: bool = False
    opset: int = 17
    calib_data: Optional[str] = None
    calib_images: int = 64
    max_batch: int = 8
    workspace_mb: int = 1024
    validate_images: int = field(default=4)

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"unknown export format(s) {bad}; choose from {FORMATS}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ValueError(f"unknown precision(s) {bad}; choose from {PRECISIONS}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")


def calibration_images(art, override: Optional[str] = None, limit: int = 64) -> list:
    """Paths of normal images for validation / INT8 calibration.

    ``override``: a folder (searched recursively for images); default: the artifact's held-out
    calibration files that still exist (``Artifact.calibration_paths``).
    """
    from hgad_edge import data

    if override:
        if not os.path.isdir(override):
            raise FileNotFoundError(f"calibration folder not found: {override}")
        paths = data.images_under(override)
        if not paths:
            raise ValueError(f"no images ({', '.join(data.IMAGE_EXTENSIONS)}) under {override}")
    else:
        paths = art.calibration_paths()
    return paths[:limit]


def load_batch(paths, image_size: int) -> np.ndarray:
    """Read and preprocess images into a (B, 3, S, S) float32 batch."""
    from hgad_edge import data
    from hgad_edge.preprocess import preprocess

    return preprocess([data.read_image(p) for p in paths], image_size)


def export_model(run_dir: str, cfg: ExportConfig) -> Artifact:
    """Export the model in ``run_dir`` as ``cfg`` says; returns the updated artifact."""
    import onnx
    import torch

    from hgad_edge.runtime.eager import load_model

    from hgad_edge.export.onnx_export import export_onnx, validate_network

    if "tensorrt" in cfg.formats:  # fail before the ONNX export when TensorRT cannot run here
        from hgad_edge.runtime import trt_compat

        trt_compat.import_tensorrt()
        trt_compat.import_pycuda()
    art = Artifact.read(run_dir)
    model = load_model(art)
    size = art.image_size
    files = export_onnx(model, run_dir, opset=cfg.opset, full_graph=cfg.full_graph)
    paths = calibration_images(art, cfg.calib_data, cfg.validate_images)
    if paths:
        images, source = load_batch(paths, size), "calibration images"
    else:
        rng = np.random.default_rng(0)
        images, source = rng.standard_normal((2, 3, size, size)).astype(np.float32), "random tensors"
        log.warning("no calibration images found (meta data.root moved?): validating on random tensors")
    err = validate_network(model, os.path.join(run_dir, files["model"]), images)
    status = "passed" if max(err.values()) <= VALIDATION_TOL else "failed"
    log.info("ONNX validation vs eager torch on %d %s: %s (%s)", len(images), source, err, status)
    onnx_info = {"files": files, "opset": int(cfg.opset), "precision": "fp32", "folded": True,
                 "full_graph": bool(cfg.full_graph), "dynamic_batch": True, "status": status,
                 "onnx": onnx.__version__, "torch": torch.__version__,
                 "validation": {"images": len(images), "source": source, "max_rel_err": err,
                                "tolerance": VALIDATION_TOL, "status": status}}

    def update(a: Artifact) -> None:
        a.exports["onnxruntime"] = onnx_info

    art.add_files(list(files.values()), update=update)
    if status != "passed":
        log.warning("the ONNX export failed validation (%s > %s): it is recorded but no backend will load it",
                    err, VALIDATION_TOL)
    if "tensorrt" in cfg.formats and status == "passed":
        from hgad_edge.export.tensorrt_build import build_engines

        calib = None
        if "int8" in cfg.precisions:
            calib_paths = calibration_images(art, cfg.calib_data, cfg.calib_images)
            if not calib_paths:
                raise ValueError("INT8 calibration needs normal images: the artifact's calibration files "
                                 f"are not under {art.data.get('root')!r}; pass --calib-data DIR")
            calib = load_batch(calib_paths, size)
        art = build_engines(art, cfg, calib)
    return art
