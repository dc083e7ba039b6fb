"""Per-frame scoring shared by calibration, evaluation and the Detector: backend → GMM → maps."""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hgad_edge.gmm import GaussianMixture, route
from hgad_edge.postprocess import FrameRaw
from hgad_edge.preprocess import preprocess


class Scorer:
    """Runs a backend and the per-level Gaussian mixtures; routes each frame independently."""

    def __init__(self, backend, gmms: Sequence[GaussianMixture], feature_shapes: Sequence[Tuple[int, int]],
                 image_size: int):
        self.backend = backend
        self.gmms = list(gmms)
        self.feature_shapes = [tuple(s) for s in feature_shapes]
        self.image_size = int(image_size)

    def forward(self, frames: Sequence[np.ndarray]):
        """Frames → backend outputs per level, with timings (ms)."""
        t0 = time.perf_counter()
        batch = preprocess(frames, self.image_size)
        t1 = time.perf_counter()
        levels, timings = self.backend.run(batch)
        return levels, {"preprocess": (t1 - t0) * 1e3, **timings}

    def score(self, levels, index: int, class_index: Optional[int]) -> FrameRaw:
        """GMM scoring of frame ``index`` of a forward batch; ``class_index=None`` routes."""
        if class_index is None:
            inter = [g.inter_votes(z[index]) for g, (z, _) in zip(self.gmms, levels)]
            posterior = np.mean([pm for _, pm, _ in inter], axis=0)  # (C,)
            c = route([v for _, _, v in inter], [pm for _, pm, _ in inter])
            entropy = [e for e, _, _ in inter]
            logp = [g.intra(z[index], ld[index], c) for g, (z, ld) in zip(self.gmms, levels)]
        else:
            c = int(class_index)
            outs = [g.fused(z[index], ld[index], c) for g, (z, ld) in zip(self.gmms, levels)]
            posterior = np.mean([o.posterior_mean for o in outs], axis=0)
            entropy = [o.entropy for o in outs]
            logp = [o.logp for o in outs]
        shp = self.feature_shapes
        return FrameRaw(c, float(posterior[c]), posterior,
                        [m.reshape(s) for m, s in zip(logp, shp)], [m.reshape(s) for m, s in zip(entropy, shp)],
                        routed=class_index is None)

    def device_scoring(self) -> bool:
        """The backend scores on its device (network and GMM on the GPU, only maps come back):
        it has ``score_on_device``, says it can (``device_scoring``), and the mixtures are native."""
        return (callable(getattr(self.backend, "score_on_device", None))
                and bool(getattr(self.backend, "device_scoring", False))
                and all(g.backend == "native" for g in self.gmms))

    def raw(self, frames: Sequence[np.ndarray], class_indices: Sequence[Optional[int]]
            ) -> Tuple[List[FrameRaw], Dict[str, float]]:
        """Per frame the routed (``None``) or given class and the per-level maps, with timings (ms)."""
        if self.device_scoring():
            t0 = time.perf_counter()
            batch = preprocess(frames, self.image_size)
            t1 = time.perf_counter()
            out, timings = self.backend.score_on_device(batch, list(class_indices), self.gmms, self.feature_shapes)
            return out, {"preprocess": (t1 - t0) * 1e3, **timings}
        levels, timings = self.forward(frames)
        t0 = time.perf_counter()
        out = [self.score(levels, i, c) for i, c in enumerate(class_indices)]
        timings["gmm"] = (time.perf_counter() - t0) * 1e3
        return out, timings
