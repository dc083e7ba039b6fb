"""Each HGAD loss term against a direct float64 implementation of its docs/design.md formula."""
import math

import numpy as np
import pytest
import torch

from hgad_edge.train.loss import hgad_losses, total_loss
from hgad_edge.model.hgad import MixturePrior
from hgad_edge.train.loop import make_optimizer, make_scheduler


def _logsumexp(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(a - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _reference(z, logdet, y, mu, phi_inter, mu_intra, phi_intra, eps):
    """Plain float64 loops over the formulas, no expansion tricks."""
    m, d = z.shape
    c = mu.shape[0]
    log_pi = phi_inter - _logsumexp(phi_inter, 0)
    dist = np.array([[np.sum((z[i] - mu[j]) ** 2) for j in range(c)] for i in range(m)])
    logits = -0.5 * dist + log_pi
    l_g = np.mean((-_logsumexp(logits, 1) - logdet) / d)
    log_post = logits - _logsumexp(logits, 1)[:, None]
    target = np.full((m, c), eps / c)
    target[np.arange(m), y] += 1 - eps
    l_mi = np.mean(np.sum(target * (log_post - log_pi), 1))
    q = -0.5 * dist - _logsumexp(-0.5 * dist, 1)[:, None]
    l_e = np.mean(-np.sum(np.exp(q) * q, 1))
    log_pi_k = phi_intra - _logsumexp(phi_intra, 1)[:, None]
    lse = np.array([_logsumexp(np.array([-0.5 * np.sum((z[i] - mu_intra[y[i], k]) ** 2) + log_pi_k[y[i], k]
                                         for k in range(mu_intra.shape[1])]), 0) for i in range(m)])
    l_gi = np.mean((-lse - logdet) / d)
    logp = (-0.5 * math.log(2 * math.pi) * d + lse + logdet) / d
    l_z = np.mean(np.log1p(np.exp(-logp)))
    return l_g, l_mi, l_e, l_gi, l_z


@pytest.mark.parametrize("c,k,d", [(3, 4, 7), (1, 1, 5), (5, 2, 16)])
def test_losses_match_float64_formulas(c, k, d):
    torch.manual_seed(c * 100 + k * 10 + d)
    prior = MixturePrior(c, k, d, center_scale=1.5).double()
    with torch.no_grad():
        prior.phi_inter.normal_()
        prior.phi_intra.normal_()
        prior.mu.add_(0.3 * torch.randn_like(prior.mu))
    m = 40
    z = torch.randn(m, d, dtype=torch.float64) * 1.3 + 0.2
    logdet = torch.randn(m, dtype=torch.float64)
    y = torch.randint(0, c, (m,))
    got = hgad_losses(z, logdet, y, prior, label_smoothing=0.02)
    ref = _reference(z.numpy(), logdet.numpy(), y.numpy(), prior.mu.detach().numpy(),
                     prior.phi_inter.detach().numpy(), prior.intra_centers().detach().numpy(),
                     prior.phi_intra.detach().numpy(), 0.02)
    for name, g, r in zip(got._fields, got, ref):
        assert float(g) == pytest.approx(r, rel=1e-9, abs=1e-9), name


def test_intra_centers_detach_main_center_for_offsets():
    prior = MixturePrior(2, 3, 4, 1.0)
    prior.intra_centers()[:, 1:].sum().backward()
    assert prior.mu.grad is None or torch.count_nonzero(prior.mu.grad) == 0
    assert torch.count_nonzero(prior.mu_delta.grad) > 0
    prior.zero_grad()
    prior.intra_centers()[:, 0].sum().backward()
    assert torch.count_nonzero(prior.mu.grad) > 0


def test_total_loss_two_stages():
    from hgad_edge.train.loss import Losses

    t = Losses(*[torch.tensor(v) for v in (1.0, 0.5, 0.25, 2.0, 3.0)])
    assert float(total_loss(t, False, 1.0, 100.0)) == pytest.approx(1.0 - 50.0 + 0.25)
    assert float(total_loss(t, True, 1.0, 100.0)) == pytest.approx(1.0 - 50.0 + 0.25 + 2.0 + 3.0)


def test_centers_keep_their_learning_rate_multiple_through_the_schedule():
    from hgad_edge.config import ModelConfig, TrainConfig
    from hgad_edge.model.hgad import HGAD

    model = HGAD(ModelConfig(class_names=("a", "b"), image_size=64, coupling_blocks=1), backbone_weights="none")
    cfg = TrainConfig(epochs=4, lr=1e-3, center_lr_mult=3.0, warmup_epochs=1)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=5)
    seen = []
    for _ in range(20):
        opt.step()
        sched.step()
        flows, centers = (g["lr"] for g in opt.param_groups)
        assert centers == pytest.approx(3.0 * flows)
        seen.append(flows)
    assert max(seen) == pytest.approx(1e-3, rel=0.05) and seen[-1] < 0.5 * max(seen)
