"""Which backend runs an artifact: by name, or ``auto`` (the fastest usable one, saying why it
skipped the others)."""
from __future__ import annotations

import logging
from typing import List, Optional, Tuple

from hgad_edge.artifact import Artifact, ArtifactError
from hgad_edge.runtime.base import resolve_device

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
# auto: fastest first. TensorRT only on a GPU; torch is always possible.
AUTO_ORDER = ("tensorrt", "onnxruntime", "torch")


def make_backend(name: str, art: Artifact, device: str = "cpu", threads: Optional[int] = None,
                 weights: Optional[dict] = None, precision: Optional[str] = None):
    """The backend ``name`` for ``art`` on ``device`` ('auto', 'cpu', 'cuda', 'cuda:N'; 'auto' is
    resolved for this backend: ``resolve_device``).

    Raises ``RuntimeError`` when the artifact lacks the export (or its validation failed),
    ``ImportError`` when the runtime is not installed (the message says what to install).
    """
    if name not in BACKENDS or name == "auto":
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS[1:]}")
    device = resolve_device(device, name)
    if name == "torch":
        from hgad_edge.runtime.eager import TorchBackend, load_model

        return TorchBackend(load_model(art, weights), device=device, threads=threads)
    skipped = art.skipped_exports()
    if name in skipped:
        raise RuntimeError(f"{art.run_dir}: the {name} backend is not usable: {skipped[name]}")
    if name == "onnxruntime":
        from hgad_edge.runtime.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(art, device=device, threads=threads)
    from hgad_edge.runtime.tensorrt import TensorRTBackend

    return TensorRTBackend(art, device=device, precision=precision)


def auto_order(art: Artifact, device: str) -> Tuple[List[str], List[str]]:
    """(backends to try in order, why each other one is skipped) for ``backend='auto'``."""
    device = resolve_device(device)
    usable = art.usable_exports()
    order, why = [], []
    for name in AUTO_ORDER:
        if name == "torch":
            order.append(name)
        elif name in art.skipped_exports():
            why.append(f"{name}: {art.skipped_exports()[name]}")
        elif name not in usable:
            why.append(f"{name}: not exported")
        elif name == "tensorrt" and not device.startswith("cuda"):
            why.append("tensorrt: runs on a CUDA GPU, device is " + device)
        else:
            order.append(name)
    return order, why


def auto_backend(art: Artifact, device: str, threads: Optional[int] = None, weights: Optional[dict] = None,
                 precision: Optional[str] = None):
    """The fastest backend that loads: TensorRT engine (on CUDA) > ONNX Runtime > torch."""
    order, why = auto_order(art, device)
    for reason in why:
        log.info("backend auto skips %s", reason)
    errors = []
    for name in order:
        try:
            backend = make_backend(name, art, device, threads, weights, precision)
        except ArtifactError:
            raise  # a damaged model is not a missing backend: say so, don't try the next one
        except (ImportError, RuntimeError, ValueError) as e:
            errors.append(f"{name}: {e}")
            log.warning("backend auto: %s not usable here (%s); trying the next one", name, e)
            continue
        log.info("backend auto → %s on %s", name, device)
        return backend
    raise RuntimeError("no backend could be loaded: " + "; ".join(errors + why))


PRECISIONS = ("fp32", "fp16", "int8")


def add_arguments(p, backend_default: str = "auto") -> None:
    """The runtime options every CLI verb that scores shares: --backend, --device, --precision
    (argparse; here so that the choices are the registry's own)."""
    p.add_argument("--backend", default=backend_default, choices=BACKENDS,
                   help="inference backend; auto: TensorRT on a GPU > ONNX Runtime > torch, whichever is "
                        "exported and passed validation")
    p.add_argument("--device", default="auto", help="auto (a CUDA GPU when visible, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="TensorRT engine precision (default: the export's default engine)")
