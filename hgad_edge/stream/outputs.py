"""What the stream loop writes and shows: latency quantiles, JSONL log, annotated videos, windows."""
from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from typing import Any, Dict, Optional, Tuple

import numpy as np

from hgad_edge.data.images import IMAGE_EXTENSIONS
from hgad_edge.fileio import dumps

log = logging.getLogger("hgad_edge.stream.loop")  # the stream's own logger: these warnings are the stream's


class LatencyStats:
    """Quantiles of latencies in constant memory: log-spaced bins 1 % apart, 0.01 ms to ~70 min."""

    LO, RATIO, BINS = 0.01, 1.01, 2000

    def __init__(self):
        self.counts = np.zeros(self.BINS, np.int64)
        self.n = 0

    def add(self, ms: float) -> None:
        i = int(math.log(max(ms, self.LO) / self.LO) / math.log(self.RATIO))
        self.counts[min(i, self.BINS - 1)] += 1
        self.n += 1

    def quantile(self, q: float) -> float:
        if self.n == 0:
            return float("nan")
        i = int(np.searchsorted(np.cumsum(self.counts), q * self.n))
        return self.LO * self.RATIO ** (min(i, self.BINS - 1) + 0.5)


class JsonlLog:
    """The JSONL event log: appended, one JSON object per line, flushed after every line."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self._f = open(path, "a", encoding="utf-8", buffering=1) if path else None

    def record(self, rec: Dict[str, Any]) -> None:
        if self._f:
            self._f.write(dumps(rec) + "\n")  # strict JSON: a NaN score is null, never a bare NaN
            self._f.flush()

    def close(self) -> None:
        if self._f:
            self._f.close()
            self._f = None


class VideoOut:
    """An annotated mp4v video, opened on the first frame (its size sets the video's)."""

    def __init__(self, path: str, fps: float):
        self.path, self.fps, self.writer, self.size = path, fps, None, None

    @staticmethod
    def check(path: str, fps: float) -> None:
        """Refuse (``ValueError``) at start what the writer would only refuse on the first frame:
        an image or extension-less name, a folder it cannot write into, or a container OpenCV
        cannot write mp4v into at ``fps`` (probed in a temporary folder, not next to ``path``)."""
        import cv2

        ext = os.path.splitext(path)[1].lower()
        if ext in IMAGE_EXTENSIONS or not ext:
            raise ValueError(f"--save {path}: needs a video file name (.mp4, .avi, .mkv, .mov), got "
                             f"{ext or 'no extension'}")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"--save {path}: cannot write into {folder}")
        with tempfile.TemporaryDirectory(prefix="hgad-save-probe-") as tmp:
            writer = cv2.VideoWriter(os.path.join(tmp, "probe" + ext), cv2.VideoWriter_fourcc(*"mp4v"), fps, (16, 16))
            opened = writer.isOpened()
            writer.release()
        if not opened:
            raise ValueError(f"--save {path}: OpenCV cannot write an mp4v video as {ext} at {fps:g} FPS "
                             "(use .mp4, .avi, .mkv or .mov)")

    def write(self, frame: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            self.size = (frame.shape[1], frame.shape[0])
            self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
            if not self.writer.isOpened():
                raise OSError(f"cannot write video {self.path!r} (mp4v codec, {self.size[0]}x{self.size[1]})")
        if (frame.shape[1], frame.shape[0]) != self.size:  # the source changed resolution
            frame = cv2.resize(frame, self.size)
        self.writer.write(frame)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


class Window:
    """An OpenCV window (None from ``Window.open`` when there is no display)."""

    def __init__(self, name: str):
        self.name = name

    @classmethod
    def open(cls, name: str) -> Optional["Window"]:
        opened = _open_window(name)
        return cls(opened) if opened else None

    def show(self, frame: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.name, frame)

    @staticmethod
    def keep_open() -> bool:
        """Run the GUI event loop once; False when the user pressed q or Esc."""
        import cv2

        return not (cv2.waitKey(1) & 0xFF in (ord("q"), 27))

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.name)


def _open_window(name: str) -> Optional[str]:
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        log.warning("no display ($DISPLAY unset): running headless (pass --headless to silence this)")
        return None
    try:
        cv2.namedWindow(name, cv2.WINDOW_NORMAL)
    except cv2.error as e:
        log.warning("this OpenCV cannot open windows (%s): running headless", str(e).strip().splitlines()[-1])
        return None
    return name


def check_roi(roi, width: int, height: int) -> None:
    """A ``ValueError`` unless the whole ROI lies inside a ``width`` x ``height`` frame (a
    clipped crop would be scored as if it were the ROI)."""
    x, y, w, h = roi
    if x + w > width or y + h > height:
        raise ValueError(f"roi {tuple(roi)} lies outside the {width}x{height} frame (needs x + w <= {width} "
                         f"and y + h <= {height})")


def _crop(frame: np.ndarray, roi) -> Tuple[np.ndarray, Tuple[int, int, int, int]]:
    h, w = frame.shape[:2]
    if roi is None:
        return frame, (0, 0, w, h)
    check_roi(roi, w, h)
    x, y, rw, rh = roi
    return frame[y:y + rh, x:x + rw], (x, y, rw, rh)


def annotate(frame: np.ndarray, result, box, fps: float, latency_ms: float, alarm: bool = False) -> np.ndarray:
    """The frame with heatmap and mask contours in ``box`` and a banner: verdict, class, FPS, latency."""
    import cv2

    from hgad_edge.overlay import draw_overlay

    x, y, w, h = box
    out = frame.copy() if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    out[y:y + h, x:x + w] = draw_overlay(out[y:y + h, x:x + w], result, label=False)
    if (w, h) != (out.shape[1], out.shape[0]):
        cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (255, 255, 0), 1)
    lines = [f"{'ANOMALY' if result.is_anomaly else 'ok'} {result.score:.2f} | {result.class_name or 'unknown class'} "
             f"({result.class_confidence:.2f})", f"{fps:.1f} FPS | {latency_ms:.0f} ms" + (" | ALARM" if alarm else "")]
    scale = max(0.35, out.shape[1] / 900)
    (_, th), _ = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    width = max(cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] for t in lines)
    colour = (0, 0, 200) if result.is_anomaly or alarm else (0, 120, 0)
    cv2.rectangle(out, (0, 0), (width + 8, len(lines) * (th + 8) + 4), colour, -1)
    for i, text in enumerate(lines):
        cv2.putText(out, text, (4, (i + 1) * (th + 8)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out
