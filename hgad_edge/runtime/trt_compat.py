"""TensorRT version differences and the engine file format, in one small module.

Nothing here imports TensorRT or pycuda at module import; the functions that need them import
them lazily and say what to ``pip install``.

Versions: TensorRT 10.x (JetPack 6) builds reduced precision with builder flags (``FP16``,
``INT8`` + an ``IInt8EntropyCalibrator2``); TensorRT 11 removed those "weak typing" APIs and
requires strongly typed networks, where FP16 comes from an FP16 ONNX graph and INT8 from
explicit Q/DQ nodes. Both serve the name-based tensor API (``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``).

Engine file (``*.engine``): ``MAGIC`` (8 bytes) · header length (uint32 little endian) · JSON
header · serialized TensorRT plan. The header records what the engine was built for (GPU name,
compute capability, TensorRT version, precision), so a copied engine refuses to load on another
GPU or TensorRT version with a clear message instead of failing inside TensorRT.
"""
from __future__ import annotations

import json
import struct
from typing import Dict, Optional, Tuple

MAGIC = b"HGADTRT1"
INSTALL_HINT = "pip install hgad_edge[tensorrt] (tensorrt>=10 and pycuda, on a machine with an NVIDIA GPU)"


class EngineMismatchError(RuntimeError):
    """The engine was built for another GPU or TensorRT version: rebuild it on this device."""


def import_tensorrt():
    """``tensorrt`` module, or ``ImportError`` saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(f"the tensorrt backend needs TensorRT: {INSTALL_HINT} ({e})") from e
    return trt


def import_pycuda():
    """``pycuda.driver`` (initialised), or ``ImportError`` saying how to install it."""
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        raise ImportError(f"the tensorrt backend needs pycuda: {INSTALL_HINT} ({e})") from e
    cuda.init()
    return cuda


def version_tuple(version: str) -> Tuple[int, ...]:
    """"10.3.0.26" → (10, 3, 0, 26); non-numeric parts are dropped."""
    out = []
    for part in str(version).split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def has_weak_typing(trt_version: str) -> bool:
    """TensorRT < 11 has BuilderFlag.FP16/INT8 and INT8 calibrators; 11 removed them."""
    return version_tuple(trt_version)[:1] < (11,)


def network_flags(trt, strongly_typed: bool) -> int:
    """Network creation flags: explicit batch is the only mode since TensorRT 10 (flag 0)."""
    if strongly_typed:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def device_info(device_index: int = 0) -> Dict[str, str]:
    """What an engine is built for: GPU name, compute capability, TensorRT version."""
    trt = import_tensorrt()
    cuda = import_pycuda()
    dev = cuda.Device(int(device_index))
    major, minor = dev.compute_capability()
    return {"gpu": dev.name(), "compute_capability": f"{major}.{minor}", "tensorrt": trt.__version__}


def check_compatible(built_for: Dict[str, str], here: Dict[str, str], path: str = "engine") -> None:
    """Raise ``EngineMismatchError`` when ``built_for`` (engine header) differs from ``here``.

    TensorRT engines are specific to the GPU model (compute capability and SM count) and to the
    exact TensorRT version that built them.
    """
    problems = []
    if str(built_for.get("compute_capability")) != str(here.get("compute_capability")):
        problems.append(f"compute capability {built_for.get('compute_capability')} vs "
                        f"{here.get('compute_capability')} here")
    if str(built_for.get("gpu")) != str(here.get("gpu")):
        problems.append(f"GPU {built_for.get('gpu')!r} vs {here.get('gpu')!r} here")
    if str(built_for.get("tensorrt")) != str(here.get("tensorrt")):
        problems.append(f"TensorRT {built_for.get('tensorrt')} vs {here.get('tensorrt')} here")
    if problems:
        raise EngineMismatchError(
            f"{path} was built for another device ({'; '.join(problems)}). TensorRT engines are not "
            "portable across GPUs or TensorRT versions: rebuild it here with "
            "`hgad-edge export RUN_DIR --format tensorrt`, or use backend='onnxruntime'")


def write_engine(path: str, plan: bytes, header: Dict[str, object]) -> None:
    """Write an engine file atomically: MAGIC · len · JSON header · plan."""
    from hgad_edge import fileio

    head = json.dumps(header, sort_keys=True).encode("utf-8")
    fileio.write_bytes(path, MAGIC + struct.pack("<I", len(head)) + head + bytes(plan))


def read_engine(path: str, read_plan: bool = True) -> Tuple[Dict[str, object], Optional[bytes]]:
    """(header, plan) of an engine file; ``ValueError`` when it is not one of ours."""
    with open(path, "rb") as f:
        magic = f.read(len(MAGIC))
        if magic != MAGIC:
            raise ValueError(f"{path} is not an hgad_edge TensorRT engine (bad magic {magic!r}); "
                             "engines are written by `hgad-edge export RUN_DIR --format tensorrt`")
        (n,) = struct.unpack("<I", f.read(4))
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: damaged engine header: {e}") from e
        plan = f.read() if read_plan else None
    return header, plan
