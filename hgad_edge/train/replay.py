"""The feature replay buffer: a few "mosaic" feature maps per class, stored in the artifact
(``replay.safetensors``) so that ``train --from`` can rehearse the old classes without their images.

A mosaic has, at every feature position, the backbone feature of a random training image of the
class at that position (independently per position). The flow and every loss term treat each
position as its own row, conditioned only on its position encoding (nothing mixes positions
after the backbone), so a mosaic is as valid a training sample as a real image, and M mosaics
carry positions of all the class's images instead of M of them. Stored as float16 (the features
are standardised by the stored per-channel mean/std before the flow: a relative error of 5e-4
is far below the spread between images).
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence, Tuple

import torch

from hgad_edge import artifact, fileio
from hgad_edge.train import distributed

REPLAY = artifact.REPLAY


@torch.no_grad()
def build_buffer(feats: Sequence[torch.Tensor], labels: torch.Tensor, classes: Sequence[int], per_class: int,
                 seed: int, dist_info=None) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """``per_class`` mosaics of each class in ``classes`` that has samples.

    Args:
        feats: per level (n_local, D, h, w): the features of this process's samples, i.e. of the
            global indices ``i`` with ``i % world == rank`` in increasing order (all of them for
            one process).
        labels: (n,) the class index of every *global* sample.
        dist_info: ``distributed.DistInfo`` under torchrun: each rank fills the positions whose
            source image it holds and the mosaics are summed over ranks, so every rank gets the
            mosaics one process would draw.

    Returns:
        Per level (Σ per_class, D, h, w) float16, and the (Σ per_class,) class indices.
    """
    world, rank = (dist_info.world, dist_info.rank) if dist_info is not None else (1, 0)
    parts: List[List[torch.Tensor]] = [[] for _ in feats]
    out_y: List[int] = []
    for c in classes:
        idx = (labels == int(c)).nonzero().flatten()  # global sample indices of class c
        if idx.numel() == 0 or per_class <= 0:
            continue
        g = torch.Generator().manual_seed(int(seed) * 1000003 + int(c))
        for l, f in enumerate(feats):
            _, d, h, w = f.shape
            src = idx[torch.randint(0, idx.numel(), (per_class, h * w), generator=g)]  # (M, N) image per position
            pos = torch.arange(h * w).expand(per_class, h * w)
            mine = src % world == rank
            out = torch.zeros(per_class, h * w, d, dtype=torch.float32)
            out[mine] = f.flatten(2)[src[mine] // world, :, pos[mine]].float()
            if world > 1:
                distributed.all_reduce_sum(out)
            parts[l].append(out.permute(0, 2, 1).reshape(per_class, d, h, w).half())
        out_y += [int(c)] * per_class
    if not out_y:
        return [f.new_zeros((0, *f.shape[1:]), dtype=torch.float16) for f in feats], torch.zeros(0, dtype=torch.long)
    return [torch.cat(p) for p in parts], torch.tensor(out_y, dtype=torch.long)


def merge(kept: Tuple[List[torch.Tensor], torch.Tensor], fresh: Tuple[List[torch.Tensor], torch.Tensor]
          ) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Rows of ``kept`` whose class ``fresh`` does not have, then ``fresh``; sorted by class."""
    rows = ~torch.isin(kept[1], fresh[1])
    labels = torch.cat([kept[1][rows], fresh[1]])
    order = torch.argsort(labels, stable=True)
    feats = [torch.cat([a.half()[rows], b.half()])[order] for a, b in zip(kept[0], fresh[0])]
    return feats, labels[order]


def size_mb(feats: Sequence[torch.Tensor]) -> float:
    """Stored size of a buffer's features in MB (float16, whatever dtype ``feats`` has in memory)."""
    return sum(f.numel() for f in feats) * 2 / 1e6


def save_buffer(run_dir: str, feats: Sequence[torch.Tensor], labels: torch.Tensor, class_names: Sequence[str],
                per_class: int) -> str:
    """Write ``replay.safetensors`` atomically (register it in the artifact's ``files``)."""
    tensors = {f"level.{l}": f.half() for l, f in enumerate(feats)}
    tensors["labels"] = labels.long()
    meta = {"kind": "mosaic", "classes": json.dumps(list(class_names)), "per_class": str(int(per_class))}
    fileio.save_tensors(os.path.join(run_dir, REPLAY), tensors, metadata=meta)
    return REPLAY


def load_buffer(art: artifact.Artifact) -> Optional[Tuple[List[torch.Tensor], torch.Tensor, int]]:
    """(features per level float32, labels, per_class) of an artifact's buffer, or None without one.

    Only a buffer listed in the artifact's ``files`` is read (its checksum was verified with the
    artifact); its class list must be the artifact's."""
    if REPLAY not in art.files:
        return None
    from safetensors import SafetensorError, safe_open

    path = art.path(REPLAY)
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        classes = json.loads(meta["classes"])
        per_class = int(meta["per_class"])
        feats = [tensors[f"level.{l}"].float() for l in range(art.n_levels)]
        labels = tensors["labels"].long()
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise artifact.ArtifactError(f"cannot read the replay buffer {path}: {e}") from e
    if classes != art.class_names:
        raise artifact.ArtifactError(f"{path} holds classes {classes}, the model {art.class_names}")
    return feats, labels, per_class
