"""``export_model``: add ONNX graphs, quantized variants, OpenVINO and TensorRT to a model
directory and register them.

Everything written is recorded in ``model.json`` with its checksum (``Artifact.add_files``) under
``Artifact.exports[backend]``:

* ``"onnxruntime"``: files, opset, precision, folded, validation errors vs the eager model and
  ``status`` ("passed" / "failed": a failed export is kept for inspection but never loaded);
  ``variants.int8`` (``bf16`` on aarch64): the quantized graphs.
* ``"openvino"``: ``variants`` fp32 / bf16 (the ONNX graphs, an inference-precision hint) and
  int8 (NNCF IR).
* ``"tensorrt"``: per precision, the engine file and what it was built for (GPU, compute
  capability, TensorRT version).

Every reduced-precision ONNX Runtime / OpenVINO variant gets its own calibration and accuracy
gate (``export/precision.py``): scored with that precision on the held-out normal images, and
refused (status "failed", or kept with ``on_gate_fail="warn"``) when its synthetic-defect AUROC
drops more than ``max_drop`` below fp32.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from hgad_edge.artifact import PRECISIONS, Artifact, validation_reason
# the accuracy gate: image and pixel AUROC on synthetic defects within MAX_DROP of fp32, else
# refuse (or warn and keep the variant for explicit use only)
from hgad_edge.export.precision import GATE_ACTIONS, MAX_DROP

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino", "tensorrt")
# What each format can build, and what it builds when no --precision is given. ONNX (fp32) is
# always written: every other variant is built from it.
FORMAT_PRECISIONS = {"onnx": ("fp32", "bf16", "int8"), "openvino": ("fp32", "bf16", "int8"),
                     "tensorrt": ("fp32", "fp16", "int8")}
DEFAULT_PRECISIONS = {"onnx": ("fp32",), "openvino": ("fp32",), "tensorrt": ("fp16",)}
# ORT / OpenVINO vs eager torch on calibration images, relative to each output's range: looser
# than the map tolerance (1e-4) is a failed export, not a rounding difference.
VALIDATION_TOL = 1e-3


@dataclass(frozen=True)
class ExportConfig:
    """What ``hgad-edge export`` writes.

    Attributes:
        formats: subset of ("onnx", "openvino", "tensorrt"); the fp32 ONNX graphs are always
            written (every other variant is built from them).
        precisions: per format, the requested ones it supports (``FORMAT_PRECISIONS``): onnx
            fp32/bf16/int8, openvino fp32/bf16/int8, tensorrt fp32/fp16/int8. Empty: each
            format's default (``DEFAULT_PRECISIONS``: fp32; TensorRT fp16).
        full_graph: also the whole path with GMM scoring as ONNX ops (``full_graph.onnx``).
        opset: ONNX opset (>= 17).
        calib_data: folder of normal images for INT8 range calibration (default: the artifact's
            held-out calibration images). The per-precision thresholds and the accuracy gate
            always use the artifact's held-out images (they need each image's class).
        calib_images: at most this many calibration images for INT8.
        max_batch: the TensorRT optimization profile covers batch 1..max_batch.
        workspace_mb: TensorRT builder workspace limit.
        max_drop: accuracy gate: largest accepted drop of synthetic-defect image or pixel AUROC
            below fp32.
        on_gate_fail: "refuse" (the variant is recorded as failed and never loaded; the export
            reports failure) or "warn" (kept: used when asked for explicitly, never by auto).
        threads: threads for scoring the held-out images (default: the runtimes' choice).
        progress: progress bars for calibration and the gate.
        reexport: rebuild the fp32 ONNX graphs even when the ones on disk are current (which
            drops every ONNX Runtime / OpenVINO variant built from them).
    """

    formats: Tuple[str, ...] = ("onnx",)
    precisions: Tuple[str, ...] = ()
    full_graph: bool = False
    opset: int = 17
    calib_data: Optional[str] = None
    calib_images: int = 64
    max_batch: int = 8
    workspace_mb: int = 1024
    validate_images: int = field(default=4)
    max_drop: float = MAX_DROP
    on_gate_fail: str = "refuse"
    threads: Optional[int] = None
    progress: bool = False
    reexport: bool = False

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise ValueError(f"unknown export format(s) {bad}; choose from {FORMATS}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ValueError(f"unknown precision(s) {bad}; choose from {PRECISIONS}")
        orphan = [p for p in self.precisions if not any(p in FORMAT_PRECISIONS[f] for f in self.formats)]
        if orphan:
            raise ValueError(f"precision(s) {orphan} are built by none of the formats {list(self.formats)} "
                             f"(onnx: {FORMAT_PRECISIONS['onnx']}, openvino: {FORMAT_PRECISIONS['openvino']}, "
                             f"tensorrt: {FORMAT_PRECISIONS['tensorrt']})")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not 0.0 <= self.max_drop <= 1.0:
            raise ValueError(f"max_drop must be in [0, 1], got {self.max_drop}")
        if self.on_gate_fail not in GATE_ACTIONS:
            raise ValueError(f"on_gate_fail={self.on_gate_fail!r}; choose one of {GATE_ACTIONS}")
        from hgad_edge.export.onnx_export import check_opset

        check_opset(self.opset)
        for name in ("calib_images", "workspace_mb", "validate_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} (--{name.replace('_', '-')}) must be >= 1, got {getattr(self, name)}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads (--threads) must be >= 1, got {self.threads}")
        if self.calib_data is not None and not os.path.isdir(self.calib_data):
            raise ValueError(f"calib_data (--calib-data) {self.calib_data!r} is not a folder of images")

    def precisions_for(self, fmt: str) -> Tuple[str, ...]:
        """The precisions built for ``fmt`` (empty when the format is not requested)."""
        if fmt not in self.formats:
            return ()
        if not self.precisions:
            return DEFAULT_PRECISIONS[fmt]
        return tuple(p for p in self.precisions if p in FORMAT_PRECISIONS[fmt])


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


def _unsupported_here(cfg: ExportConfig) -> Dict[Tuple[str, str], str]:
    """(format, precision) requested but impossible on this machine → why (checked before any work)."""
    out = {}
    if "bf16" in cfg.precisions_for("onnx"):
        from hgad_edge.runtime.ort import bf16_fastmath_supported

        if not bf16_fastmath_supported():
            out[("onnx", "bf16")] = ("ONNX Runtime runs bf16 only on aarch64 CPUs with BF16 (its x86 CPU EP has no "
                                     "bf16 Conv/MatMul kernels); --format openvino --precision bf16 runs bf16 on x86")
    if cfg.precisions_for("openvino"):
        from hgad_edge.runtime.openvino import cpu_has_bf16, import_openvino

        import_openvino()
        if "int8" in cfg.precisions_for("openvino"):
            from hgad_edge.export.openvino_export import import_nncf

            import_nncf()
        if "bf16" in cfg.precisions_for("openvino") and not cpu_has_bf16():
            out[("openvino", "bf16")] = "this CPU has no native bf16 (AVX512_BF16 / AMX)"
    return out


def _source(art: Artifact) -> Dict[str, str]:
    """What the fp32 ONNX graphs are built from: the weights' checksums and the exporter's version."""
    from hgad_edge import artifact
    from hgad_edge.version import __version__

    return {artifact.WEIGHTS: art.files[artifact.WEIGHTS], artifact.BACKBONE: art.files[artifact.BACKBONE],
            "hgad_edge": __version__}


def _current_onnx(art: Artifact, cfg: ExportConfig) -> bool:
    """The fp32 ONNX export on disk is the one ``cfg`` would write (same weights, exporter, opset,
    full graph when asked for) and passed validation: reuse it and the variants built from it."""
    cur = art.exports.get("onnxruntime") or {}
    return (not cfg.reexport and cur.get("status") == "passed" and cur.get("source") == _source(art)
            and int(cur.get("opset", -1)) == int(cfg.opset) and (bool(cur.get("full_graph")) or not cfg.full_graph))


def export_model(run_dir: str, cfg: ExportConfig) -> Artifact:
    """Export the model in ``run_dir`` as ``cfg`` says; returns the updated artifact.

    The fp32 ONNX graphs are written first — unless the ones on disk are current (same weights,
    exporter version, opset; ``cfg.reexport`` forces it), in which case they and every variant
    built from them are kept and only the requested variants are (re)built. New graphs drop the
    ONNX Runtime and OpenVINO variants of the old ones.

    Raises ``ValueError`` before any work when a requested precision cannot be built here (and
    no other requested format builds it)."""
    if "tensorrt" in cfg.formats:  # fail before the ONNX export when TensorRT cannot run here
        from hgad_edge.runtime import trt_compat

        trt_compat.import_tensorrt()
        trt_compat.import_pycuda()
    impossible = _unsupported_here(cfg)
    for (fmt, p), why in impossible.items():
        others = [f for f in cfg.formats if f != fmt and p in cfg.precisions_for(f) and (f, p) not in impossible]
        if not others:
            raise ValueError(f"cannot build {fmt} {p} here: {why}")
        log.warning("skipping %s %s: %s", fmt, p, why)
    art = Artifact.read(run_dir)
    size = art.image_size
    paths = calibration_images(art, cfg.calib_data, cfg.validate_images)
    if paths:
        images, source = load_batch(paths, size), "calibration images"
    else:
        rng = np.random.default_rng(0)
        images, source = rng.standard_normal((2, 3, size, size)).astype(np.float32), "random tensors"
        log.warning("no calibration images found (meta data.root moved?): validating on random tensors")
    if _current_onnx(art, cfg):
        log.info("the fp32 ONNX graphs in %s are current (same weights, exporter, opset): kept, with their variants "
                 "(--reexport rebuilds them)", run_dir)
    else:
        art = _export_onnx(art, cfg, images, source)
        if art.exports["onnxruntime"]["status"] != "passed":
            return art
    wanted = [(f, p) for f in ("onnx", "openvino") for p in cfg.precisions_for(f) if (f, p) not in impossible]
    if wanted:
        art = _export_cpu_variants(art, cfg, wanted, images)
    if "tensorrt" in cfg.formats:
        from hgad_edge.export.tensorrt_build import build_engines

        calib = None
        if "int8" in cfg.precisions_for("tensorrt"):
            calib = _int8_calibration_batch(art, cfg)
        art = build_engines(art, cfg, calib)
    return art


def _export_onnx(art: Artifact, cfg: ExportConfig, images: np.ndarray, source: str) -> Artifact:
    """Write and validate the fp32 ONNX graphs (vs eager torch) and register them."""
    import onnx
    import torch

    from hgad_edge.runtime.eager import load_model

    from hgad_edge.export.onnx_export import export_onnx, validate_network

    model = load_model(art)
    files = export_onnx(model, art.run_dir, opset=cfg.opset, full_graph=cfg.full_graph)
    err = validate_network(model, os.path.join(art.run_dir, files["model"]), images)
    status = "passed" if max(err.values()) <= VALIDATION_TOL else "failed"
    log.info("ONNX validation vs eager torch on %d %s: %s (%s)", len(images), source, err, status)
    onnx_info = {"files": files, "opset": int(cfg.opset), "precision": "fp32", "folded": True,
                 "full_graph": bool(cfg.full_graph), "dynamic_batch": True, "status": status,
                 "onnx": onnx.__version__, "torch": torch.__version__, "source": _source(art),
                 "validation": {"images": len(images), "source": source, "max_rel_err": err,
                                "tolerance": VALIDATION_TOL, "status": status},
                 "variants": {}}

    def update(a: Artifact) -> None:
        a.exports["onnxruntime"] = onnx_info  # new graphs: the variants built from the old ones are gone
        a.exports.pop("openvino", None)

    art.add_files(list(files.values()), update=update)
    if status != "passed":
        log.warning("the ONNX export failed validation (%s > %s): it is recorded but no backend will load it",
                    err, VALIDATION_TOL)
    return art


def _int8_calibration_batch(art: Artifact, cfg: ExportConfig) -> np.ndarray:
    calib_paths = calibration_images(art, cfg.calib_data, cfg.calib_images)
    if not calib_paths:
        raise ValueError("INT8 calibration needs normal images: the artifact's calibration files "
                         f"are not under {art.data.get('root')!r}; pass --calib-data DIR")
    return load_batch(calib_paths, art.image_size)


def _with_variant(art: Artifact, backend: str, precision: str, section: dict) -> Artifact:
    """A copy of ``art`` (not written) that has ``section`` as its ``backend`` ``precision`` variant."""
    tmp = copy.deepcopy(art)
    if backend == "onnxruntime":
        tmp.exports["onnxruntime"].setdefault("variants", {})[precision] = section
    else:
        tmp.exports.setdefault(backend, {"status": "passed", "variants": {}})["variants"][precision] = section
    return tmp


def _open_backend(backend: str, art: Artifact, precision: str, threads: Optional[int]):
    if backend == "onnxruntime":
        from hgad_edge.runtime.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(art, device="cpu", threads=threads, precision=precision)
    from hgad_edge.runtime.openvino import OpenVinoBackend

    return OpenVinoBackend(art, device="cpu", threads=threads, precision=precision)


def _export_cpu_variants(art: Artifact, cfg: ExportConfig, wanted: List[Tuple[str, str]],
                         val_images: np.ndarray) -> Artifact:
    """ONNX Runtime int8/bf16 and OpenVINO fp32/bf16/int8: build, validate (fp32), calibrate and
    gate (reduced precisions), register."""
    from hgad_edge.export import precision as P

    reduced = [(f, p) for f, p in wanted if p != "fp32"]
    held = ref = None
    if reduced:
        held = P.held_out_set(art, progress=cfg.progress)
        ref_backend = _open_backend("onnxruntime", art, "fp32", cfg.threads)
        try:
            ref = P.reference(art, ref_backend, held, progress=cfg.progress)
        finally:
            ref_backend.close()
        calib = _int8_calibration_batch(art, cfg) if any(p == "int8" for _, p in reduced) else None
    fp32_files = art.exports["onnxruntime"]["files"]
    failed: List[str] = []
    for fmt, p in wanted:
        backend = "onnxruntime" if fmt == "onnx" else "openvino"
        if (fmt, p) == ("onnx", "fp32"):
            continue  # the fp32 ONNX export itself
        new_files: List[str] = []
        section: Dict[str, object] = {"precision": p, "status": "passed"}
        if backend == "onnxruntime" and p == "int8":
            from hgad_edge.export.quantize import quantize_network

            files, info = quantize_network(art.run_dir, fp32_files, calib)
            section.update(files=files, quantization=info)
            new_files = [f for f in files.values() if f not in fp32_files.values()]
        elif backend == "onnxruntime":  # bf16: the fp32 graphs with MLAS's bf16 GEMM (aarch64)
            section.update(files={"backbone": fp32_files["backbone"], "flows": fp32_files["flows"]},
                           session_options={"mlas.enable_gemm_fastmath_arm64_bfloat16": "1"})
        else:
            from hgad_edge.export import openvino_export as OV

            section.update(OV.versions())
            if p == "int8":
                files, info = OV.quantize_network(art.run_dir, fp32_files, calib)
                section.update(files=files, quantization=info, inference_precision=info["plan"]["inference_precision"])
                new_files = [f for f in files.values() if f not in fp32_files.values()]
            else:
                section.update(files=OV.float_files(fp32_files), inference_precision={"fp32": "f32", "bf16": "bf16"}[p])
        trial = _with_variant(art, backend, p, section)
        be = _open_backend(backend, trial, p, cfg.threads)
        try:
            if p == "fp32":  # OpenVINO fp32: validated like the ONNX export, thresholds are the fp32 ones
                from hgad_edge.export.openvino_export import level_errors

                ref_be = _open_backend("onnxruntime", art, "fp32", cfg.threads)  # itself validated vs eager torch
                try:
                    want = ref_be.run(val_images)[0]
                finally:
                    ref_be.close()
                err = level_errors(be.run(val_images)[0], want)
                ok = max(err.values()) <= VALIDATION_TOL
                section["validation"] = {"images": len(val_images), "max_rel_err": err, "tolerance": VALIDATION_TOL,
                                         "status": "passed" if ok else "failed", "reference": "onnxruntime fp32"}
                section["status"] = "passed" if ok else "failed"
                if not ok:
                    section["reason"] = validation_reason(section)
                    failed.append(f"{backend} {p}")
                log.info("OpenVINO fp32 validation vs ONNX Runtime fp32: %s (%s)", err, section["status"])
            else:
                section.update(P.calibrate_and_gate(trial, be, held, ref, cfg.max_drop, progress=cfg.progress))
                gate = section["accuracy_gate"]
                if gate["status"] != "passed":
                    if cfg.on_gate_fail == "refuse":
                        section["status"], section["reason"] = "failed", P.gate_reason(gate)
                        failed.append(f"{backend} {p}")
                        log.error("%s %s refused: %s", backend, p, section["reason"])
                    else:
                        log.warning("%s %s exceeded its accuracy gate (drop %.4f > %.4f): kept (on_gate_fail=warn) "
                                    "for explicit use; backend='auto' will not pick it", backend, p, gate["drop"],
                                    gate["max_drop"])
        finally:
            be.close()

        def update(a: Artifact, backend=backend, p=p, section=section) -> None:
            if backend == "onnxruntime":
                a.exports["onnxruntime"].setdefault("variants", {})[p] = section
            else:
                sec = a.exports.setdefault("openvino", {"status": "passed", "variants": {}})
                sec["variants"][p] = section
                sec.update({k: v for k, v in section.items() if k in ("openvino", "nncf")})

        art.add_files(new_files, update=update)
    if failed:
        log.error("refused by the accuracy gate: %s (recorded as failed, never loaded)", ", ".join(failed))
    return art
