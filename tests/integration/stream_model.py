"""The integration tests' tiny model exported to ONNX once per session, shared by the stream
test modules (test_multistream, test_web_view) without another conftest fixture."""
from __future__ import annotations

import shutil
from typing import Dict

_EXPORTED: Dict[str, str] = {}


def onnx_copy(trained_run: str, tmp_path_factory) -> str:
    """A copy of ``trained_run`` with the ONNX Runtime export (made on the first call)."""
    if trained_run not in _EXPORTED:
        from hgad_edge.export.pipeline import ExportConfig, export_model

        run = str(tmp_path_factory.mktemp("stream_onnx") / "run")
        shutil.copytree(trained_run, run)
        export_model(run, ExportConfig(formats=("onnx",)))
        _EXPORTED[trained_run] = run
    return _EXPORTED[trained_run]
