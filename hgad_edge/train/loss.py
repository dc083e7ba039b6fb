"""HGAD losses of one level (DESIGN.md §2), on flattened positions."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .model import MixturePrior

LOG_2PI = math.log(2 * math.pi)


class Losses(NamedTuple):
    g: torch.Tensor
    mi: torch.Tensor
    e: torch.Tensor
    g_intra: torch.Tensor
    z: torch.Tensor


def squared_distances(z: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """||z_i − c_j||² via the BLAS expansion: z (M, D), centers (J, D) → (M, J)."""
    zz = (z * z).sum(1, keepdim=True)  # (M, 1)
    cc = (centers * centers).sum(1)  # (J,)
    return (zz - 2.0 * z @ centers.t() + cc).clamp_min(0.0)  # (M, J)


def hgad_losses(z: torch.Tensor, logdet: torch.Tensor, y: torch.Tensor, prior: MixturePrior,
                label_smoothing: float = 0.02) -> Losses:
    """All loss terms, each a scalar mean over positions.

    Args:
        z: (M, D) latent vectors; logdet: (M,) log|det J|; y: (M,) class indices.
    """
    m, d = z.shape
    n_classes = prior.mu.shape[0]
    log_pi = prior.log_pi_inter()  # (C,)
    dist = squared_distances(z, prior.mu)  # (M, C)
    logits = -0.5 * dist + log_pi  # (M, C)
    l_g = ((-torch.logsumexp(logits, 1) - logdet) / d).mean()
    target = F.one_hot(y, n_classes).to(z.dtype) * (1 - label_smoothing) + label_smoothing / n_classes  # (M, C)
    l_mi = (target * (F.log_softmax(logits, 1) - log_pi.detach())).sum(1).mean()
    p = F.softmax(-0.5 * dist, 1)  # (M, C)
    l_e = -(p * F.log_softmax(-0.5 * dist, 1)).sum(1).mean()
    centers = prior.intra_centers()  # (C, K, D)
    k = centers.shape[1]
    d_all = squared_distances(z, centers.reshape(n_classes * k, d)).view(m, n_classes, k)  # (M, C, K)
    d_y = d_all.gather(1, y.view(m, 1, 1).expand(m, 1, k)).squeeze(1)  # (M, K)
    lse = torch.logsumexp(-0.5 * d_y + prior.log_pi_intra()[y], 1)  # (M,)
    l_g_intra = ((-lse - logdet) / d).mean()
    logp = (-0.5 * LOG_2PI * d + lse + logdet) / d  # (M,)
    l_z = -F.logsigmoid(logp).mean()
    return Losses(l_g, l_mi, l_e, l_g_intra, l_z)


def total_loss(terms: Losses, stage2: bool, lambda1: float, lambda2: float) -> torch.Tensor:
    """λ1·L_g − λ2·L_mi + L_e, plus L_g_intra + L_z from the second stage on."""
    loss = lambda1 * terms.g - lambda2 * terms.mi + terms.e
    if stage2:
        loss = loss + terms.g_intra + terms.z
    return loss
