"""Conditional normalizing flow x→z per feature level (FrEIA AllInOneBlock) and its condition."""
from __future__ import annotations

import math

import FrEIA.framework as Ff
import FrEIA.modules as Fm
import torch
import torch.nn as nn


def positional_encoding_2d(channels: int, height: int, width: int) -> torch.Tensor:
    """2-D sin/cos positional encoding, (channels, H, W); half the channels encode x, half y."""
    if channels % 4:
        raise ValueError(f"positional encoding needs channels divisible by 4, got {channels}")
    pe = torch.zeros(channels, height, width)
    half = channels // 2
    div = torch.exp(torch.arange(0.0, half, 2) * -(math.log(1e4) / half))  # (half/2,)
    pos_w = torch.arange(0.0, width).unsqueeze(1)  # (W, 1)
    pos_h = torch.arange(0.0, height).unsqueeze(1)  # (H, 1)
    pe[0:half:2] = torch.sin(pos_w * div).t().unsqueeze(1).expand(-1, height, -1)
    pe[1:half:2] = torch.cos(pos_w * div).t().unsqueeze(1).expand(-1, height, -1)
    pe[half::2] = torch.sin(pos_h * div).t().unsqueeze(2).expand(-1, -1, width)
    pe[half + 1::2] = torch.cos(pos_h * div).t().unsqueeze(2).expand(-1, -1, width)
    return pe


class _Subnet(nn.Sequential):
    """Coupling subnet: Linear → ReLU → Linear (official HGAD / CFLOW shape)."""

    def __init__(self, dims_in: int, dims_out: int, hidden: int):
        super().__init__(nn.Linear(dims_in, hidden), nn.ReLU(), nn.Linear(hidden, dims_out))


def build_flow(dim: int, cond_dim: int, blocks: int, clamp: float, hidden_ratio: float) -> Ff.SequenceINN:
    """A conditional flow on (N, dim) vectors with an (N, cond_dim) condition.

    Soft permutations draw random rotations from numpy's global RNG: seed it first.
    """
    flow = Ff.SequenceINN(dim)
    for _ in range(blocks):
        flow.append(
            Fm.AllInOneBlock,
            cond=0,
            cond_shape=(cond_dim,),
            subnet_constructor=lambda i, o: _Subnet(i, o, int(round(hidden_ratio * i))),
            affine_clamping=clamp,
            global_affine_type="SOFTPLUS",
            permute_soft=True,
        )
    return flow
