"""The eager PyTorch backend (the reference every other backend is validated against), and
``load_model``: an artifact's HGAD network rebuilt from its safetensors (no pickle)."""
from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from hgad_edge import artifact
from hgad_edge.artifact import Artifact
from hgad_edge.model.hgad import HGAD
from hgad_edge.runtime.base import LevelArrays


def load_model(art: Artifact, weights: Optional[dict] = None) -> HGAD:
    """Rebuild the eager HGAD model of an artifact from its safetensors (no pickle).

    ``weights``: the artifact's weights tensors when the caller has read them already."""
    model = HGAD(art.model_config, backbone_weights="none")
    model.backbone.body.load_state_dict(artifact.load_tensors(art.run_dir, artifact.BACKBONE))
    if weights is None:
        weights = artifact.load_tensors(art.run_dir, artifact.WEIGHTS)
    weights = {k: v for k, v in weights.items() if not k.startswith("gmm.")}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # shapes that do not fit the config in model.json
        raise artifact.ArtifactError(f"{art.run_dir}: weights do not fit the model config: {e}") from e
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise artifact.ArtifactError(f"{art.run_dir}: weights do not match the model config "
                                     f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


class TorchBackend:
    """Eager PyTorch (unfolded FrEIA flows), CPU or CUDA."""

    name = "torch"

    def __init__(self, model: HGAD, device: str = "cpu", threads: Optional[int] = None):
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("device='cuda' requested but torch sees no CUDA GPU; use device='cpu'")
        if threads is not None:
            torch.set_num_threads(int(threads))
        self._device = torch.device(device)
        self.device = str(self._device)
        self.model = model.to(self._device).eval()

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> Tuple[LevelArrays, Dict[str, float]]:
        t0 = time.perf_counter()
        x = torch.from_numpy(batch).to(self._device)
        feats = self.model.extract_features(x)
        if self._device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        outs = self.model.flow(feats)
        levels = [(o.z.float().cpu().numpy(), o.logdet.float().cpu().numpy()) for o in outs]
        t2 = time.perf_counter()
        return levels, {"backbone": (t1 - t0) * 1e3, "flow": (t2 - t1) * 1e3}

    def close(self) -> None:
        """Nothing to release beyond the module (freed with the backend)."""
