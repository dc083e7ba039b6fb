"""One tiny model per session for the reliability tests (64² inputs, one coupling block)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from hgad_edge import data
from hgad_edge.config import ModelConfig, TrainConfig
from hgad_edge.train.loop import train

# The same model the CLI builds from TINY_CLI (so CLI runs and in-process runs are comparable).
TINY_MODEL = dict(image_size=64, coupling_blocks=1, n_intra=2)
TINY_TRAIN = dict(batch_size=4)
TINY_CLI = ["--image-size", "64", "--coupling-blocks", "1", "--n-intra", "2", "--batch-size", "4", "--quiet"]


def tiny_configs(root: str, epochs: int = 3, seed: int = 0):
    classes = data.resolve_classes(root, None)
    return ModelConfig(class_names=classes, **TINY_MODEL), TrainConfig(epochs=epochs, seed=seed, **TINY_TRAIN)


@contextlib.contextmanager
def one_thread():
    """torch on one intra-op thread, as the OMP_NUM_THREADS=1 subprocesses of the kill tests: a
    reduction's float summation order depends on the thread count, and the in-process count is
    whatever earlier tests left (Detector(threads=...) sets it), so runs to compare bit for bit
    pin it (measured: 2.8e-5 weight differences between a 1- and a 2-thread epoch)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_run(tiny_root, tmp_path_factory) -> str:
    """A 3-epoch model of tiny_root (grass, retina), trained on one thread."""
    out = str(tmp_path_factory.mktemp("reliability") / "tiny")
    mcfg, tcfg = tiny_configs(tiny_root)
    with one_thread():
        train(tiny_root, out, mcfg, tcfg, progress=False)
    return out
