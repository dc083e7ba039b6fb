"""Inference backends: batch (B, 3, S, S) → per level z (B, N, D) and log|det J| (B, N), as numpy.

Every backend has ``name``, ``run(batch) -> (levels, timings_ms)``. The eager torch backend is
the reference; ONNX Runtime and TensorRT live in ``hgad_edge.export``.
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .model import HGAD

LevelArrays = List[Tuple[np.ndarray, np.ndarray]]  # per level: z (B, N, D), logdet (B, N)


class TorchBackend:
    """Eager PyTorch (unfolded FrEIA flows), CPU or CUDA."""

    name = "torch"

    def __init__(self, model: HGAD, device: str = "cpu", threads: Optional[int] = None):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device='cuda' requested but torch sees no CUDA GPU; use device='cpu'")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> Tuple[LevelArrays, Dict[str, float]]:
        t0 = time.perf_counter()
        x = torch.from_numpy(batch).to(self.device)
        feats = self.model.extract_features(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        outs = self.model.flow(feats)
        levels = [(o.z.float().cpu().numpy(), o.logdet.float().cpu().numpy()) for o in outs]
        t2 = time.perf_counter()
        return levels, {"backbone": (t1 - t0) * 1e3, "flow": (t2 - t1) * 1e3}
