"""The demo dataset generator: determinism, layout, exact masks, defect sizes, stress kinds, atomic writes."""
from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest
from skimage.morphology import skeletonize

from hgad_edge import data
from hgad_edge.data import demo
from hgad_edge.data.defects import CRACK_DEPTH, DEFECT_AREA
from hgad_edge.data.demo import (DEFECT_TYPES, MASK_THRESHOLD, MASK_THRESHOLDS, MAX_DEFECT_AREA, MIN_CONTRAST,
                                 MIN_DEFECT_AREA, STRESS_TYPES, make_demo_data, normal_image, synthesize_defect)


def _files(root: str) -> dict:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def _small(path, seed=0, classes=("brick", "grass")):
    return make_demo_data(str(path), classes=classes, n_train=2, n_test_good=1, n_test_defect=5,
                          image_size=64, seed=seed)


def test_same_seed_byte_identical_other_seed_differs(tmp_path):
    _small(tmp_path / "a", seed=3)
    _small(tmp_path / "b", seed=3)
    _small(tmp_path / "c", seed=4)
    a, b, c = _files(str(tmp_path / "a")), _files(str(tmp_path / "b")), _files(str(tmp_path / "c"))
    assert len(a) == 2 * (2 + 1 + 5 + 5) + 1  # images + masks + demo.json
    assert a == b
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a if k.endswith(".png")) >= len(a) - 5


def test_class_streams_are_independent(tmp_path):
    _small(tmp_path / "one", classes=("grass",))
    _small(tmp_path / "two", classes=("brick", "grass"))
    one = _files(str(tmp_path / "one"))
    two = _files(str(tmp_path / "two"))
    assert all(two[k] == v for k, v in one.items() if k.startswith("grass"))


def test_layout_counts_and_channels(demo_root):
    assert data.list_classes(demo_root) == ["brick", "coffee", "tissue"]
    with open(os.path.join(demo_root, demo.INFO_FILE)) as f:
        info = json.load(f)
    assert info["seed"] == 0 and info["image_size"] == 128
    for name in ("brick", "coffee", "tissue"):
        assert len(data.train_samples(demo_root, [name])) == 12
        test = data.test_samples(demo_root, [name], require_masks=True)
        assert sorted({s.defect for s in test}) == sorted(DEFECT_TYPES + ("good",))
    # brick is a grayscale photograph: saved as 3 channels
    raw = cv2.imread(data.train_samples(demo_root, ["brick"])[0].path, cv2.IMREAD_UNCHANGED)
    assert raw.shape == (128, 128, 3) and raw.dtype == np.uint8


def test_normal_images_vary_and_test_differs_from_train(demo_root):
    for name in ("brick", "coffee", "tissue"):
        train = np.stack([data.read_image(s.path) for s in data.train_samples(demo_root, [name])])
        good = [data.read_image(s.path) for s in data.test_samples(demo_root, [name]) if not s.is_anomaly]
        assert np.abs(train[1:].astype(int) - train[:-1]).mean() > 3  # jittered, not one crop repeated
        for g in good:
            assert np.abs(train.astype(int) - g).mean(axis=(1, 2, 3)).min() > 1


def test_every_defect_mask_in_bounds(demo_root, tiny_root):
    for root in (demo_root, tiny_root):
        for s in data.test_samples(root, data.list_classes(root)):
            if s.is_anomaly:
                img = data.read_image(s.path)
                area = data.read_mask(s.mask_path, img.shape[:2]).mean()
                assert MIN_DEFECT_AREA <= area <= MAX_DEFECT_AREA, (s.path, area)


def test_masks_are_exactly_the_changed_pixels_on_disk(demo_root):
    """Regenerate each defective image's normal base: the mask is exactly where it changed."""
    for s in data.test_samples(demo_root, data.list_classes(demo_root)):
        if not s.is_anomaly:
            continue
        i = DEFECT_TYPES.index(s.defect)  # 5 defective images per class: index i has type i
        base = normal_image(s.class_name, 128, demo._rng(0, s.class_name, "test_defect", i))
        img = data.read_image(s.path)
        diff = np.abs(img.astype(int) - base).max(axis=2)
        mask = data.read_mask(s.mask_path, img.shape[:2])
        assert np.array_equal(mask, diff >= MASK_THRESHOLD), s.path
        assert diff[~mask].max(initial=0) < MASK_THRESHOLD
        assert diff[mask].mean() >= MIN_CONTRAST[s.defect], s.path


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_synthesize_defect_exact_and_small(demo_root, kind):
    for k, name in enumerate(("brick", "coffee", "tissue")):
        img = data.read_image(data.train_samples(demo_root, [name])[k].path)
        out, mask = synthesize_defect(img, kind, np.random.default_rng(k), own_source=name)
        diff = np.abs(out.astype(int) - img).max(axis=2)
        assert np.array_equal(mask, diff >= MASK_THRESHOLD)
        assert MIN_DEFECT_AREA <= mask.mean() <= MAX_DEFECT_AREA
        assert diff[mask].mean() >= MIN_CONTRAST[kind]  # plainly visible, not a faint smudge
        again, mask2 = synthesize_defect(img, kind, np.random.default_rng(k), own_source=name)
        assert np.array_equal(out, again) and np.array_equal(mask, mask2)


def test_synthesize_defect_rejects_bad_input():
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="scratch"):
        synthesize_defect(img, "dent", np.random.default_rng(0))
    with pytest.raises(ValueError, match="square"):
        synthesize_defect(np.zeros((64, 32, 3), np.uint8), "stain", np.random.default_rng(0))


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "d"
    _small(out, classes=("grass",))
    before = _files(str(out))
    with pytest.raises(FileExistsError, match="overwrite"):
        _small(out, seed=1, classes=("grass",))
    assert _files(str(out)) == before
    make_demo_data(str(out), classes="brick", n_train=1, n_test_good=1, n_test_defect=0, image_size=64,
                   overwrite=True)
    assert data.list_classes(str(out)) == ["brick"]
    empty = tmp_path / "empty"
    empty.mkdir()
    _small(empty, classes=("grass",))  # an empty folder is fine
    assert sorted(os.listdir(tmp_path)) == ["d", "empty"]  # no temporary folders left behind


def test_failure_leaves_nothing(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "_write_class", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        _small(tmp_path / "d")
    assert os.listdir(tmp_path) == []


def test_bad_arguments():
    with pytest.raises(ValueError) as e:
        make_demo_data("unused", classes="brick,carpet")
    assert "carpet" in str(e.value) and "gravel" in str(e.value)
    with pytest.raises(ValueError, match="n_train"):
        make_demo_data("unused", n_train=0)
    with pytest.raises(ValueError, match="image_size"):
        make_demo_data("unused", image_size=16)


def test_summary(demo_root):
    summary = demo.summarize(demo_root)
    assert summary["n_images"] == 3 * 21
    row = summary["classes"]["tissue"]
    assert row["train"] == 12 and row["test"]["good"] == 4 and row["test"]["hole"] == 1
    a = summary["defect_area_pct"]
    assert 100 * MIN_DEFECT_AREA <= a["min"] <= a["median"] <= a["max"] <= 100 * MAX_DEFECT_AREA
    text = demo.format_summary(summary)
    assert "tissue" in text and "3 classes" in text


def _stress_draw(demo_root, kind, k, name):
    img = data.read_image(data.train_samples(demo_root, [name])[k].path)
    donor = data.read_image(data.train_samples(demo_root, ["coffee" if name != "coffee" else "brick"])[k].path)
    out, mask = synthesize_defect(img, kind, np.random.default_rng(k), own_source=name, donor=donor)
    return img, donor, out, mask


@pytest.mark.parametrize("kind", STRESS_TYPES)
def test_stress_defects_exact_and_in_bounds(demo_root, kind):
    for k, name in enumerate(("brick", "coffee", "tissue")):
        img, donor, out, mask = _stress_draw(demo_root, kind, k, name)
        diff = np.abs(out.astype(int) - img).max(axis=2)
        assert np.array_equal(mask, diff >= MASK_THRESHOLDS[kind]), (kind, name)
        lo, hi = DEFECT_AREA[kind]
        assert lo <= mask.mean() <= hi, (kind, name, mask.mean())
        assert diff[mask].mean() >= MIN_CONTRAST[kind]
        _, _, again, mask2 = _stress_draw(demo_root, kind, k, name)
        assert np.array_equal(out, again) and np.array_equal(mask, mask2)
        if kind == "lookalike":  # a blend of the image and the donor, the donor itself inside the edge
            o, lo_, hi_ = out.astype(int), np.minimum(img, donor).astype(int), np.maximum(img, donor).astype(int)
            assert ((o >= lo_ - 1) & (o <= hi_ + 1)).all()
            assert (np.abs(o - donor).max(axis=2)[mask] <= 1).sum() >= 0.01 * mask.size
        if kind == "large":
            assert mask.mean() >= 0.05


def test_thin_crack_is_thin_long_branching_faint(demo_root):
    for k, name in enumerate(("brick", "coffee", "tissue")):
        img, _, out, mask = _stress_draw(demo_root, "thin_crack", k, name)
        size = img.shape[0]
        drop = img.astype(int) - out
        assert drop.min() >= 0  # only darker
        assert np.array_equal(mask, drop.max(axis=2) >= 1)  # exactly the pixels changed, by any amount
        # a few per cent of the pixel's own value (rounding aside), never a plainly visible line
        assert (drop <= np.ceil(img * CRACK_DEPTH[1] + 0.5)).all()
        assert np.abs(drop[mask]).max(axis=-1).mean() < 0.15 * 255
        # 1-3 px wide: nothing survives an erosion by a 5x5 square (a 4 px line would)
        assert not cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).any()
        ys, xs = np.nonzero(mask)
        assert max(np.ptp(ys), np.ptp(xs)) >= 0.25 * size  # long
        # branching: the one-pixel skeleton has at least three ends
        skel = skeletonize(mask)
        nb = cv2.filter2D(skel.astype(np.uint8), -1, np.ones((3, 3), np.float32), borderType=cv2.BORDER_CONSTANT)
        assert (skel & (nb == 2)).sum() >= 3, name


def test_lookalike_needs_a_donor():
    img = np.full((64, 64, 3), 128, np.uint8)
    with pytest.raises(ValueError, match="donor"):
        synthesize_defect(img, "lookalike", np.random.default_rng(0))
    with pytest.raises(ValueError, match="donor"):
        synthesize_defect(img, "lookalike", np.random.default_rng(0), donor=np.zeros((32, 32, 3), np.uint8))


def test_stress_kinds_leave_the_other_files_unchanged(tmp_path):
    make_demo_data(str(tmp_path / "a"), classes=("brick", "grass"), n_train=2, n_test_good=1, n_test_defect=5,
                   image_size=64, seed=3)
    make_demo_data(str(tmp_path / "b"), classes=("brick", "grass"), n_train=2, n_test_good=1, n_test_defect=5,
                   image_size=64, seed=3, n_test_stress=2)
    a, b = _files(str(tmp_path / "a")), _files(str(tmp_path / "b"))
    assert all(b[k] == v for k, v in a.items() if k != demo.INFO_FILE)
    extra = sorted(k for k in b if k not in a)
    assert extra == sorted(os.path.join(c, sub, kind, f"{j:03d}{suffix}.png")
                           for c, kinds in (("brick", ("large", "lookalike")), ("grass", STRESS_TYPES))
                           for kind in kinds for j in range(2)
                           for sub, suffix in (("test", ""), ("ground_truth", "_mask")))
    info = json.loads(b[demo.INFO_FILE])
    assert info["n_test_stress"] == 2 and info["stress_types"]["brick"] == ["large", "lookalike"]
    donors = info["lookalike_donors"]
    assert len(donors["grass"]) == 2 and "grass" not in donors["grass"] and set(donors["brick"]) <= set(demo.CLASSES)
    assert "n_test_stress" not in json.loads(a[demo.INFO_FILE])  # without stress kinds: the file as before
    # on disk: each stress image's mask is exactly where it differs from its regenerated normal base
    root = str(tmp_path / "b")
    for s in data.test_samples(root, ["brick", "grass"], require_masks=True):
        if s.defect in STRESS_TYPES:
            j = int(os.path.basename(s.path)[:3])
            base = normal_image(s.class_name, 64, demo._rng(3, s.class_name, "test_" + s.defect, j))
            img = data.read_image(s.path)
            diff = np.abs(img.astype(int) - base).max(axis=2)
            assert np.array_equal(data.read_mask(s.mask_path, img.shape[:2]), diff >= MASK_THRESHOLDS[s.defect]), s.path
    with pytest.raises(ValueError, match="n_test_stress"):
        make_demo_data(str(tmp_path / "c"), n_test_stress=-1)
