"""The Gaussian-mixture scoring of every level as plain torch ops, for the ``--full-graph`` ONNX.

Engines that cannot call our native kernel (Triton's ONNX/TensorRT backends, DeepStream's
nvinfer) get the same numbers as ``hgad_edge.gmm`` from this graph: inter-class posterior and
its entropy, routing by :func:`hgad_edge.gmm.route` (the plurality of the per-position posterior
argmax averaged over levels, ties by the level-averaged image-mean posterior; or a given class),
and the intra-class log-likelihood of the routed class. Same math as the numpy fallback
of ``hgad_edge.gmm.GaussianMixture``: intra distances by the BLAS expansion clamped at 0, inter
logits without the class-independent −½||z||².
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

from hgad_edge.model.mixture import inter_logits, intra_lse, log_likelihood


class LevelGMM(nn.Module):
    """One level's hierarchical mixture: entropy and posterior mean, logp of every class."""

    def __init__(self, mu, log_pi_inter, mu_intra, log_pi_intra):
        super().__init__()
        mu = torch.as_tensor(mu, dtype=torch.float32)  # (C, D)
        mu_intra = torch.as_tensor(mu_intra, dtype=torch.float32)  # (C, K, D)
        c, k, d = mu_intra.shape
        self.n_classes, self.n_intra, self.dim = int(c), int(k), int(d)
        flat = mu_intra.reshape(c * k, d)  # (C·K, D)
        self.register_buffer("mu", mu)
        self.register_buffer("mu_sq", (mu * mu).sum(-1))  # (C,)
        self.register_buffer("log_pi_inter", torch.as_tensor(log_pi_inter, dtype=torch.float32).reshape(c))  # (C,)
        self.register_buffer("mu_intra", mu_intra)  # (C, K, D)
        self.register_buffer("mu_intra_sq", (flat * flat).sum(-1))  # (C·K,)
        self.register_buffer("log_pi_intra", torch.as_tensor(log_pi_intra, dtype=torch.float32).reshape(c, k))
        self.register_buffer("classes", torch.arange(c, dtype=torch.int64))  # (C,)

    def inter(self, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (B, N, D) → entropy (B, N), image-mean posterior (B, C), vote shares (B, C)."""
        logits = inter_logits(z, self.mu, self.log_pi_inter, self.mu_sq, softmax_only=True)  # (B, N, C)
        logq = torch.log_softmax(logits, dim=-1)  # (B, N, C)
        p = torch.exp(logq)  # (B, N, C)
        entropy = -(p * logq).sum(dim=-1)  # (B, N)
        vote = torch.argmax(p, dim=-1, keepdim=True)  # (B, N, 1) first maximum, like np.argmax
        counts = (vote == self.classes).to(p.dtype).sum(dim=1)  # (B, C) integers, exact in float32
        n = counts.sum(dim=-1, keepdim=True).clamp_min(1.0)  # (B, 1) = N: every position votes once
        return entropy, p.mean(dim=1), counts / n  # (B, N), (B, C), (B, C)

    def intra_all(self, z: torch.Tensor, logdet: torch.Tensor) -> torch.Tensor:
        """z (B, N, D), logdet (B, N) → logp / D of every class (B, N, C)."""
        lse = intra_lse(z, self.mu_intra, self.log_pi_intra, self.mu_intra_sq)  # (B, N, C)
        return log_likelihood(lse, logdet.unsqueeze(-1), self.dim)  # (B, N, C)


def route(level_votes: torch.Tensor, posterior: torch.Tensor) -> torch.Tensor:
    """:func:`hgad_edge.gmm.route` as graph ops: level_votes (L, B, C), posterior (B, C) the
    level-averaged image means → class (B,) int64. The vote shares are summed level by level then
    divided by L (as ``np.mean`` of float32 over axis 0); among classes tied on the largest
    share, the largest posterior (a NaN wins), then the first; a NaN share wins outright."""
    total = level_votes[0]
    for l in range(1, level_votes.shape[0]):
        total = total + level_votes[l]
    share = total / float(level_votes.shape[0])  # (B, C)
    tied = share == share.max(dim=-1, keepdim=True).values  # (B, C); all False when the max is NaN
    inf = torch.full_like(share, float("inf"))
    key = torch.where(torch.isnan(share), inf, torch.where(tied, posterior, -inf))  # (B, C)
    return torch.argmax(key, dim=-1)  # (B,) first maximum


class GMMScoring(nn.Module):
    """All levels: (z_l, logdet_l)… and a class index per image (−1 = route) → scores.

    Outputs ``(posterior (B, C), class_index (B,) int64, logp_0 (B, h_0, w_0), entropy_0, …)``.
    """

    def __init__(self, gmms: Sequence[LevelGMM], feature_shapes: Sequence[Tuple[int, int]]):
        super().__init__()
        self.levels = nn.ModuleList(gmms)
        self.feature_shapes = [tuple(int(v) for v in s) for s in feature_shapes]

    @classmethod
    def from_arrays(cls, arrays: Sequence[dict], feature_shapes) -> "GMMScoring":
        """``arrays``: per level a dict with mu, log_pi_inter, mu_intra, log_pi_intra."""
        return cls([LevelGMM(a["mu"], a["log_pi_inter"], a["mu_intra"], a["log_pi_intra"]) for a in arrays],
                   feature_shapes)

    def forward(self, levels: List[Tuple[torch.Tensor, torch.Tensor]], class_index: torch.Tensor):
        inter = [g.inter(z) for g, (z, _) in zip(self.levels, levels)]
        posterior = torch.stack([pm for _, pm, _ in inter], dim=0).mean(dim=0)  # (B, C)
        routed = route(torch.stack([v for _, _, v in inter], dim=0), posterior)  # (B,)
        cls_idx = torch.where(class_index >= 0, class_index, routed)  # (B,)
        out = [posterior, cls_idx]
        for g, (z, logdet), (ent, _, _), (h, w) in zip(self.levels, levels, inter, self.feature_shapes):
            logp_all = g.intra_all(z, logdet)  # (B, N, C)
            index = cls_idx.reshape(-1, 1, 1).expand(-1, logp_all.shape[1], 1)  # (B, N, 1)
            logp = torch.gather(logp_all, 2, index).squeeze(-1)  # (B, N)
            out += [logp.reshape(-1, h, w), ent.reshape(-1, h, w)]
        return tuple(out)
