"""Defaults of training that the command line shows in ``--help``: no torch here (``hgad-edge
--help`` imports none). README "Adding a product class" has the measurements behind them."""

# Mosaic feature maps per class kept in the artifact's replay buffer (``replay.safetensors``), so
# that ``train --from`` can rehearse a class whose images are gone.
REPLAY_PER_CLASS = 16
# ``train --from``: fine-tuning epochs, the flows' learning rate relative to ``--lr``, the replay.
ADD_EPOCHS = 10
ADD_BATCH_SIZE = 2
FLOW_LR_MULT = 1.0
REPLAY_MODES = ("auto", "images", "buffer", "none")
# Old classes replayed from their images: this many fresh mosaics per class and epoch.
REPLAY_PER_EPOCH = 16
# An old class is recalibrated when one of its held-out images' score moved by more than this
# many of the class's calibrated spreads (threshold − median of its normal scores).
DRIFT_TOL = 0.25
