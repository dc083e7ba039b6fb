"""The scikit-image photographs the demo dataset is cut from, and the warp that cuts a view."""
from __future__ import annotations

import functools
from typing import Tuple

import numpy as np


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A scikit-image photograph as BGR uint8 (H, W, 3) (read-only, cached)."""
    import cv2
    import skimage.data

    img = getattr(skimage.data, name)()
    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else np.ascontiguousarray(img[:, :, 2::-1])
    img.setflags(write=False)
    return img


@functools.lru_cache(maxsize=None)
def _scaled_photo(name: str, factor: float) -> np.ndarray:
    import cv2

    src = _photo(name)
    h, w = src.shape[:2]
    out = cv2.resize(src, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    out.setflags(write=False)
    return out


def _warp(src: np.ndarray, size: int, center: Tuple[float, float], angle_deg: float, scale: float) -> np.ndarray:
    """Sample a ``size``² view of ``src`` centred at ``center``, turned by ``angle_deg``, zoomed by 1/scale."""
    import cv2

    a = np.deg2rad(angle_deg)
    c, s = np.cos(a) * scale, np.sin(a) * scale
    half = (size - 1) / 2.0
    # output pixel p -> source pixel: center + scale * R(a) (p - half)
    m = np.array([[c, -s, center[0] - c * half + s * half],
                  [s, c, center[1] - s * half - c * half]], dtype=np.float64)
    return cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT_101)
