"""Atomic file writes, strict JSON, the output-path guard and checksums.

A crash mid-write never leaves a half-written file; a temporary file is created exclusively
(``mkstemp`` in the target directory, never a fixed name a link could be planted at) and gets the
permissions any other new file would get (``0666 & ~umask``, not ``mkstemp``'s 0600).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from typing import Any, Callable, Dict, Iterable, Mapping, Optional


def umask() -> int:
    """The process umask (read without changing it where the OS allows)."""
    # Linux reports it without changing it; os.umask(0) would, for a moment, for every thread
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


_umask = umask  # the name it had first


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the finished file onto ``path`` in one rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.fchmod(fd, 0o666 & ~umask())
    os.close(fd)
    try:
        write(tmp)
        # ``write`` may have replaced the file (safetensors renames its own 0600 temporary onto it):
        # set the mode on what is there now, never through a link planted at the name
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.fchmod(fd, 0o666 & ~umask())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # a link planted at ``path`` is replaced, never written through
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, _w)


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf; numpy scalars too) replaced by ``None`` and
    numpy scalars/arrays turned into Python numbers/lists, so it serialises as strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "tolist") and type(obj).__module__ == "numpy":
        return finite(obj.tolist())
    return obj


def dumps(obj: Any, **kw: Any) -> str:
    """THE JSON writer of every output (files, JSONL, HTTP, MQTT): strict JSON, no bare ``NaN``
    (non-finite numbers become ``null``, see :func:`finite`)."""
    return json.dumps(finite(obj), allow_nan=False, **kw)


def write_json(path: str, obj: Any) -> None:
    write_bytes(path, (dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _same(a: str, b: str) -> bool:
    ra, rb = os.path.realpath(a), os.path.realpath(b)
    if ra == rb:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: Mapping[str, Optional[str]], inputs: Mapping[str, Optional[str]] = {}) -> None:
    """THE output-path guard: refuse (``ValueError`` naming both) an output that is one of the
    inputs or another output of the same run, through links and relative paths. ``None`` entries
    (an output not asked for) are ignored; the names are the flags as the user typed them."""
    outs = [(k, v) for k, v in outputs.items() if v]
    ins = [(k, v) for k, v in inputs.items() if v]
    for i, (name, path) in enumerate(outs):
        for other, src in ins:
            if _same(path, src):
                raise ValueError(f"{name} {path} is the input {other} {src}: refusing to overwrite an input")
        for other, dst in outs[i + 1:]:
            if _same(path, dst):
                raise ValueError(f"{name} {path} and {other} {dst} are the same file: give each output its own path")


def within(path: str, root: str) -> bool:
    """``path`` resolves (links followed) to ``root`` itself or to something inside it."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def save_tensors(path: str, tensors: Dict[str, Any], metadata: Dict[str, str] | None = None) -> None:
    """Save a flat dict of torch tensors as safetensors (no pickle), atomically."""
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=metadata))


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
