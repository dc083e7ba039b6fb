"""Which backend runs an artifact, at which precision: by name, or ``auto`` (the fastest usable
one, saying why it skipped the others)."""
from __future__ import annotations

import logging
from typing import List, Optional, Tuple

from hgad_edge.artifact import PRECISIONS, Artifact, ArtifactError
from hgad_edge.runtime.base import resolve_device

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino", "tensorrt")
# auto: fastest first. TensorRT only on a GPU; torch is always possible. On the CPU, ONNX Runtime
# before OpenVINO: at fp32 on the default demo model (Xeon with AVX512/AMX, 2 threads, each in
# its own process, interleaved; README "Precision tiers") ONNX Runtime was the faster of the two
# (backbone 5.1 vs 7.1–8.5 ms, flows 7.5 vs 6.6–7.5 ms at batch 1).
AUTO_ORDER = ("tensorrt", "onnxruntime", "openvino", "torch")
# Which precisions each backend can run (what ``hgad-edge export`` can build for it).
BACKEND_PRECISIONS = {"torch": ("fp32",), "onnxruntime": ("fp32", "bf16", "int8"),
                      "openvino": ("fp32", "bf16", "int8"), "tensorrt": ("fp32", "fp16", "int8")}


def check_precision(precision: Optional[str], backend: Optional[str] = None) -> Optional[str]:
    """``None`` or one of ``PRECISIONS`` (that ``backend`` can run); ValueError naming the valid ones."""
    if precision is None:
        return None
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if backend and backend != "auto" and precision not in BACKEND_PRECISIONS[backend]:
        raise ValueError(f"backend {backend!r} runs {BACKEND_PRECISIONS[backend]}, not {precision!r}")
    return precision


def _export_hint(name: str, precision: str, run_dir: str) -> str:
    fmt = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}[name]
    return f"hgad-edge export {run_dir} --format {fmt} --precision {precision}"


def resolve_precision(name: str, art: Artifact, precision: Optional[str]) -> Optional[str]:
    """The precision ``name`` will run for ``art``: ``precision``, or (None) the most precise
    usable one it has (TensorRT: None, its export's default engine). Raises RuntimeError when
    that variant is not exported or not usable (failed validation or its accuracy gate)."""
    check_precision(precision, name)
    if name == "torch":
        return "fp32"
    if name == "tensorrt" and precision is None:
        return None  # the TensorRT backend picks the export's default engine
    usable = art.usable_precisions(name)
    if precision is None:
        if not usable:
            raise RuntimeError(f"{art.run_dir} has no usable {name} export: run "
                               f"`{_export_hint(name, 'fp32', art.run_dir)}`")
        return usable[0]
    skipped = art.skipped_variants()
    if (name, precision) in skipped:
        raise RuntimeError(f"{art.run_dir}: the {name} {precision} export is not usable: {skipped[(name, precision)]}")
    if precision not in usable:
        raise RuntimeError(f"{art.run_dir} has no {name} {precision} export (exported: {usable or 'none'}): run "
                           f"`{_export_hint(name, precision, art.run_dir)}`")
    return precision


def make_backend(name: str, art: Artifact, device: str = "cpu", threads: Optional[int] = None,
                 weights: Optional[dict] = None, precision: Optional[str] = None):
    """The backend ``name`` for ``art`` on ``device`` ('auto', 'cpu', 'cuda', 'cuda:N'; 'auto' is
    resolved for this backend: ``resolve_device``) at ``precision`` (None: the most precise one
    exported for it; TensorRT: the export's default engine).

    Raises ``RuntimeError`` when the artifact lacks the export (or its validation or accuracy
    gate failed), ``ImportError`` when the runtime is not installed (the message says what to
    install), ``ValueError`` for an unknown backend / precision or a device it cannot use.
    """
    if name not in BACKENDS or name == "auto":
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS[1:]}")
    device = resolve_device(device, name)
    skipped = art.skipped_exports()
    if name in skipped:
        raise RuntimeError(f"{art.run_dir}: the {name} backend is not usable: {skipped[name]}")
    precision = resolve_precision(name, art, precision)
    if precision not in (None, "fp32") and not art.gate_passed(name, precision):
        gate = (art.variant(name, precision) or {}).get("accuracy_gate") or {}
        log.warning("%s %s: its accuracy gate did not pass (AUROC drop %s > max %s); used because it was asked for",
                    name, precision, gate.get("drop"), gate.get("max_drop"))
    if name == "torch":
        from hgad_edge.runtime.eager import TorchBackend, load_model

        return TorchBackend(load_model(art, weights), device=device, threads=threads)
    if name == "onnxruntime":
        from hgad_edge.runtime.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(art, device=device, threads=threads, precision=precision)
    if name == "openvino":
        from hgad_edge.runtime.openvino import OpenVinoBackend

        return OpenVinoBackend(art, device=device, threads=threads, precision=precision)
    from hgad_edge.runtime.tensorrt import TensorRTBackend

    return TensorRTBackend(art, device=device, precision=precision)


def auto_order(art: Artifact, device: str, precision: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """(backends to try in order, why each other one is skipped) for ``backend='auto'``.

    ``precision=None``: each backend at its most precise usable variant (fp32 when exported: a
    lower precision is never chosen silently). A reduced precision — asked for, or the only one
    a backend has — is taken only where its accuracy gate passed (TensorRT engines carry no
    gate; their default engine is used as before).
    """
    check_precision(precision)
    device = resolve_device(device)
    usable = art.usable_exports()
    order, why = [], []
    for name in AUTO_ORDER:
        if precision is not None and precision not in BACKEND_PRECISIONS[name]:
            why.append(f"{name}: runs {'/'.join(BACKEND_PRECISIONS[name])}, not {precision}")
            continue
        if name == "torch":
            order.append(name)
            continue
        if name in art.skipped_exports():
            why.append(f"{name}: {art.skipped_exports()[name]}")
            continue
        if name not in usable:
            why.append(f"{name}: not exported")
            continue
        if name == "tensorrt":
            if not device.startswith("cuda"):
                why.append("tensorrt: runs on a CUDA GPU, device is " + device)
            elif precision is not None and precision not in art.usable_precisions(name):
                why.append(f"tensorrt: no usable {precision} engine")
            else:
                order.append(name)
            continue
        if name == "openvino" and device.startswith("cuda"):
            why.append("openvino: runs on the CPU here, device is " + device)
            continue
        have = art.usable_precisions(name)
        p = precision or (have[0] if have else None)
        if p is None or p not in have:
            why.append(f"{name}: no usable {precision or 'fp32'} export"
                       + (f" ({art.skipped_variants()[(name, precision)]})"
                          if (name, precision) in art.skipped_variants() else ""))
        elif not art.gate_passed(name, p):
            why.append(f"{name}: {p} did not pass its accuracy gate (pass backend={name!r}, precision={p!r} "
                       "to use it anyway)")
        else:
            order.append(name)
    return order, why


def auto_backend(art: Artifact, device: str, threads: Optional[int] = None, weights: Optional[dict] = None,
                 precision: Optional[str] = None):
    """The fastest backend that loads (``AUTO_ORDER``: TensorRT engine on CUDA > ONNX Runtime >
    OpenVINO > torch) at ``precision`` (None: fp32 wherever exported; see ``auto_order``)."""
    order, why = auto_order(art, device, precision)
    for reason in why:
        log.info("backend auto skips %s", reason)
    errors = []
    for name in order:
        try:
            backend = make_backend(name, art, device, threads, weights,
                                   None if precision is None and name in ("tensorrt", "torch") else precision)
        except ArtifactError:
            raise  # a damaged model is not a missing backend: say so, don't try the next one
        except (ImportError, RuntimeError, ValueError) as e:
            errors.append(f"{name}: {e}")
            log.warning("backend auto: %s not usable here (%s); trying the next one", name, e)
            continue
        log.info("backend auto → %s %s on %s", name, getattr(backend, "precision", "fp32"), device)
        return backend
    raise RuntimeError("no backend could be loaded: " + "; ".join(errors + why))


def add_arguments(p, backend_default: str = "auto") -> None:
    """The runtime options every CLI verb that scores shares: --backend, --device, --precision
    (argparse; here so that the choices are the registry's own)."""
    p.add_argument("--backend", default=backend_default, choices=BACKENDS,
                   help="inference backend; auto: TensorRT on a GPU > ONNX Runtime > OpenVINO > torch, whichever "
                        "is exported and passed validation")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when visible, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32, fp16 (TensorRT), bf16 (OpenVINO; ONNX Runtime on aarch64) or int8 (default: the most "
                        "precise one exported for the backend; TensorRT: its default engine). Each precision "
                        "scores with its own calibrated thresholds; auto only takes a reduced precision whose "
                        "accuracy gate passed")
