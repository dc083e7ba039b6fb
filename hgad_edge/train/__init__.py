"""Training: the loop (features cached once, two loss stages), the HGAD losses, checkpoints, torchrun/DDP.

``python -m hgad_edge.train`` (or ``torchrun … -m hgad_edge.train``) is ``hgad-edge train``.
"""
from hgad_edge.train.loop import CHECKPOINT, DEFAULT_COMBINE, LOSS_NAMES, train, write_artifact
from hgad_edge.train.loss import Losses, hgad_losses, total_loss

__all__ = ["CHECKPOINT", "DEFAULT_COMBINE", "LOSS_NAMES", "train", "write_artifact", "Losses", "hgad_losses",
           "total_loss"]
