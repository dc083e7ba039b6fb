"""HGAD losses of one level (docs/design.md §2), on flattened positions; the mixture formulas
themselves are ``hgad_edge.model.mixture`` (shared with the ONNX scoring graph)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from hgad_edge.model.hgad import MixturePrior
from hgad_edge.model.mixture import inter_logits, intra_lse, log_likelihood


class Losses(NamedTuple):
    g: torch.Tensor
    mi: torch.Tensor
    e: torch.Tensor
    g_intra: torch.Tensor
    z: torch.Tensor


def hgad_losses(z: torch.Tensor, logdet: torch.Tensor, y: torch.Tensor, prior: MixturePrior,
                label_smoothing: float = 0.02) -> Losses:
    """All loss terms, each a scalar mean over positions.

    Args:
        z: (M, D) latent vectors; logdet: (M,) log|det J|; y: (M,) class indices.
    """
    m, d = z.shape
    n_classes = prior.mu.shape[0]
    log_pi = prior.log_pi_inter()  # (C,)
    logits = inter_logits(z, prior.mu, log_pi)  # (M, C)
    l_g = ((-torch.logsumexp(logits, 1) - logdet) / d).mean()
    target = F.one_hot(y, n_classes).to(z.dtype) * (1 - label_smoothing) + label_smoothing / n_classes  # (M, C)
    l_mi = (target * (F.log_softmax(logits, 1) - log_pi.detach())).sum(1).mean()
    half_dist = logits - log_pi  # (M, C) −½ d: L_e is the entropy of the unweighted posterior
    l_e = -(F.softmax(half_dist, 1) * F.log_softmax(half_dist, 1)).sum(1).mean()
    lse_all = intra_lse(z, prior.intra_centers(), prior.log_pi_intra())  # (M, C)
    lse = lse_all.gather(1, y.view(m, 1)).squeeze(1)  # (M,)
    l_g_intra = ((-lse - logdet) / d).mean()
    l_z = -F.logsigmoid(log_likelihood(lse, logdet, d)).mean()
    return Losses(l_g, l_mi, l_e, l_g_intra, l_z)


def total_loss(terms: Losses, stage2: bool, lambda1: float, lambda2: float) -> torch.Tensor:
    """λ1·L_g − λ2·L_mi + L_e, plus L_g_intra + L_z from the second stage on."""
    loss = lambda1 * terms.g - lambda2 * terms.mi + terms.e
    if stage2:
        loss = loss + terms.g_intra + terms.z
    return loss
