"""HGAD as a plain nn.Module: frozen backbone → per-level conditional flows → hierarchical GMM prior."""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hgad_edge.model.backbone import FeatureExtractor
from hgad_edge.config import ModelConfig
from hgad_edge.model.flow import build_flow, positional_encoding_2d

LOG_2PI = math.log(2 * math.pi)


class FlowOutput(NamedTuple):
    """One level's flow output (export sees a plain tuple)."""

    z: torch.Tensor  # (B, N, D)
    logdet: torch.Tensor  # (B, N)


class MixturePrior(nn.Module):
    """Hierarchical Gaussian mixture of one level: C main centers, K intra-class centers each."""

    def __init__(self, n_classes: int, n_intra: int, dim: int, center_scale: float):
        super().__init__()
        self.mu = nn.Parameter(_separated_centers(n_classes, dim, center_scale))  # (C, D)
        self.phi_inter = nn.Parameter(torch.zeros(n_classes))  # (C,)
        self.mu_delta = nn.Parameter(torch.randn(n_classes, n_intra - 1, dim))  # (C, K-1, D)
        self.phi_intra = nn.Parameter(torch.zeros(n_classes, n_intra))  # (C, K)

    def log_pi_inter(self) -> torch.Tensor:
        return F.log_softmax(self.phi_inter, dim=0)  # (C,)

    def log_pi_intra(self) -> torch.Tensor:
        return F.log_softmax(self.phi_intra, dim=1)  # (C, K)

    def intra_centers(self) -> torch.Tensor:
        """μ_{c,0} = μ_c and μ_{c,k} = sg(μ_c) + Δ_{c,k}: (C, K, D)."""
        rest = self.mu.detach().unsqueeze(1) + self.mu_delta  # (C, K-1, D)
        return torch.cat([self.mu.unsqueeze(1), rest], dim=1)  # (C, K, D)


def _separated_centers(n_classes: int, dim: int, scale: float) -> torch.Tensor:
    """Main centers well apart: class c gets its own block of coordinates set to ``scale``."""
    mu = torch.zeros(n_classes, dim)
    if n_classes <= dim:
        block = dim // n_classes
        for c in range(n_classes):
            mu[c, c * block:(c + 1) * block] = scale
    else:  # more classes than dims: random directions of the same norm
        g = torch.Generator().manual_seed(0)
        mu = torch.randn(n_classes, dim, generator=g)
        mu = mu / mu.norm(dim=1, keepdim=True) * scale * math.sqrt(dim / n_classes)
    return mu


class HGAD(nn.Module):
    """Unified anomaly model. Named steps so export can cut the graph at a name:
    ``extract_features`` → ``flow`` → (GMM scoring in ``hgad_edge.gmm``)."""

    def __init__(self, cfg: ModelConfig, backbone_weights: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        self.backbone = FeatureExtractor(cfg.backbone, cfg.levels, weights=backbone_weights, pad=cfg.pad,
                                         pool=cfg.pool)
        with torch.no_grad():
            shapes = [f.shape[-2:] for f in self.backbone(torch.zeros(1, 3, cfg.image_size, cfg.image_size))]
        self.feature_shapes = [(int(h), int(w)) for h, w in shapes]
        self.dims = list(self.backbone.channels)
        self.flows = nn.ModuleList()
        self.priors = nn.ModuleList()
        for l, ((h, w), d) in enumerate(zip(self.feature_shapes, self.dims)):
            pe = positional_encoding_2d(cfg.pos_dim, h, w).reshape(cfg.pos_dim, h * w).t()  # (N, P)
            self.register_buffer(f"pos_{l}", pe.contiguous(), persistent=False)
            # Per-channel feature standardisation, fitted on the training features (set_feature_stats):
            # the flow then starts near its target instead of spending epochs learning the scale.
            self.register_buffer(f"feat_mean_{l}", torch.zeros(d))
            self.register_buffer(f"feat_std_{l}", torch.ones(d))
            self.flows.append(build_flow(d, cfg.pos_dim, cfg.coupling_blocks, cfg.clamp, cfg.hidden_ratio))
            self.priors.append(MixturePrior(len(cfg.class_names), cfg.n_intra, d, cfg.center_scale))

    @property
    def n_levels(self) -> int:
        return len(self.dims)

    def position_condition(self, level: int) -> torch.Tensor:
        return getattr(self, f"pos_{level}")  # (N, P)

    @torch.no_grad()
    def set_feature_stats(self, feats: List[torch.Tensor]) -> None:
        """Fit the per-channel mean/std of each level from (n, D, h, w) training features."""
        for l, f in enumerate(feats):
            getattr(self, f"feat_mean_{l}").copy_(f.mean(dim=(0, 2, 3)))
            getattr(self, f"feat_std_{l}").copy_(f.std(dim=(0, 2, 3)).clamp_min(1e-4))

    def extract_features(self, images: torch.Tensor) -> List[torch.Tensor]:
        """(B, 3, S, S) → list of (B, D_l, h_l, w_l)."""
        return self.backbone(images)

    def flow_level(self, level: int, feat: torch.Tensor) -> FlowOutput:
        """(B, D, h, w) features of one level → z (B, N, D), log|det J| (B, N)."""
        b, d, h, w = feat.shape
        mean, std = getattr(self, f"feat_mean_{level}"), getattr(self, f"feat_std_{level}")  # (D,)
        x = feat.flatten(2).transpose(1, 2).reshape(b * h * w, d)  # (B·N, D)
        x = (x - mean) / std
        cond = self.position_condition(level).repeat(b, 1)  # (B·N, P)
        z, logdet = self.flows[level](x, c=[cond])
        logdet = logdet - torch.log(std).sum()  # density of the raw features: d(x_std)/dx = 1/std
        return FlowOutput(z.reshape(b, h * w, d), logdet.reshape(b, h * w))

    def flow(self, feats: List[torch.Tensor]) -> List[FlowOutput]:
        return [self.flow_level(l, f) for l, f in enumerate(feats)]

    def forward(self, images: torch.Tensor) -> List[FlowOutput]:
        return self.flow(self.extract_features(images))

    def gmm_arrays(self, level: int) -> dict:
        """The prior of one level as float32 numpy arrays for ``hgad_edge.gmm.GaussianMixture``."""
        p = self.priors[level]
        with torch.no_grad():
            arrays = dict(mu=p.mu, log_pi_inter=p.log_pi_inter(), mu_intra=p.intra_centers(),
                          log_pi_intra=p.log_pi_intra())
            return {k: np.ascontiguousarray(v.detach().cpu().numpy(), dtype=np.float32) for k, v in arrays.items()}

    def trainable_state(self) -> dict:
        """Flows and priors (the backbone is stored separately: it never changes)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}
