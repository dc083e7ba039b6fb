"""Adding classes to a trained model (``train --from``): class list, lineage, calibration kept or
recalibrated as recorded, replay from images or from the artifact's buffer, refusals, resume,
torchrun, and a Detector that routes old and new classes. Tiny models (64², one coupling block)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hgad_edge import artifact, data, fileio
from hgad_edge.artifact import Artifact
from hgad_edge.calibrate import calibrate_class, threshold
from hgad_edge.cli.commands import main as cli_main
from hgad_edge.config import ModelConfig, TrainConfig
from hgad_edge.data.demo import make_demo_data
from hgad_edge.detector import Detector
from hgad_edge.runtime.eager import load_model
from hgad_edge.train import distributed, loop, replay
from hgad_edge.train.defaults import REPLAY_PER_EPOCH
from hgad_edge.train.extend import add_classes, score_drift

OLD, NEW = ("brick", "grass"), ("retina",)
TINY = dict(image_size=64, coupling_blocks=1, n_intra=2)
PER_CLASS = 4  # mosaics per class in the tiny models' replay buffers


def _tcfg(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=4, seed=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    """brick, grass, retina: 8 train (6 fit + 2 held out), 2 good + 2 defective test images each, 64²."""
    out = str(tmp_path_factory.mktemp("add") / "data")
    make_demo_data(out, classes=OLD + NEW, n_train=8, n_test_good=2, n_test_defect=2, image_size=64, seed=2)
    return out


@pytest.fixture(scope="module")
def parent(root, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("add") / "parent")
    loop.train(root, out, ModelConfig(class_names=OLD, **TINY), _tcfg(3), progress=False, replay_per_class=PER_CLASS)
    return out


@pytest.fixture(scope="module")
def child(root, parent, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("add") / "child")
    add_classes(parent, root, NEW, out, _tcfg(2), progress=False)
    return out


def _leftovers(path: str) -> list:
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def test_adding_a_class_appends_it_and_records_the_lineage(parent, child):
    p, c = Artifact.read(parent), Artifact.read(child)  # every checksum verified, the buffer's included
    assert c.class_names == list(OLD + NEW)  # old class ids unchanged, the new one appended
    assert set(c.calibration) == set(OLD + NEW)
    (step,) = c.lineage
    assert step["parent"]["model_json_sha256"] == fileio.sha256(os.path.join(parent, artifact.META))
    assert step["parent"]["weights_sha256"] == fileio.sha256(os.path.join(parent, artifact.WEIGHTS))
    assert step["parent"]["classes"] == list(OLD) and step["added_classes"] == list(NEW)
    assert step["epochs"] == 2 and [h["epoch"] for h in c.history] == [1, 2]
    assert step["replay"]["kind"] == "images" and step["replay"]["images"] == 2 * 6
    assert step["replay"]["mosaics_per_epoch"] == 2 * REPLAY_PER_EPOCH
    assert not p.lineage and replay.REPLAY in c.files
    # the network is the parent's: same config apart from the classes, same flow-input statistics
    assert dataclasses.replace(c.model_config, class_names=p.model_config.class_names) == p.model_config
    wp, wc = load_file(os.path.join(parent, artifact.WEIGHTS)), load_file(os.path.join(child, artifact.WEIGHTS))
    for k in wp:
        if k.startswith("feat_"):
            assert torch.equal(wp[k], wc[k]), k
    assert wc["priors.0.mu"].shape[0] == 3 and not torch.equal(wc["flows.0.module_list.0.subnet.0.weight"],
                                                                wp["flows.0.module_list.0.subnet.0.weight"])


def test_old_calibration_is_kept_or_recalibrated_as_recorded(root, parent, child, tmp_path):
    p, c = Artifact.read(parent), Artifact.read(child)
    cal = c.lineage[0]["calibration"]
    assert set(cal["drift"]) == set(OLD) and all(d is not None for d in cal["drift"].values())
    assert sorted(cal["recalibrated"]) == sorted(n for n, d in cal["drift"].items() if d > cal["drift_tolerance"])
    # a recalibrated class: what calibrating the child on the parent's held-out images gives
    model = load_model(c)
    held = [(path, name) for path, name in p.calibration_samples()]
    raws = loop.score_raws(model, [data.read_image(q) for q, _ in held], [c.class_names.index(n) for _, n in held],
                           4, False)
    for name in OLD:
        if name in cal["recalibrated"]:
            want = calibrate_class([r for r in raws if r.class_index == c.class_names.index(name)], c.image_size)
            np.testing.assert_allclose(c.scores(name), want["scores"][c.combine], rtol=1e-5, atol=1e-6)
            assert c.scores(name) != p.scores(name)
        else:
            assert c.calibration[name] == p.calibration[name]
    # the tolerance decides: with an infinite one every old class keeps the parent's thresholds bit for bit
    out = str(tmp_path / "kept")
    kept = add_classes(parent, root, NEW, out, _tcfg(1), progress=False, drift_tol=float("inf"))
    assert kept.lineage[0]["calibration"]["recalibrated"] == []
    for name in OLD:
        assert kept.calibration[name] == p.calibration[name]
    with Detector(out, backend="torch") as dk, Detector(parent, backend="torch") as dp:
        assert dk.thresholds[:len(OLD)] == dp.thresholds  # old thresholds (and spreads) unchanged


def test_score_drift_is_zero_for_the_same_scores_and_counts_in_spreads(parent):
    p = Artifact.read(parent)
    held = p.calibration_samples()
    raws = loop.score_raws(load_model(p), [data.read_image(q) for q, _ in held],
                           [p.class_names.index(n) for _, n in held], 4, False)
    assert score_drift(raws, raws, p) == {n: 0.0 for n in OLD}
    # every log-likelihood lower by one calibrated sd per level: the "position" map (a sum of
    # per-level z-scores) rises by exactly the number of levels everywhere, so does its maximum
    sd = p.normalizer("brick").ll_pos_sd
    shifted = [dataclasses.replace(r, logp=[m - s for m, s in zip(r.logp, sd)]) for r in raws]
    _, spread = threshold(p.scores("brick", "position"), p.target_fpr)
    p.calibrated_maps = lambda *a: ["position"]  # the drift of that map alone
    assert score_drift(raws, shifted, p)["brick"] == pytest.approx(p.n_levels / spread, rel=1e-4)


@pytest.mark.parametrize("classes, message", [
    ("brick", r"class\(es\) \['brick'\] are already in the model .*its classes: brick, grass"),
    ("widget", r"unknown class\(es\) \['widget'\] .*available: brick, grass, retina"),
    ("retina,retina", r"\['retina'\] given more than once"),
    ("", r"--classes must name the class\(es\) to add"),
])
def test_bad_classes_are_refused_before_anything_is_written(root, parent, tmp_path, classes, message):
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match=message):
        add_classes(parent, root, classes, out, _tcfg(1), progress=False)
    assert _leftovers(out) == []


def test_a_class_without_images_and_a_parent_as_out_are_refused(root, parent, tmp_path):
    bad = str(tmp_path / "data")
    shutil.copytree(root, bad)
    good = os.path.join(bad, "retina", "train", "good")
    for name in os.listdir(good):
        os.remove(os.path.join(good, name))
    out = str(tmp_path / "run")
    with pytest.raises(ValueError, match=f"class 'retina' has no training images in {good!r}"):
        add_classes(parent, bad, NEW, out, _tcfg(1), progress=False)
    assert _leftovers(out) == []
    with pytest.raises(ValueError, match="is the parent model itself"):
        add_classes(parent, root, NEW, parent, _tcfg(1), progress=False)
    with pytest.raises(artifact.ArtifactError, match="not an hgad_edge model"):
        add_classes(str(tmp_path), root, NEW, out, _tcfg(1), progress=False)


def test_cli_refusals_exit_2_with_one_line(root, parent, tmp_path, capsys):
    out = str(tmp_path / "run")
    base = ["train", "--from", parent, "--data", root, "--out", out, "--quiet"]
    cases = [(["--classes", "brick"], "are already in the model"),
             (["--classes", "retina", "--image-size", "128"], "--image-size: the network comes from the parent"),
             ([], "--from needs --classes"),
             (["--classes", "retina", "--replay", "buffer", "--replay-buffer", "0", "--from", str(tmp_path)],
              "not an hgad_edge model")]
    for extra, message in cases:
        assert cli_main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("hgad-edge train: error:"), err
    assert cli_main(["train", "--data", root, "--out", out, "--replay", "images"]) == 2
    assert "needs --from" in capsys.readouterr().err
    assert _leftovers(out) == []


def test_detector_routes_old_and_new_classes(root, child):
    samples = data.test_samples(root, OLD + NEW) + [s for s in data.train_samples(root, OLD + NEW)]
    with Detector(child, backend="torch") as det:
        results = det.predict([data.read_image(s.path) for s in samples])
    routed = [r.class_name for r in results]
    assert routed == [s.class_name for s in samples]


def test_replay_buffer_holds_mosaics_of_the_training_features(root, parent):
    p = Artifact.read(parent)
    feats, labels, per_class = replay.load_buffer(p)
    assert per_class == PER_CLASS and labels.tolist() == [0] * PER_CLASS + [1] * PER_CLASS
    fit, _ = data.split_calibration(data.train_samples(root, OLD), 0.2, 0)
    model = load_model(p)
    real = loop.cache_features(model, loop.load_images(fit, False, ""), 4, False)
    y = torch.tensor([s.class_index for s in fit])
    for l, (buf, f) in enumerate(zip(feats, real)):
        for c in range(len(OLD)):
            mine = f[y == c].flatten(2)  # (n, D, N)
            mos = buf[labels == c].flatten(2)  # (M, D, N)
            # every position of a mosaic is that position of one of the class's training images (float16)
            err = (mos.unsqueeze(1) - mine.unsqueeze(0)).abs().amax(dim=2).min(dim=1).values  # (M, N)
            assert float(err.max()) <= 2e-3 * float(mine.abs().max()), (l, c)
    assert replay.size_mb(feats) == pytest.approx(os.path.getsize(p.path(replay.REPLAY)) / 1e6, rel=0.02)


def test_without_the_old_images_the_buffer_is_replayed(root, parent, tmp_path):
    only_new = str(tmp_path / "data")
    shutil.copytree(root, only_new, ignore=lambda d, names: [n for n in names if d == root and n in OLD])
    out = str(tmp_path / "run")
    art = add_classes(parent, only_new, NEW, out, _tcfg(1), progress=False)
    step = art.lineage[0]
    assert step["replay"]["kind"] == "buffer" and step["replay"]["buffer_samples"] == 2 * PER_CLASS
    assert step["replay"]["buffer_mb"] > 0
    feats, labels, _ = replay.load_buffer(art)  # the child's buffer: the parent's old rows + the new class
    assert labels.tolist() == [0] * PER_CLASS + [1] * PER_CLASS + [2] * PER_CLASS
    old_feats, _, _ = replay.load_buffer(Artifact.read(parent))
    assert all(torch.equal(a[:2 * PER_CLASS], b) for a, b in zip(feats, old_feats))
    # the parent's held-out images are still found under its own data root: drift was measured
    assert all(d is not None for d in step["calibration"]["drift"].values())
    # a parent without a buffer and a --data without its classes: nothing to replay, said clearly
    bare = str(tmp_path / "bare")
    shutil.copytree(parent, bare)
    meta = json.load(open(os.path.join(bare, artifact.META)))
    del meta["files"][replay.REPLAY]
    os.remove(os.path.join(bare, replay.REPLAY))
    meta[artifact.CONTENT_KEY] = artifact.content_checksum(meta)
    fileio.write_json(os.path.join(bare, artifact.META), meta)
    with pytest.raises(ValueError, match=r"no replay for the model's class\(es\) \['brick', 'grass'\].*--replay none"):
        add_classes(bare, only_new, NEW, str(tmp_path / "run2"), _tcfg(1), progress=False)


def test_resume_continues_exactly(root, parent, child, tmp_path):
    out = str(tmp_path / "resumed")
    add_classes(parent, root, NEW, out, _tcfg(1), progress=False)
    os.remove(os.path.join(out, artifact.META))  # as if killed after epoch 1's checkpoint
    assert cli_main(["train", "--from", parent, "--data", root, "--classes", ",".join(NEW), "--out", out,
                     "--epochs", "2", "--batch-size", "4", "--quiet", "--resume"]) == 0
    a, b = load_file(os.path.join(child, artifact.WEIGHTS)), load_file(os.path.join(out, artifact.WEIGHTS))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=1e-5, atol=1e-6, err_msg=k)
    assert [h["epoch"] for h in Artifact.read(out).history] == [1, 2]
    # a checkpoint of another parent is not resumed from
    os.remove(os.path.join(out, artifact.META))
    other = str(tmp_path / "other_parent")
    shutil.copytree(parent, other)
    meta = json.load(open(os.path.join(other, artifact.META)))
    meta["target_fpr"] = 0.05  # another model.json: another parent checksum
    meta[artifact.CONTENT_KEY] = artifact.content_checksum(meta)
    fileio.write_json(os.path.join(other, artifact.META), meta)
    with pytest.raises(ValueError, match="another parent model"):
        add_classes(other, root, NEW, out, _tcfg(2), resume=True, progress=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str, parent: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    distributed.init("gloo")
    try:
        art = add_classes(parent, root, NEW, out, _tcfg(2), progress=False)
        with open(f"{out}.rank{rank}.json", "w") as f:
            json.dump({"history": art.history, "classes": art.class_names}, f)
    finally:
        distributed.shutdown()


@pytest.mark.slow
def test_two_torchrun_ranks_add_the_class_as_one_process(root, parent, child, tmp_path):
    out = str(tmp_path / "ddp")
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), root, parent, out), nprocs=2, join=True)
    ranks = [json.load(open(f"{out}.rank{r}.json")) for r in range(2)]
    assert ranks[0] == ranks[1]  # every rank returns the artifact rank 0 wrote
    one, two = Artifact.read(child), Artifact.read(out)
    assert two.class_names == one.class_names
    for h1, h2 in zip(one.history, two.history):
        for k in loop.LOSS_NAMES:
            assert h2[k] == pytest.approx(h1[k], rel=1e-3, abs=1e-4), k
    # the buffer is assembled from both shards: the same mosaics one process draws
    (f1, y1, _), (f2, y2, _) = replay.load_buffer(one), replay.load_buffer(two)
    assert torch.equal(y1, y2)
    for a, b in zip(f1, f2):
        torch.testing.assert_close(b, a, rtol=0, atol=2e-3 * float(a.abs().max()))
    frames = [data.read_image(s.path) for s in data.test_samples(root, OLD + NEW)]
    with Detector(child, backend="torch") as d1, Detector(out, backend="torch") as d2:
        r1, r2 = d1.predict(frames), d2.predict(frames)
    raw1, raw2 = np.array([r.raw_score for r in r1]), np.array([r.raw_score for r in r2])
    assert [r.class_name for r in r1] == [r.class_name for r in r2]
    assert float(np.abs(raw1 - raw2).max()) <= 1e-2 * float(np.ptp(raw1))


def test_resume_of_a_finished_addition_keeps_it_as_it_is(root, parent, child, tmp_path):
    out = str(tmp_path / "done")
    shutil.copytree(child, out)
    before = {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)}
    art = add_classes(parent, root, NEW, out, _tcfg(2), resume=True, progress=False)
    assert art.class_names == list(OLD + NEW)
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before  # exports would stay
    with pytest.raises(ValueError, match="already holds another model"):
        add_classes(parent, root, NEW, out, _tcfg(3), resume=True, progress=False)
    with pytest.raises(ValueError, match="already holds a trained model"):
        add_classes(parent, root, NEW, out, _tcfg(2), progress=False)
    assert {n: open(os.path.join(out, n), "rb").read() for n in os.listdir(out)} == before
