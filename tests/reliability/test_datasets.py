"""Broken datasets through training and evaluation: a clear message naming the file, and nothing
half-written in RUN_DIR. (The reader alone is covered in tests/unit/test_data.py.)"""
from __future__ import annotations

import os
import re
import shutil

import cv2
import numpy as np
import pytest

from hgad_edge import artifact, data
from hgad_edge.cli.commands import main as cli_main
from hgad_edge.evaluation.evaluator import evaluate
from hgad_edge.train.loop import CHECKPOINT, train

from .conftest import TINY_CLI, tiny_configs


@pytest.fixture
def root(tiny_root, tmp_path) -> str:
    dst = str(tmp_path / "data")
    shutil.copytree(tiny_root, dst)
    return dst


def _a_good_image(root: str) -> str:
    return data.train_samples(root, ["grass"])[0].path


def _write_bad(path: str, kind: str, root: str) -> None:
    src = _a_good_image(root)
    if kind == "not an image":
        with open(path, "w") as f:
            f.write("this is a text file\n")
    elif kind == "zero bytes":
        open(path, "wb").close()
    elif kind == "truncated png":
        with open(src, "rb") as f:
            blob = f.read()
        with open(path, "wb") as f:
            f.write(blob[: len(blob) * 2 // 3])
    elif kind == "truncated jpeg":  # OpenCV alone would decode this silently, grey-filled
        ok, buf = cv2.imencode(".jpg", data.read_image(src))
        assert ok
        with open(path, "wb") as f:
            f.write(buf.tobytes()[: len(buf) * 2 // 3])
    else:
        raise AssertionError(kind)


def _place_bad_train_image(root: str, kind: str, split: str) -> str:
    """A bad file in grass/train/good whose name puts it in the fit or calibration split."""
    _, tcfg = tiny_configs(root)
    ext = ".jpg" if "jpeg" in kind else ".png"
    folder = os.path.join(root, "grass", "train", "good")
    for i in range(100):
        path = os.path.join(folder, f"{i:03d}_bad{ext}")
        _write_bad(path, kind, root)
        fit, calib = data.split_calibration(data.train_samples(root, ["grass", "retina"]), tcfg.calib_fraction,
                                            tcfg.seed)
        if path in [s.path for s in (fit if split == "fit" else calib)]:
            return path
        os.remove(path)
    raise AssertionError("no file name lands in the wanted split")


def _leftovers(run_dir: str) -> list:
    return sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("kind", ["not an image", "zero bytes", "truncated png", "truncated jpeg"])
def test_bad_training_image_is_named_and_nothing_is_written(root, tmp_path, kind):
    bad = _place_bad_train_image(root, kind, "fit")
    out = str(tmp_path / "run")
    mcfg, tcfg = tiny_configs(root)
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        train(root, out, mcfg, tcfg, progress=False)
    assert _leftovers(out) == []


def test_cli_train_on_a_corrupt_image_exits_2_naming_it(root, tmp_path, capsys):
    bad = _place_bad_train_image(root, "not an image", "fit")
    out = str(tmp_path / "run")
    assert cli_main(["train", "--data", root, "--out", out, "--epochs", "1", *TINY_CLI]) == 2
    err = capsys.readouterr().err
    assert "error" in err and bad in err
    assert _leftovers(out) == []


def test_empty_class_is_named_before_anything_is_written(root, tmp_path):
    good = os.path.join(root, "retina", "train", "good")
    for name in os.listdir(good):
        os.remove(os.path.join(good, name))
    with open(os.path.join(good, "notes.txt"), "w") as f:
        f.write("no images here")
    out = str(tmp_path / "run")
    mcfg, tcfg = tiny_configs(root)
    with pytest.raises(ValueError, match=re.escape(f"class 'retina' has no training images in {good!r}")):
        train(root, out, mcfg, tcfg, progress=False)
    assert _leftovers(out) == []


@pytest.mark.parametrize("problem", ["corrupt calibration image", "one-image class"])
def test_problems_found_only_at_calibration_are_found_before_training(root, tmp_path, problem):
    if problem == "corrupt calibration image":
        named = _place_bad_train_image(root, "not an image", "calib")
    else:
        good = os.path.join(root, "retina", "train", "good")
        for name in sorted(os.listdir(good))[1:]:
            os.remove(os.path.join(good, name))
        named = "retina"
    out = str(tmp_path / "run")
    mcfg, tcfg = tiny_configs(root, epochs=1)
    with pytest.raises(ValueError, match=re.escape(named)):
        train(root, out, mcfg, tcfg, progress=False)
    assert not os.path.exists(os.path.join(out, artifact.META))  # holds today
    assert _leftovers(out) == [], "an epoch was trained (and checkpointed) on a dataset that cannot finish"


# ----------------------------------------------------------------------------- evaluation


def _first_anomalous(root: str, cls: str = "grass") -> data.Sample:
    return [s for s in data.test_samples(root, [cls]) if s.is_anomaly][0]


def test_mask_of_another_size_is_named_in_evaluation(root, tiny_run, tmp_path, capsys):
    s = _first_anomalous(root)
    cv2.imwrite(s.mask_path, np.full((32, 48), 255, np.uint8))  # the images are 64×64
    with pytest.raises(ValueError) as e:
        evaluate(tiny_run, root, progress=False)
    msg = str(e.value)
    assert s.mask_path in msg and "48x32" in msg and "64x64" in msg
    out_json = str(tmp_path / "m.json")
    assert cli_main(["eval", tiny_run, "--data", root, "--json", out_json, "--quiet"]) == 2
    assert s.mask_path in capsys.readouterr().err
    assert not os.path.exists(out_json)


def test_defect_folder_without_masks_is_named_in_evaluation(root, tiny_run):
    s = _first_anomalous(root)
    shutil.rmtree(os.path.dirname(s.mask_path))
    with pytest.raises(ValueError, match=re.escape(s.mask_path) + ".* does not exist"):
        evaluate(tiny_run, root, progress=False)


def test_corrupt_test_image_and_corrupt_mask_are_named_in_evaluation(root, tiny_run):
    s = _first_anomalous(root, "retina")
    with open(s.mask_path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=re.escape(repr(s.mask_path))):
        evaluate(tiny_run, root, progress=False)
    _write_bad(s.path, "truncated png", root)
    with pytest.raises(ValueError, match=re.escape(repr(s.path))):
        evaluate(tiny_run, root, progress=False)


def test_class_without_test_images_is_named_in_evaluation(root, tiny_run):
    test_dir = os.path.join(root, "retina", "test")
    shutil.rmtree(test_dir)
    with pytest.raises(ValueError, match=re.escape(f"class 'retina' has no test images in {test_dir!r}")):
        evaluate(tiny_run, root, progress=False)
