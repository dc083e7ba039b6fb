"""Output paths of the verbs, refused before any work: a file where a folder is needed (and the
other way round), a path below a file or in a folder we may not write, an existing image, a file
of the model (``fileio.check_outputs`` is the one rule for "an output is an input")."""
from __future__ import annotations

import os
from typing import Optional

from hgad_edge import fileio


def _writable(flag: str, path: str, folder: str) -> None:
    """``folder`` (where ``path`` will be written) can be made and written: the first part of it
    that exists is a folder we may write in."""
    up = os.path.abspath(folder)
    while not os.path.exists(up):
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise ValueError(f"{flag} {path} is below the file {up}, not a folder")
    if not os.access(up, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: no permission to write in {up}")


def check_output_file(flag: str, path: Optional[str], inputs: Optional[dict] = None) -> None:
    """Refuse, before any work, an output file path that cannot be written or would destroy
    something: empty, a folder, below a file, an existing image, or one of ``inputs``
    (``fileio.check_outputs``)."""
    from hgad_edge.data import is_image

    if path is None:
        return
    if not path.strip():
        raise ValueError(f"{flag} needs a file path")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a folder: give a file path")
    _writable(flag, path, os.path.dirname(os.path.abspath(path)))
    if os.path.exists(path) and is_image(path):
        raise ValueError(f"{flag} {path} is an existing image: refusing to overwrite it")
    fileio.check_outputs({flag: path}, inputs or {})


def check_output_dir(flag: str, path: str) -> None:
    """Refuse, before any work, an output folder path that is empty, a file or below a file."""
    if not path or not path.strip():
        raise ValueError(f"{flag} needs a folder path")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file, not a folder")
    _writable(flag, path, path)


def model_files(run_dir: str) -> dict:
    """{name: path} of the files a model directory is made of (model.json, weights, exports, the
    training checkpoint): inputs no output may replace. Empty when ``run_dir`` is no model (the
    command that loads it says so)."""
    from hgad_edge import artifact

    files = {"RUN_DIR/" + artifact.META: os.path.join(run_dir, artifact.META),
             "RUN_DIR/checkpoint.safetensors": os.path.join(run_dir, "checkpoint.safetensors")}
    try:
        art = artifact.Artifact.read(run_dir, verify=False)
    except (ValueError, OSError):
        return files
    for name in list(art.files) + list(art.export_files()):
        files["RUN_DIR/" + name] = os.path.join(run_dir, name)
    return files
