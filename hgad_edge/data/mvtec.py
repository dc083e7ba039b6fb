"""Reader for datasets in the MVTec AD folder layout.

::

    <root>/<class>/train/good/*.png                 normal training images
    <root>/<class>/test/good/*.png                  normal test images
    <root>/<class>/test/<defect>/*.png              anomalous test images, one folder per defect type
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png   their binary masks

Any number of classes: a class is a sub-folder of ``root`` that has ``train/good``. Every list
is sorted, so the same folder always gives the same samples in the same order. Images are read
by ``hgad_edge.data.images`` as BGR ``uint8`` (H, W, 3), the layout the rest of the data path expects.
"""
from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from hgad_edge.data.images import IMAGE_EXTENSIONS, images_in

log = logging.getLogger(__name__)

GOOD = "good"
MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class Sample:
    """One image of the dataset.

    Attributes:
        path: image file.
        class_name: product class (the class folder's name).
        class_index: position of ``class_name`` in the class list the samples were built for.
        defect: ``"good"`` or the defect type (the test sub-folder's name).
        mask_path: ground-truth mask of an anomalous image (``None`` for a good one). It is the
            path where the mask should be even when that file is missing; :func:`read_mask`
            then says so.
        is_anomaly: ``defect != "good"``.
    """

    path: str
    class_name: str
    class_index: int
    defect: str
    mask_path: Optional[str]
    is_anomaly: bool


def list_classes(root: str) -> List[str]:
    """Classes of an MVTec-layout dataset: the sub-folders of ``root`` that have ``train/good``.

    Args:
        root: dataset root folder.

    Returns:
        The class names, sorted.

    Raises:
        ValueError: ``root`` is not a folder or holds no class.
    """
    if not os.path.isdir(root):
        raise ValueError(f"dataset root {root!r} is not a folder")
    names = sorted(n for n in os.listdir(root)
                   if not n.startswith(".") and os.path.isdir(os.path.join(root, n, "train", GOOD)))
    if not names:
        raise ValueError(f"no class folders under {root!r}: expected <root>/<class>/train/good/ "
                         f"(MVTec AD layout)")
    return names


def resolve_classes(root: str, classes: Optional[Union[str, Sequence[str]]] = None) -> Tuple[str, ...]:
    """The classes to use: all of them (``None``), or a selection checked against ``root``.

    Args:
        root: dataset root folder.
        classes: ``None`` or empty for every class; a comma-separated string ``"a,b,c"``; or a
            sequence of names. The given order is kept (it becomes the class index).

    Returns:
        The class names.

    Raises:
        ValueError: a name is unknown (the message lists the available classes) or repeated.
    """
    available = list_classes(root)
    if classes is None:
        return tuple(available)
    if isinstance(classes, str):
        names = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        names = [str(c).strip() for c in classes]
    if not names:
        return tuple(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"unknown class(es) {unknown} in {root!r}; available: {', '.join(available)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"class(es) {repeated} given more than once")
    return tuple(names)


def _class_names(root: str, class_names: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    if isinstance(class_names, str) or class_names:
        return resolve_classes(root, class_names)
    raise ValueError(f"no classes given; available in {root!r}: {', '.join(list_classes(root))}")


def train_samples(root: str, class_names: Union[str, Sequence[str]]) -> List[Sample]:
    """Normal training images (``<class>/train/good``) of the given classes.

    Args:
        root: dataset root folder.
        class_names: the classes, in class-index order (a list or ``"a,b,c"``).

    Returns:
        Samples grouped by class in the given order, files sorted by name.

    Raises:
        ValueError: an unknown class, or a class whose ``train/good`` holds no image.
    """
    names = _class_names(root, class_names)
    samples: List[Sample] = []
    for index, name in enumerate(names):
        folder = os.path.join(root, name, "train", GOOD)
        paths = images_in(folder)
        if not paths:
            raise ValueError(f"class {name!r} has no training images in {folder!r} "
                             f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
        samples += [Sample(p, name, index, GOOD, None, False) for p in paths]
    log.debug("%d training images in %d classes under %s", len(samples), len(names), root)
    return samples


def _mask_path(root: str, class_name: str, defect: str, image_path: str) -> str:
    """The ground-truth mask of an anomalous image: ``<stem>_mask.png`` (other extensions or a
    bare ``<stem>.png`` are accepted when that is what exists)."""
    folder = os.path.join(root, class_name, "ground_truth", defect)
    stem = os.path.splitext(os.path.basename(image_path))[0]
    expected = os.path.join(folder, stem + MASK_SUFFIX + ".png")
    if os.path.isfile(expected):
        return expected
    for base in (stem + MASK_SUFFIX, stem):
        for ext in IMAGE_EXTENSIONS:
            for e in (ext, ext.upper()):
                candidate = os.path.join(folder, base + e)
                if os.path.isfile(candidate):
                    return candidate
    return expected


def test_samples(root: str, class_names: Union[str, Sequence[str]], require_masks: bool = False) -> List[Sample]:
    """Test images (``<class>/test/<good|defect>``) of the given classes, with their masks.

    Args:
        root: dataset root folder.
        class_names: the classes, in class-index order (a list or ``"a,b,c"``).
        require_masks: raise at once when an anomalous image has no mask file (otherwise
            :func:`read_mask` raises when that mask is read).

    Returns:
        Samples grouped by class in the given order, then by defect folder and file name.

    Raises:
        ValueError: an unknown class, a class with no test image, or (``require_masks``)
            missing mask files, each named.
    """
    names = _class_names(root, class_names)
    samples: List[Sample] = []
    for index, name in enumerate(names):
        test_dir = os.path.join(root, name, "test")
        defects = sorted(d for d in os.listdir(test_dir) if os.path.isdir(os.path.join(test_dir, d))
                         and not d.startswith(".")) if os.path.isdir(test_dir) else []
        found = 0
        for defect in defects:
            for p in images_in(os.path.join(test_dir, defect)):
                anomalous = defect != GOOD
                mask = _mask_path(root, name, defect, p) if anomalous else None
                samples.append(Sample(p, name, index, defect, mask, anomalous))
                found += 1
        if not found:
            raise ValueError(f"class {name!r} has no test images in {test_dir!r}: expected "
                             f"{test_dir}/<good|defect>/*.png")
    if require_masks:
        missing = [s.mask_path for s in samples if s.is_anomaly and not os.path.isfile(s.mask_path or "")]
        if missing:
            raise ValueError(f"{len(missing)} anomalous test image(s) have no mask file, e.g. {missing[:3]}")
    return samples


def split_calibration(samples: Sequence[Sample], fraction: float, seed: int = 0) -> Tuple[List[Sample], List[Sample]]:
    """Hold out a fraction of each class's normal images for calibration.

    The choice is random but deterministic for ``(seed, class name, file list)``, so it does
    not depend on which other classes are present. Every class with at least two images keeps
    at least one for training and gives at least one to calibration (when ``fraction > 0``).

    Args:
        samples: training samples (any number of classes).
        fraction: share of each class to hold out, in [0, 1).
        seed: random seed.

    Returns:
        ``(train, calib)``, each in the original order.

    Raises:
        ValueError: ``fraction`` outside [0, 1).
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"calibration fraction must be in [0, 1), got {fraction}")
    by_class: dict = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.class_name, []).append(i)
    held = set()
    for name, idx in by_class.items():
        n = len(idx)
        k = int(round(fraction * n))
        if fraction > 0 and n >= 2:
            k = min(max(k, 1), n - 1)
        else:
            k = min(k, max(n - 1, 0))
        if k == 0:
            if fraction > 0:
                log.warning("class %r has %d training image(s): none held out for calibration", name, n)
            continue
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])
        held.update(idx[j] for j in rng.permutation(n)[:k])
    train = [s for i, s in enumerate(samples) if i not in held]
    calib = [s for i, s in enumerate(samples) if i in held]
    return train, calib


test_samples.__test__ = False  # not a pytest test, even when imported into a test module
