"""Image files: the one list of image extensions, and the one reader of images and masks.

Every path that reads an image from disk (training, calibration, evaluation, predict, export
calibration, the stream's folder source) goes through ``read_image``, and it decodes as
``cv2.imread(path)`` does — EXIF orientation applied — so a phone photo scores the same whether
the SDK user read it with OpenCV or the CLI did.
"""
from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np

# Every image extension the package reads (dataset folders, predict, calibration, stream folders).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _imread(path: str):
    """Bit depth and gray kept, alpha dropped, and — unlike ``IMREAD_UNCHANGED`` — the EXIF
    orientation applied, as ``cv2.imread``'s default (``IMREAD_COLOR``), the SDK user's reader."""
    import cv2

    return cv2.imread(path, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)


def is_image(name: str) -> bool:
    """A file name with an image extension, not hidden."""
    return not os.path.basename(name).startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def images_in(folder: str) -> List[str]:
    """Sorted image files directly inside ``folder`` (empty when it does not exist)."""
    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if is_image(n) and os.path.isfile(os.path.join(folder, n))]


def images_under(folder: str) -> List[str]:
    """Sorted image files anywhere below ``folder``."""
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if is_image(f))


def _truncated_jpeg(path: str) -> bool:
    """True for a JPEG whose scan data has no end-of-image marker.

    OpenCV decodes a truncated JPEG without an error (libjpeg fills the missing rows with grey
    and only prints "Premature end of JPEG file"), so it is checked here: walk the header
    segments to the first start-of-scan, then look for the EOI marker after it. Byte stuffing
    keeps ``FF D9`` out of the scan data; an EXIF thumbnail's own EOI sits inside a header
    segment and is skipped. Non-JPEG files return False.
    """
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        buf = b"\xff\xd8" + f.read()
    i = 2
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            return True  # the marker stream is broken
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0xD9:
            return False
        elif 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            i += 2
        else:
            length = int.from_bytes(buf[i + 2:i + 4], "big")
            if marker == 0xDA:  # start of scan
                return buf.find(b"\xff\xd9", i + 2 + length) == -1
            i += 2 + length
    return True


def read_image(path: str) -> np.ndarray:
    """Read an image as BGR ``uint8`` (H, W, 3).

    Grayscale is expanded to three channels, an alpha channel is dropped, 16-bit images are
    scaled to 8 bits and the EXIF orientation is applied (a JPEG a camera wrote sideways with an
    orientation tag comes out upright, exactly as ``cv2.imread(path)`` gives it).

    Args:
        path: image file.

    Returns:
        The image, ``uint8`` (H, W, 3), BGR.

    Raises:
        ValueError: the file is missing, unreadable or not an image.
    """
    import cv2

    if not os.path.isfile(path):
        raise ValueError(f"image file {path!r} does not exist")
    img = _imread(path)
    if img is None or img.size == 0:
        raise ValueError(f"cannot read image {path!r}: corrupt or not a supported image file")
    if _truncated_jpeg(path):
        raise ValueError(f"image {path!r} is a truncated JPEG (no end-of-image marker): re-copy or remove it")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 1:
        img = cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    elif img.shape[2] != 3:
        raise ValueError(f"image {path!r} has {img.shape[2]} channels; expected 1, 3 or 4")
    return np.ascontiguousarray(img)


def read_mask(path: Optional[str], shape_hw: Tuple[int, int]) -> np.ndarray:
    """Read a ground-truth mask as a boolean (H, W) array (pixel > 127 is anomalous).

    Args:
        path: mask file, or ``None`` for a good sample (all ``False``).
        shape_hw: (height, width) of the image the mask belongs to.

    Returns:
        Boolean mask of shape ``shape_hw``.

    Raises:
        ValueError: the mask file is missing or unreadable, or its size differs from the image's.
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    if path is None:
        return np.zeros((h, w), dtype=bool)
    if not os.path.isfile(path):
        raise ValueError(f"mask file {path!r} does not exist (anomalous test images need "
                         f"<class>/ground_truth/<defect>/<stem>_mask.png)")
    m = _imread(path)  # oriented like its image
    if m is None or m.size == 0 or _truncated_jpeg(path):
        raise ValueError(f"cannot read mask {path!r}: corrupt or not a supported image file")
    if m.ndim == 3:
        m = m[:, :, :3].max(axis=2) if m.shape[2] >= 3 else m[:, :, 0]
    if m.shape != (h, w):
        raise ValueError(f"mask {path!r} is {m.shape[1]}x{m.shape[0]} (WxH) but its image is {w}x{h}")
    if m.dtype == np.uint16:
        m = m >> 8
    return m > 127
