"""The hierarchical Gaussian-mixture formulas in torch: one definition for the training losses
(``hgad_edge.train.loss``) and the ONNX scoring graph (``hgad_edge.export.gmm_graph``).

The numpy/native inference path (``hgad_edge.gmm``) computes the same quantities; docs/design.md
§2 has the math. Shapes: z (..., D), main centers μ (C, D), intra-class centers (C, K, D).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

LOG_2PI = math.log(2.0 * math.pi)


def squared_distances(z: torch.Tensor, centers: torch.Tensor, centers_sq: Optional[torch.Tensor] = None
                      ) -> torch.Tensor:
    """||z − c_j||² by the BLAS expansion, clamped at 0: z (..., D), centers (J, D) → (..., J)."""
    if centers_sq is None:
        centers_sq = (centers * centers).sum(-1)  # (J,)
    zz = (z * z).sum(-1, keepdim=True)  # (..., 1)
    return (zz - 2.0 * torch.matmul(z, centers.t()) + centers_sq).clamp_min(0.0)  # (..., J)


def inter_logits(z: torch.Tensor, mu: torch.Tensor, log_pi: torch.Tensor, mu_sq: Optional[torch.Tensor] = None,
                 softmax_only: bool = False) -> torch.Tensor:
    """Inter-class logits −½||z − μ_c||² + log π_c: (..., D) → (..., C).

    ``softmax_only``: leave out −½||z||², which is the same for every class and cancels in a
    softmax (posterior, entropy, routing) — no float32 cancellation of the expanded distance
    (error ∝ |z|·|μ| instead of |z|²). Not for a log-likelihood (L_g needs the full logits).
    """
    if mu_sq is None:
        mu_sq = (mu * mu).sum(-1)  # (C,)
    if softmax_only:
        return torch.matmul(z, mu.t()) - 0.5 * mu_sq + log_pi  # (..., C)
    return -0.5 * squared_distances(z, mu, mu_sq) + log_pi  # (..., C)


def intra_lse(z: torch.Tensor, mu_intra: torch.Tensor, log_pi_intra: torch.Tensor,
              mu_intra_sq: Optional[torch.Tensor] = None) -> torch.Tensor:
    """logsumexp_k(−½||z − μ_{c,k}||² + log π_{c,k}) of every class: z (..., D), mu_intra (C, K, D),
    log_pi_intra (C, K) → (..., C). ``mu_intra_sq``: precomputed (C·K,) squared norms."""
    c, k, d = mu_intra.shape
    d_all = squared_distances(z, mu_intra.reshape(c * k, d), mu_intra_sq)  # (..., C·K)
    logits = -0.5 * d_all + log_pi_intra.reshape(c * k)  # (..., C·K)
    return torch.logsumexp(logits.reshape(*logits.shape[:-1], c, k), dim=-1)  # (..., C)


def log_likelihood(lse: torch.Tensor, logdet: torch.Tensor, dim: int) -> torch.Tensor:
    """logp = [−½ log(2π)·D + logsumexp_k(…) + log|det J|] / D (broadcasting ``logdet``)."""
    return (-0.5 * LOG_2PI * dim + lse + logdet) / dim
