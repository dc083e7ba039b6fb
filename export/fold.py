"""Inference-time folding of one level's flow: standardisation + AllInOneBlocks → plain matmuls.

``HGAD.flow_level`` runs FrEIA's ``SequenceINN`` of ``AllInOneBlock`` s on (B·N, D) rows with
the positional condition ``pos`` (N, P) repeated over the batch. At inference everything that
does not depend on the image is a constant, so :class:`FoldedFlow` precomputes it:

* standardisation ``(x − mean) / std`` → folded into the first block: its x1 half into the
  first Linear, the bias table and the permutation rows; its x2 half is one multiply-add; its
  log-Jacobian ``−Σ log std`` joins the constant below.
* each block's subnet ``Linear(cat[x1, cond])`` → ``x1 @ W_xᵀ + bias_table`` with
  ``bias_table = pos @ W_cᵀ + b`` (N, hidden): the condition never enters the graph.
* the coupling's ``a *= 0.1`` → folded into the second Linear's weight and bias.
* the global affine ``softplus`` scale and offset, then the soft permutation ``w_perm`` →
  one (D, D) matrix ``diag(scale) @ w_permᵀ`` and one (D,) offset ``offset @ w_permᵀ``.
* every block's global log-scale ``Σ log scale`` → one constant added to log|det J|.

What is left per block: two matmuls of the subnet, ``clamp·tanh``, ``exp``, one (D, D)
matmul. Layout is (B, N, D) throughout, so the (N, hidden) bias table broadcasts over B.

A 2-D variant (rows M = B·N so that ONNX Runtime fuses matmul + bias into Gemm, halves carried
between blocks instead of Split ops) was measured no faster (6.0 vs 5.7 ms best of 280 runs
for the three flows of the 256² default model, 1 thread): the flows are bound by the matmul
FLOPs (~0.4 GFLOP per frame, 3/4 of them at level 0), not by op overhead.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def _softplus_scale(block: nn.Module) -> torch.Tensor:
    """The global affine scale of one AllInOneBlock, (D,), as FrEIA computes it."""
    return block.global_scale_activation(block.global_scale).reshape(-1)  # (D,)


def _check_block(block: nn.Module) -> None:
    """Refuse configurations the folded forward does not re-implement."""
    name = type(block).__name__
    if name != "AllInOneBlock":
        raise TypeError(f"can only fold FrEIA AllInOneBlock, got {name}")
    if block.GIN or block.householder or block.reverse_pre_permute:
        raise ValueError("folding supports AllInOneBlock without GIN, householder or reverse permutation")
    if block.input_rank != 0:
        raise ValueError(f"folding supports 1-D (N, D) flows, got input rank {block.input_rank}")
    layers = list(block.subnet.children())
    if len(layers) != 3 or not isinstance(layers[0], nn.Linear) or not isinstance(layers[1], nn.ReLU) \
            or not isinstance(layers[2], nn.Linear):
        raise ValueError("folding expects a Linear → ReLU → Linear coupling subnet")


class FoldedBlock(nn.Module):
    """One AllInOneBlock with its condition and constants folded (see module docstring).

    Buffers: ``w_x`` (s1, H) and ``bias_table`` (N, H) of the first Linear; ``w_a`` (H, 2·s2)
    and ``b_a`` (2·s2,) of the second Linear, already × 0.1; ``perm`` (D, D) and
    ``perm_offset`` (D,) of the scaled permutation.
    """

    def __init__(self, block: nn.Module, cond: torch.Tensor, dtype: torch.dtype = torch.float32,
                 in_scale: Optional[torch.Tensor] = None, in_shift: Optional[torch.Tensor] = None):
        super().__init__()
        _check_block(block)
        lin1, _, lin2 = list(block.subnet.children())
        s1, s2 = block.splits
        self.s1, self.s2 = int(s1), int(s2)
        self.clamp = float(block.clamp)
        with torch.no_grad():
            w1 = lin1.weight.double()  # (H, s1 + P)
            w_x, w_c = w1[:, :s1], w1[:, s1:]  # (H, s1), (H, P)
            bias_table = cond.double() @ w_c.t() + lin1.bias.double()  # (N, H)
            scale = _softplus_scale(block).double()  # (D,)
            w_perm = block.w_perm.reshape(block.in_channels, block.in_channels).double()  # (D, D)
            perm = scale[:, None] * w_perm.t()  # (D, D): y = (u·scale + offset) @ w_permᵀ
            perm_offset = block.global_offset.reshape(-1).double() @ w_perm.t()  # (D,)
            w_x = w_x.t()  # (s1, H)
            # The block's input standardised (first block): x = x_raw·a + b. The x1 half folds into
            # w_x, the bias table and the permutation rows; the x2 half stays one multiply-add.
            self.fold_input = in_scale is not None
            if self.fold_input:
                a1, b1 = in_scale[:s1].double(), in_shift[:s1].double()  # (s1,)
                bias_table = bias_table + b1 @ w_x  # (N, H)
                w_x = a1[:, None] * w_x  # (s1, H)
                perm_offset = perm_offset + b1 @ perm[:s1]  # (D,)
                perm = torch.cat([a1[:, None] * perm[:s1], perm[s1:]], dim=0)  # (D, D)
                self.register_buffer("in_scale_2", in_scale[s1:].to(dtype))  # (s2,)
                self.register_buffer("in_shift_2", in_shift[s1:].to(dtype))  # (s2,)
            self.register_buffer("w_x", w_x.contiguous().to(dtype))  # (s1, H)
            self.register_buffer("bias_table", bias_table.to(dtype))  # (N, H)
            self.register_buffer("w_a", (0.1 * lin2.weight.double()).t().contiguous().to(dtype))  # (H, 2·s2)
            self.register_buffer("b_a", (0.1 * lin2.bias.double()).to(dtype))  # (2·s2,)
            self.register_buffer("perm", perm.contiguous().to(dtype))  # (D, D)
            self.register_buffer("perm_offset", perm_offset.to(dtype))  # (D,)
        self.log_scale_sum = float(torch.log(scale).sum())  # global scaling log|det J| (constant)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, N, D) → y (B, N, D), coupling log|det J| (B, N) (without the constant)."""
        x1, x2 = x[..., :self.s1], x[..., self.s1:]  # (B, N, s1), (B, N, s2)
        if self.fold_input:
            x2 = x2 * self.in_scale_2 + self.in_shift_2  # (B, N, s2) standardised
        h = F.relu(torch.matmul(x1, self.w_x) + self.bias_table)  # (B, N, H)
        a = torch.matmul(h, self.w_a) + self.b_a  # (B, N, 2·s2)
        s = self.clamp * torch.tanh(a[..., :self.s2])  # (B, N, s2)
        u2 = x2 * torch.exp(s) + a[..., self.s2:]  # (B, N, s2)
        y = torch.matmul(torch.cat([x1, u2], dim=-1), self.perm) + self.perm_offset  # (B, N, D)
        return y, s.sum(dim=-1)  # (B, N, D), (B, N)


class FoldedFlow(nn.Module):
    """The flow of one level, folded: features (B, D, h, w) → z (B, N, D), log|det J| (B, N).

    Same numbers as ``HGAD.flow_level(level, feat)`` (tested in float64 and float32).

    Args:
        model: a trained ``hgad_edge.model.HGAD``.
        level: feature level index.
        dtype: dtype of the folded constants (float32 for export, float64 for tests).
    """

    def __init__(self, model: nn.Module, level: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        mean = getattr(model, f"feat_mean_{level}").double()  # (D,)
        std = getattr(model, f"feat_std_{level}").double()  # (D,)
        cond = model.position_condition(level).double()  # (N, P)
        self.n_positions = int(cond.shape[0])
        self.dim = int(mean.shape[0])
        blocks = list(model.flows[level].module_list)
        self.blocks = nn.ModuleList([FoldedBlock(blocks[0], cond, dtype, in_scale=1.0 / std, in_shift=-mean / std)]
                                    + [FoldedBlock(b, cond, dtype) for b in blocks[1:]])
        const = sum(b.log_scale_sum for b in self.blocks) - float(torch.log(std).sum())
        self.register_buffer("logdet_const", torch.tensor(const, dtype=dtype))  # ()

    def forward(self, feat: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = feat.flatten(2).transpose(1, 2)  # (B, N, D) raw features, standardised in block 0
        logdet = None
        for block in self.blocks:
            x, j = block(x)  # (B, N, D), (B, N)
            logdet = j if logdet is None else logdet + j
        return x, logdet + self.logdet_const  # (B, N, D), (B, N)


class FoldedFlows(nn.Module):
    """All levels' folded flows: features per level → (z_0, logdet_0, z_1, logdet_1, …)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.flows = nn.ModuleList(FoldedFlow(model, l, dtype) for l in range(model.n_levels))

    def forward(self, *feats: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out: List[torch.Tensor] = []
        for flow, feat in zip(self.flows, feats):
            z, logdet = flow(feat)  # (B, N, D), (B, N)
            out += [z, logdet]
        return tuple(out)
