"""Shared fixtures: small MVTec-layout datasets made from real scikit-image photographs."""
from __future__ import annotations

import pytest

from hgad_edge.data.demo import make_demo_data

DEMO_CLASSES = ("brick", "tissue", "coffee")
TINY_CLASSES = ("grass", "retina")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped without one)")
    config.addinivalue_line("markers", "tensorrt: needs TensorRT and a CUDA device")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """3 classes (brick, tissue, coffee), 12 train + 4 good + 5 defective (one per type) test
    images each, 128², seed 0."""
    root = tmp_path_factory.mktemp("data") / "demo"
    make_demo_data(str(root), classes=DEMO_CLASSES, n_train=12, n_test_good=4, n_test_defect=5,
                   image_size=128, seed=0)
    return str(root)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """2 classes (grass, retina), 8 train + 2 good + 5 defective test images each, 64², seed 1."""
    root = tmp_path_factory.mktemp("data") / "tiny"
    make_demo_data(str(root), classes=TINY_CLASSES, n_train=8, n_test_good=2, n_test_defect=5,
                   image_size=64, seed=1)
    return str(root)
