"""Stand-ins of the CUDA GMM entry points (``GaussianMixture.inter_cuda`` / ``intra_cuda``,
``hgad_edge.gmm.route_cuda``) on the pycuda stand-in's fake device memory.

Only the lowest layer is replaced: ``hgad_edge.gmm._C`` becomes a proxy of the real extension
whose ``has_cuda()`` is True and whose ``route_cuda`` is queued here, and
``GaussianMixture._device_native`` returns kernels that resolve the device pointers through the
stand-in registry and compute with the CPU kernel of the same mixture (``inter`` / ``intra``)
and :func:`hgad_edge.gmm.route` (votes and means, the same rule as the kernels). The public wrappers (argument checks, pointer and stream
conversion) run unchanged. Like the CUDA kernels the work is queued on the stream and runs at
the next synchronisation; an out-of-range class in device memory gives NaN logp.
"""
from __future__ import annotations

import numpy as np

from hgad_edge import gmm as G
from tests.standins.pycuda import driver


class DeviceKernels:
    """The device entry points of one mixture (what ``_C.GMMParams`` has on a CUDA build)."""

    def __init__(self, mixture: G.GaussianMixture):
        self.gm = mixture

    def inter_cuda(self, z: int, half: bool, n: int, entropy: int, mean: int, votes: int, stream: int) -> None:
        gm = self.gm
        driver.check_stream(stream, "inter_cuda")

        def run() -> None:
            zz = driver.read(z, (n, gm.dim), np.float16 if half else np.float32, "inter_cuda z").astype(np.float32)
            ent, pm, vs = gm.inter_votes(zz)
            if n:
                driver.write(entropy, np.asarray(ent, np.float32), "inter_cuda entropy")
            driver.write(mean, np.asarray(pm, np.float32), "inter_cuda posterior_mean")
            driver.write(votes, np.asarray(vs, np.float32), "inter_cuda votes")

        driver.enqueue(stream, "inter_cuda", run)

    def intra_cuda(self, z: int, half: bool, logdet: int, n: int, cls: int, logp: int, stream: int) -> None:
        gm = self.gm
        driver.check_stream(stream, "intra_cuda")
        if n == 0:
            return  # launches nothing

        def run() -> None:
            c = int(driver.read(cls, (1,), np.int32, "intra_cuda class")[0])
            zz = driver.read(z, (n, gm.dim), np.float16 if half else np.float32, "intra_cuda z").astype(np.float32)
            ld = driver.read(logdet, (n,), np.float32, "intra_cuda logdet")
            out = gm.intra(zz, ld, c) if 0 <= c < gm.n_classes else np.full(n, np.nan, np.float32)
            driver.write(logp, np.asarray(out, np.float32), "intra_cuda logp")

        driver.enqueue(stream, "intra_cuda", run)


def _route_cuda(votes: int, means: int, n_levels: int, n_classes: int, class_index: int, cls: int,
                stream: int) -> None:
    driver.check_stream(stream, "route_cuda")

    def run() -> None:
        if class_index >= 0:
            c = class_index
        else:
            c = G.route(driver.read(votes, (n_levels, n_classes), np.float32, "route_cuda votes"),
                        driver.read(means, (n_levels, n_classes), np.float32, "route_cuda means"))
        driver.write(cls, np.array([c], np.int32), "route_cuda class")

    driver.enqueue(stream, "route_cuda", run)


class _CProxy:
    """The real ``hgad_edge._C`` with CUDA reported and ``route_cuda`` on the stand-in memory."""

    def __init__(self, real):
        self._real = real

    def has_cuda(self) -> bool:
        return True

    route_cuda = staticmethod(_route_cuda)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _device_native(self: G.GaussianMixture) -> DeviceKernels:
    if not G.has_cuda():
        raise RuntimeError(G._NO_CUDA)
    if self._native is None:
        raise RuntimeError("the CUDA entry points need backend='native' or 'auto' with the extension built")
    return DeviceKernels(self)


def install(monkeypatch) -> bool:
    """Patch the device entry points; False (nothing patched) when ``hgad_edge._C`` is not built."""
    if G._C is None:
        return False
    monkeypatch.setattr(G, "_C", _CProxy(G._C))
    monkeypatch.setattr(G.GaussianMixture, "_device_native", _device_native)
    return True
