"""The model artifact (DESIGN.md §3): one directory, metadata JSON + safetensors, checksummed."""
from __future__ import annotations

import json
import os
import platform
from typing import Any, Callable, Dict, Optional

from . import _io

FORMAT = "hgad_edge"
FORMAT_VERSION = 1
META = "model.json"
WEIGHTS = "weights.safetensors"
BACKBONE = "backbone.safetensors"
# What the Detector reads from model.json besides format/format_version.
REQUIRED_KEYS = ("model_config", "feature_shapes", "calibration", "files")


class ArtifactError(ValueError):
    """The model directory is missing, damaged, or of a format this version cannot read."""


def library_versions() -> Dict[str, str]:
    import numpy
    import timm
    import torch

    from . import __version__

    return {"hgad_edge": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def write_metadata(run_dir: str, meta: Dict[str, Any]) -> None:
    """Record checksums of every listed file and write model.json atomically."""
    files = meta.setdefault("files", {})
    for name in list(files):
        files[name] = _io.sha256(os.path.join(run_dir, name))
    meta["format"] = FORMAT
    meta["format_version"] = FORMAT_VERSION
    _io.write_json(os.path.join(run_dir, META), meta)


def add_files(run_dir: str, names: list, update: Optional[Callable[[Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Register new files (e.g. exported graphs) in the metadata, with their checksums."""
    meta = read_metadata(run_dir, verify=False)
    for name in names:
        meta["files"][name] = ""
    if update is not None:
        update(meta)
    write_metadata(run_dir, meta)
    return meta


def read_metadata(run_dir: str, verify: bool = True) -> Dict[str, Any]:
    """Load model.json, check format, version and (``verify``) every file's checksum."""
    if not os.path.isdir(run_dir):
        raise ArtifactError(f"model directory not found: {run_dir}")
    path = os.path.join(run_dir, META)
    if not os.path.isfile(path):
        raise ArtifactError(f"{run_dir} is not an hgad_edge model: {META} is missing "
                            "(train one with `hgad-edge train`)")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not an {FORMAT} model file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {version!r}; this hgad_edge reads version "
                            f"{FORMAT_VERSION} (re-export or upgrade hgad_edge)")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    files = meta.get("files")
    if not isinstance(files, dict) or missing:
        raise ArtifactError(f"{path} is incomplete: it lacks {missing or ['files']} (re-train or re-export the model)")
    unlisted = [n for n in (WEIGHTS, BACKBONE) if n not in files]
    if unlisted:  # an unlisted file would be loaded without its checksum
        raise ArtifactError(f"{path} does not list {unlisted} under 'files' with a checksum")
    if verify:
        for name, digest in files.items():
            fp = os.path.join(run_dir, name)
            if not os.path.isfile(fp):
                raise ArtifactError(f"{run_dir}: file {name} listed in {META} is missing")
            actual = _io.sha256(fp)
            if actual != digest:
                raise ArtifactError(f"{run_dir}: {name} was modified or damaged "
                                    f"(sha256 {actual[:12]}…, expected {digest[:12]}…)")
    return meta


def load_tensors(run_dir: str, name: str) -> dict:
    """Read a safetensors file of the artifact (never unpickles)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.path.join(run_dir, name)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"cannot read {path} as safetensors: {e}") from e
