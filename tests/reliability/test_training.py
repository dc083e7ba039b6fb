"""Interrupted training: kill -9 mid-epoch and mid-checkpoint-write, then --resume; a write that
fails part-way keeps the previous checkpoint.

The uninterrupted reference is the session's ``tiny_run``: the same model, data and seed as
``hgad-edge train ... --epochs 3`` with TINY_CLI.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.torch
from safetensors import safe_open
from safetensors.torch import load_file

from hgad_edge import fileio, artifact
from hgad_edge.cli.commands import main as cli_main
from hgad_edge.evaluation.evaluator import evaluate
from hgad_edge.train import replay
from hgad_edge.train.loop import CHECKPOINT, train

from .conftest import TINY_CLI, one_thread, tiny_configs

@pytest.fixture(autouse=True)
def _pinned_threads():
    """In-process training here (resume, the reference) on one thread, as the subprocesses."""
    with one_thread():
        yield


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EPOCHS = 3

# The real CLI, made to stall at a chosen point so the SIGKILL lands exactly there:
#   epoch  — inside epoch STALL_EPOCH (0-based), after its first optimizer step;
#   write  — inside the checkpoint write of epoch STALL_EPOCH + 1, with half the bytes on disk.
_STALLING_CLI = r"""
import os, sys, time
import safetensors.torch as io_mod
import hgad_edge.train.loop as trainer

where, stall_epoch, flag = os.environ["STALL_AT"], int(os.environ["STALL_EPOCH"]), os.environ["STALL_FLAG"]
state = {"epoch": -1, "losses": 0}

def stall():
    open(flag, "w").close()
    time.sleep(600)

real_epoch, real_total_loss, real_save = trainer.train_epoch, trainer.total_loss, io_mod.save_file

def train_epoch(*args, **kwargs):
    state["epoch"], state["losses"] = args[6], 0
    return real_epoch(*args, **kwargs)

def total_loss(*args, **kwargs):
    state["losses"] += 1
    if where == "epoch" and state["epoch"] == stall_epoch and state["losses"] > 3:
        stall()  # one call per level (3): the first batch has been stepped, weights and Adam moved on
    return real_total_loss(*args, **kwargs)

def save_file(tensors, filename, metadata=None):
    real_save(tensors, filename, metadata=metadata)
    if where == "write" and metadata and metadata.get("epoch") == str(stall_epoch + 1):
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        stall()

trainer.train_epoch, trainer.total_loss, io_mod.save_file = train_epoch, total_loss, save_file
from hgad_edge.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _ckpt_epoch(run_dir: str) -> int:
    with safe_open(os.path.join(run_dir, CHECKPOINT), framework="pt") as f:
        return int(f.metadata()["epoch"])


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _kill_during(where: str, data_root: str, out: str, tmp_path, stall_epoch: int = 1) -> None:
    """Run the CLI until it stalls at ``where``, check the checkpoint on disk, then SIGKILL it."""
    flag = str(tmp_path / f"stalled_{where}")
    cmd = [sys.executable, "-c", _STALLING_CLI, "train", "--data", data_root, "--out", out, "--epochs", str(EPOCHS),
           *TINY_CLI]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(STALL_AT=where, STALL_EPOCH=str(stall_epoch), STALL_FLAG=flag),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not os.path.exists(flag):
            if proc.poll() is not None:
                pytest.fail(f"training ended (rc {proc.returncode}) before the stall point:\n{proc.stdout.read()}")
            assert time.monotonic() < deadline, "training never reached the stall point"
            time.sleep(0.05)
        # what a watcher sees right before the kill: the last complete epoch's checkpoint
        assert _ckpt_epoch(out) == stall_epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, artifact.META))


def _assert_same_model(resumed: str, reference: str, data_root: str) -> None:
    meta = artifact.Artifact.read(resumed).to_dict()  # complete, every checksum right
    assert [h["epoch"] for h in meta["history"]] == list(range(1, EPOCHS + 1))
    ref_meta = artifact.Artifact.read(reference).to_dict()
    assert meta["history"][-1]["loss"] == pytest.approx(ref_meta["history"][-1]["loss"], rel=1e-4, abs=1e-4)
    a, b = load_file(os.path.join(reference, artifact.WEIGHTS)), load_file(os.path.join(resumed, artifact.WEIGHTS))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    ea = evaluate(reference, data_root, progress=False)["mean"]
    eb = evaluate(resumed, data_root, progress=False)["mean"]
    for mode in ("known", "auto"):
        for metric, v in ea[mode].items():
            assert abs(eb[mode][metric] - v) <= 0.01, (mode, metric, eb[mode][metric], v)
    assert abs(eb["routing_accuracy"] - ea["routing_accuracy"]) <= 0.01


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(tiny_root, tiny_run, tmp_path, caplog):
    out = str(tmp_path / "run")
    _kill_during("epoch", tiny_root, out, tmp_path, stall_epoch=1)
    assert _ckpt_epoch(out) == 1  # epoch 2's half-done steps are lost, epoch 1 is intact
    # the same CLI, in-process (a second interpreter start costs more than the resumed training)
    with caplog.at_level(logging.INFO, logger="hgad_edge"):
        assert cli_main(["train", "--data", tiny_root, "--out", out, "--epochs", str(EPOCHS), "--resume",
                         *TINY_CLI]) == 0
    assert "resuming after epoch 1" in caplog.text
    _assert_same_model(out, tiny_run, tiny_root)


def test_kill_9_mid_checkpoint_write_keeps_the_previous_checkpoint(tiny_root, tiny_run, tmp_path):
    out = str(tmp_path / "run")
    _kill_during("write", tiny_root, out, tmp_path, stall_epoch=1)
    # the half-written epoch-2 file is a hidden temporary; the checkpoint is still epoch 1 and whole
    assert _ckpt_epoch(out) == 1
    assert len(load_file(os.path.join(out, CHECKPOINT))) > 0
    temps = [n for n in os.listdir(out) if n.endswith(".tmp")]
    assert len(temps) == 1 and temps[0].startswith("." + CHECKPOINT)
    assert cli_main(["train", "--data", tiny_root, "--out", out, "--epochs", str(EPOCHS), "--resume",
                     *TINY_CLI]) == 0
    _assert_same_model(out, tiny_run, tiny_root)
    visible = sorted(n for n in os.listdir(out) if not n.startswith("."))
    assert visible == sorted([artifact.META, artifact.WEIGHTS, artifact.BACKBONE, replay.REPLAY, CHECKPOINT])


def test_write_that_fails_part_way_keeps_the_previous_checkpoint(tiny_root, tiny_run, tmp_path, monkeypatch):
    """In-process: the safetensors writer leaves half a file and raises (disk full)."""
    real = safetensors.torch.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        if metadata and metadata.get("epoch") == "2":
            with open(filename, "r+b") as f:
                f.truncate(os.path.getsize(filename) // 2)
            raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    out = str(tmp_path / "run")
    mcfg, tcfg = tiny_configs(tiny_root, epochs=EPOCHS)
    with pytest.raises(OSError, match="simulated"):
        train(tiny_root, out, mcfg, tcfg, progress=False)
    assert os.listdir(out) == [CHECKPOINT]  # no temporary left behind, no model.json
    assert _ckpt_epoch(out) == 1 and len(load_file(os.path.join(out, CHECKPOINT))) > 0
    monkeypatch.undo()
    train(tiny_root, out, mcfg, tcfg, resume=True, progress=False)
    _assert_same_model(out, tiny_run, tiny_root)


def test_damaged_checkpoint_on_resume_is_a_value_error_naming_it(tiny_root, tmp_path):
    out = str(tmp_path / "run")
    os.makedirs(out)
    with open(os.path.join(out, CHECKPOINT), "wb") as f:
        f.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")  # e.g. a copy cut short
    mcfg, tcfg = tiny_configs(tiny_root, epochs=1)
    try:
        train(tiny_root, out, mcfg, tcfg, resume=True, progress=False)
    except ValueError as e:
        assert CHECKPOINT in str(e)
        return
    pytest.fail("resume from a damaged checkpoint did not raise")
