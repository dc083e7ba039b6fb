"""Test-only stand-ins of the ``tensorrt`` and ``pycuda`` Python APIs (never shipped).

They let the whole TensorRT path of hgad_edge (``export/tensorrt_build.py``, the INT8
calibrator, the engine header, ``hgad_edge/runtime/tensorrt.py`` with the device GMM path) run
on a CPU-only machine:

* ``tests.standins.tensorrt`` — TensorRT 10's build and run API, plans executed by ONNX Runtime.
* ``tests.standins.pycuda.driver`` — contexts, streams, copies and fake device memory (numpy
  byte buffers behind fake addresses; out-of-range access raises).
* ``tests.standins.gmm_device`` — the CUDA GMM entry points on that memory, computed by the
  CPU kernel.

``install(monkeypatch)`` puts them in place (``sys.modules["tensorrt"]``, ``"pycuda"``,
``"pycuda.driver"``; ``hgad_edge.gmm``'s device entry points) and returns a ``StandinGPU``
handle; the ``standin_gpu`` fixture does it for one test. torch keeps seeing no GPU, so
``device="auto"`` resolves to cuda through ``hgad_edge.runtime.base.cuda_available``'s pycuda
branch, as on a machine with pycuda and a CPU-only torch.

For a subprocess: ``python -c "import tests.standins as s; s.install(); ..."`` (repo root on
PYTHONPATH).
"""
from __future__ import annotations

import sys
from typing import List, Optional

import pytest

from tests.standins import gmm_device
from tests.standins import pycuda as _pycuda
from tests.standins import tensorrt as _tensorrt
from tests.standins.pycuda import driver as _driver


class StandinGPU:
    """What a test can inspect and change about the stand-in GPU."""

    trt = _tensorrt
    cuda = _driver

    def __init__(self, monkeypatch, device_gmm: bool):
        self.monkeypatch = monkeypatch
        self.device_gmm = device_gmm  # False: hgad_edge._C is not built, no device GMM path

    @property
    def state(self):
        return _driver.state()

    def live(self) -> List[object]:
        """Device allocations still alive (pycuda's and TensorRT's own)."""
        return self.state.live()

    @property
    def leaks(self) -> List[str]:
        return self.state.leaks

    @property
    def errors(self) -> List[str]:
        return self.state.errors

    def current_contexts(self) -> list:
        """This thread's CUDA context stack."""
        return list(self.state.stack)

    def retained_contexts(self) -> list:
        """Primary-context retains not detached yet."""
        return [c for c in self.state.contexts if not c.detached]

    def set_device(self, name: Optional[str] = None, compute_capability: Optional[tuple] = None) -> None:
        """Pretend to be another GPU from now on (engines built before then were built elsewhere)."""
        spec = self.state.devices[0]
        if name is not None:
            self.monkeypatch.setattr(spec, "name", name)
        if compute_capability is not None:
            self.monkeypatch.setattr(spec, "compute_capability", tuple(compute_capability))

    def set_tensorrt_version(self, version: str) -> None:
        self.monkeypatch.setattr(_tensorrt, "__version__", version)

    def assert_released(self) -> None:
        """Nothing allocated, nothing current, nothing retained, no leak, no misuse recorded."""
        assert not self.live(), f"device memory still allocated: {self.live()}"
        assert not self.current_contexts(), f"contexts still current: {self.current_contexts()}"
        assert not self.retained_contexts(), f"primary contexts still retained: {self.retained_contexts()}"
        assert not self.leaks, self.leaks
        assert not self.errors, self.errors


def install(monkeypatch=None, devices=None) -> StandinGPU:
    """Put the stand-ins in place (fresh state). Without ``monkeypatch``, for the rest of the process."""
    if monkeypatch is None:
        monkeypatch = pytest.MonkeyPatch()
    _driver.reset(devices)
    monkeypatch.setitem(sys.modules, "tensorrt", _tensorrt)
    monkeypatch.setitem(sys.modules, "pycuda", _pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", _driver)
    return StandinGPU(monkeypatch, gmm_device.install(monkeypatch))


@pytest.fixture
def standin_gpu(monkeypatch):
    """The stand-in GPU for one test; fails the test when it recorded a misuse (e.g. device
    memory freed after its context was released)."""
    gpu = install(monkeypatch)
    yield gpu
    assert not gpu.errors, gpu.errors
