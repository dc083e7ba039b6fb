"""One tiny model per session for the reliability tests (64² inputs, one coupling block)."""
from __future__ import annotations

import pytest

from hgad_edge import data
from hgad_edge.config import ModelConfig, TrainConfig
from hgad_edge.trainer import train

# The same model the CLI builds from TINY_CLI (so CLI runs and in-process runs are comparable).
TINY_MODEL = dict(image_size=64, coupling_blocks=1, n_intra=2)
TINY_TRAIN = dict(batch_size=4)
TINY_CLI = ["--image-size", "64", "--coupling-blocks", "1", "--n-intra", "2", "--batch-size", "4", "--quiet"]


def tiny_configs(root: str, epochs: int = 3, seed: int = 0):
    classes = data.resolve_classes(root, None)
    return ModelConfig(class_names=classes, **TINY_MODEL), TrainConfig(epochs=epochs, seed=seed, **TINY_TRAIN)


@pytest.fixture(scope="session")
def tiny_run(tiny_root, tmp_path_factory) -> str:
    """A 3-epoch model of tiny_root (grass, retina)."""
    out = str(tmp_path_factory.mktemp("reliability") / "tiny")
    mcfg, tcfg = tiny_configs(tiny_root)
    train(tiny_root, out, mcfg, tcfg, progress=False)
    return out
