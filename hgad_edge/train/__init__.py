"""Training: the loop (features cached once, two loss stages), the HGAD losses, checkpoints,
torchrun/DDP, and adding classes to a trained model (``extend``, with the ``replay`` buffer).

``python -m hgad_edge.train`` (or ``torchrun … -m hgad_edge.train``) is ``hgad-edge train``.
The names below are imported on first use, so ``hgad_edge.train.defaults`` (what ``--help``
shows) loads without torch.
"""
import importlib

_EXPORTS = {"CHECKPOINT": "loop", "DEFAULT_COMBINE": "loop", "LOSS_NAMES": "loop", "train": "loop",
            "write_artifact": "loop", "Losses": "loss", "hgad_losses": "loss", "total_loss": "loss",
            "add_classes": "extend"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"hgad_edge.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'hgad_edge.train' has no attribute {name!r}")
