"""The MVTec-layout reader, on the demo dataset and on hand-made broken copies of it."""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import pytest

from hgad_edge import data
from hgad_edge.data.demo import DEFECT_TYPES

CLASSES = ["brick", "coffee", "tissue"]


def _mini(tmp_path, demo_root: str, name: str = "widget", n_train: int = 3) -> str:
    """A one-class dataset made from real demo images: train/good + test/good + test/scratch."""
    root = tmp_path / "mini"
    src = os.path.join(demo_root, "brick")
    os.makedirs(root / name / "train" / "good")
    for i, f in enumerate(sorted(os.listdir(os.path.join(src, "train", "good")))[:n_train]):
        shutil.copy(os.path.join(src, "train", "good", f), root / name / "train" / "good" / f"{i:03d}.png")
    shutil.copytree(os.path.join(src, "test", "good"), root / name / "test" / "good")
    shutil.copytree(os.path.join(src, "test", "scratch"), root / name / "test" / "scratch")
    shutil.copytree(os.path.join(src, "ground_truth", "scratch"), root / name / "ground_truth" / "scratch")
    return str(root)


def test_list_classes(demo_root):
    assert data.list_classes(demo_root) == CLASSES


def test_list_classes_errors(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        data.list_classes(str(tmp_path / "missing"))
    os.makedirs(tmp_path / "cls" / "test")  # a class folder without train/good is not a class
    with pytest.raises(ValueError, match="train/good"):
        data.list_classes(str(tmp_path))


def test_resolve_classes(demo_root):
    assert data.resolve_classes(demo_root, None) == tuple(CLASSES)
    assert data.resolve_classes(demo_root, "") == tuple(CLASSES)
    assert data.resolve_classes(demo_root, "tissue, brick") == ("tissue", "brick")
    assert data.resolve_classes(demo_root, ["coffee"]) == ("coffee",)


def test_resolve_unknown_class_lists_available(demo_root):
    with pytest.raises(ValueError) as e:
        data.resolve_classes(demo_root, "brick,carpet")
    msg = str(e.value)
    assert "carpet" in msg and all(c in msg for c in CLASSES)
    with pytest.raises(ValueError, match="more than once"):
        data.resolve_classes(demo_root, ["brick", "brick"])


def test_train_samples(demo_root):
    samples = data.train_samples(demo_root, ["tissue", "brick"])
    assert len(samples) == 24
    assert [s.class_name for s in samples] == ["tissue"] * 12 + ["brick"] * 12
    assert {s.class_index for s in samples if s.class_name == "tissue"} == {0}
    assert {s.class_index for s in samples if s.class_name == "brick"} == {1}
    assert all(s.defect == "good" and not s.is_anomaly and s.mask_path is None for s in samples)
    paths = [s.path for s in samples[:12]]
    assert paths == sorted(paths)
    assert data.train_samples(demo_root, "tissue,brick") == samples  # deterministic, string form too


def test_test_samples_and_masks(demo_root):
    samples = data.test_samples(demo_root, CLASSES)
    assert len(samples) == 3 * 9
    for c, name in enumerate(CLASSES):
        mine = [s for s in samples if s.class_name == name]
        assert {s.class_index for s in mine} == {c}
        assert sum(not s.is_anomaly for s in mine) == 4
        assert sorted(s.defect for s in mine if s.is_anomaly) == sorted(DEFECT_TYPES)
    for s in samples:
        img = data.read_image(s.path)
        assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
        mask = data.read_mask(s.mask_path, img.shape[:2])
        assert mask.dtype == bool and mask.shape == (128, 128)
        assert mask.any() == s.is_anomaly
        if s.is_anomaly:
            assert s.mask_path.endswith(os.path.join("ground_truth", s.defect, "000_mask.png"))


def test_split_calibration(demo_root):
    samples = data.train_samples(demo_root, CLASSES)
    train, calib = data.split_calibration(samples, 0.2, seed=0)
    assert (train, calib) == data.split_calibration(samples, 0.2, seed=0)
    assert set(train) | set(calib) == set(samples) and not set(train) & set(calib)
    for name in CLASSES:
        assert sum(s.class_name == name for s in calib) == 2  # round(0.2 * 12), per class
    assert calib == [s for s in samples if s in set(calib)]  # original order kept
    assert data.split_calibration(samples, 0.2, seed=1)[1] != calib
    # a class's split does not depend on which other classes are present
    only_brick = data.split_calibration([s for s in samples if s.class_name == "brick"], 0.2, seed=0)[1]
    assert [s.path for s in only_brick] == [s.path for s in calib if s.class_name == "brick"]
    assert data.split_calibration(samples, 0.0, seed=0) == (list(samples), [])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        data.split_calibration(samples, 1.0)


def test_split_calibration_small_classes(demo_root):
    samples = data.train_samples(demo_root, CLASSES)
    two = [s for s in samples if s.class_name == "brick"][:2]
    one = [s for s in samples if s.class_name == "coffee"][:1]
    train, calib = data.split_calibration(two + one, 0.01, seed=0)
    assert len([s for s in calib if s.class_name == "brick"]) == 1  # at least one when possible
    assert [s.class_name for s in train].count("coffee") == 1  # a single image stays in training


def test_read_image_corrupt_names_file(tmp_path, demo_root):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        data.read_image(str(bad))
    with pytest.raises(ValueError, match="nothere.png"):
        data.read_image(str(tmp_path / "nothere.png"))
    # a truncated copy of a real image
    real = data.train_samples(demo_root, ["brick"])[0].path
    cut = tmp_path / "cut.png"
    with open(real, "rb") as f:
        cut.write_bytes(f.read()[:200])
    with pytest.raises(ValueError, match="cut.png"):
        data.read_image(str(cut))


def test_read_image_channel_layouts(tmp_path, demo_root):
    img = data.read_image(data.train_samples(demo_root, ["coffee"])[0].path)
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(tmp_path / "w.tif"), img.astype(np.uint16) * 257)
    g = data.read_image(str(tmp_path / "g.png"))
    assert g.shape == img.shape and np.array_equal(g[..., 0], gray) and np.array_equal(g[..., 2], gray)
    assert np.array_equal(data.read_image(str(tmp_path / "a.png")), img)
    assert np.array_equal(data.read_image(str(tmp_path / "w.tif")), img)


def test_mask_size_mismatch_names_both_sizes(tmp_path):
    path = tmp_path / "m_mask.png"
    cv2.imwrite(str(path), np.full((64, 48), 255, np.uint8))
    with pytest.raises(ValueError) as e:
        data.read_mask(str(path), (128, 128))
    assert "48x64" in str(e.value) and "128x128" in str(e.value) and "m_mask.png" in str(e.value)
    assert data.read_mask(str(path), (64, 48)).all()
    assert not data.read_mask(None, (5, 7)).any()


def test_defect_folder_without_masks(tmp_path, demo_root):
    root = _mini(tmp_path, demo_root)
    shutil.rmtree(os.path.join(root, "widget", "ground_truth"))
    samples = data.test_samples(root, ["widget"])  # listing works (image-level use needs no mask)
    bad = [s for s in samples if s.is_anomaly]
    assert bad and bad[0].mask_path.endswith(os.path.join("ground_truth", "scratch", "000_mask.png"))
    with pytest.raises(ValueError, match="000_mask.png"):
        data.read_mask(bad[0].mask_path, (128, 128))
    with pytest.raises(ValueError, match="no mask file"):
        data.test_samples(root, ["widget"], require_masks=True)


def test_mask_with_other_name_is_found(tmp_path, demo_root):
    root = _mini(tmp_path, demo_root)
    gt = os.path.join(root, "widget", "ground_truth", "scratch")
    os.rename(os.path.join(gt, "000_mask.png"), os.path.join(gt, "000.png"))
    s = [s for s in data.test_samples(root, ["widget"]) if s.is_anomaly][0]
    assert s.mask_path == os.path.join(gt, "000.png")
    assert data.read_mask(s.mask_path, (128, 128)).any()


def test_empty_class_names_folder(tmp_path, demo_root):
    root = _mini(tmp_path, demo_root)
    os.makedirs(os.path.join(root, "empty", "train", "good"))
    open(os.path.join(root, "empty", "train", "good", "notes.txt"), "w").close()
    assert data.list_classes(root) == ["empty", "widget"]
    with pytest.raises(ValueError, match=os.path.join("empty", "train", "good")):
        data.train_samples(root, ["widget", "empty"])
    with pytest.raises(ValueError, match=os.path.join("empty", "test")):
        data.test_samples(root, ["empty"])


def test_extensions_case_insensitive_and_others_ignored(tmp_path, demo_root):
    root = _mini(tmp_path, demo_root, n_train=1)
    good = os.path.join(root, "widget", "train", "good")
    img = data.read_image(os.path.join(good, "000.png"))
    for name in ("b.JPG", "c.jpeg", "d.BMP", "e.tif", "f.TIFF"):
        cv2.imwrite(os.path.join(good, name.lower()), img)
        os.rename(os.path.join(good, name.lower()), os.path.join(good, name))
    for name in ("readme.txt", ".hidden.png", "Thumbs.db"):
        open(os.path.join(good, name), "w").close()
    names = [os.path.basename(s.path) for s in data.train_samples(root, ["widget"])]
    assert names == ["000.png", "b.JPG", "c.jpeg", "d.BMP", "e.tif", "f.TIFF"]
