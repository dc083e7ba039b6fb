"""A tiny trained model shared by the integration tests (trained once per session)."""
from __future__ import annotations

import pytest

from hgad_edge import data
from hgad_edge.config import ModelConfig, TrainConfig
from hgad_edge.train.loop import train

SMALL = dict(image_size=128, coupling_blocks=2, n_intra=3, pos_dim=32)


def small_configs(root: str, epochs: int = 3, seed: int = 0):
    classes = data.resolve_classes(root, None)
    return ModelConfig(class_names=classes, **SMALL), TrainConfig(epochs=epochs, batch_size=8, seed=seed,
                                                                   stage1_epochs=1)


@pytest.fixture(scope="session")
def trained_run(demo_root, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("runs") / "demo")
    mcfg, tcfg = small_configs(demo_root)
    train(demo_root, out, mcfg, tcfg, progress=False)
    return out
