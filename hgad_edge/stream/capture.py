"""Frame sources for the stream: opening them, a capture thread, bounded frame hand-over.

A *capture* is anything with OpenCV's ``VideoCapture`` surface: ``isOpened()``, ``read() ->
(ok, frame)``, ``get(prop)`` and ``release()``. Sources are classified as *live* (camera,
URL, GStreamer pipeline: a failed read means the source was lost → reconnect) or *finite*
(video file, image folder: a failed read means the end).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple, Union

import numpy as np

from hgad_edge.data.images import IMAGE_EXTENSIONS, images_in, read_image

log = logging.getLogger(__name__)

Source = Union[int, str]
CaptureFactory = Callable[[Source], Any]
URL_TIMEOUT_MS = 10000  # FFmpeg open/read timeout of URL sources
END = object()  # put by the capture thread after the last frame


class SourceError(RuntimeError):
    """The source cannot be opened (or never delivered a frame)."""


def source_kind(source: Source) -> str:
    """'camera', 'pipeline' (GStreamer, contains '!'), 'url', 'folder' or 'file'."""
    if isinstance(source, int):
        return "camera"
    if "!" in source:
        return "pipeline"
    if "://" in source:
        return "url"
    if os.path.isdir(source):
        return "folder"
    return "file"


def is_live(source: Source) -> bool:
    return source_kind(source) in ("camera", "pipeline", "url")


class FolderCapture:
    """The images of a folder in sorted name order, as a capture. An unreadable image reads as
    ``(True, None)`` (a bad frame the stream counts and skips)."""

    def __init__(self, folder: str):
        self.paths: List[str] = images_in(folder)
        self._next = 0

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return bool(self.paths)

    def read(self) -> Tuple[bool, Optional[np.ndarray]]:
        if self._next >= len(self.paths):
            return False, None
        path = self.paths[self._next]
        self._next += 1
        try:
            return True, read_image(path)  # the reader of training and evaluation: same pixels
        except ValueError as e:
            log.warning("%s; skipped", e)
            return True, None

    def get(self, prop: int) -> float:
        import cv2

        return float(len(self.paths)) if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0

    def release(self) -> None:
        self._next = len(self.paths)


def _has_gstreamer() -> bool:
    import cv2

    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def open_capture(source: Source) -> Any:
    """Open ``source`` with the matching OpenCV backend (not checked for success here)."""
    import cv2

    kind = source_kind(source)
    if kind == "folder":
        return FolderCapture(str(source))
    if kind == "pipeline":
        return cv2.VideoCapture(str(source), cv2.CAP_GSTREAMER)
    if kind == "url":  # bounded waits, so a dead stream reads as lost (→ reconnect) instead of hanging
        return cv2.VideoCapture(str(source), cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, URL_TIMEOUT_MS,
                                                              cv2.CAP_PROP_READ_TIMEOUT_MSEC, URL_TIMEOUT_MS])
    cap = cv2.VideoCapture(source)
    if kind == "camera":
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver's queue short where supported
    return cap


def open_checked(source: Source, factory: Optional[CaptureFactory] = None) -> Any:
    """Open ``source`` (through ``factory`` when given) or raise a ``SourceError`` saying why."""
    kind = source_kind(source)
    if factory is None:
        if kind == "file" and not os.path.exists(str(source)):
            raise SourceError(f"source {source!r}: no such file (expected a video file, an image folder, "
                              "a camera index via --camera, an rtsp:// or http:// URL, or a GStreamer pipeline)")
        if kind == "folder" and not FolderCapture(str(source)).isOpened():
            raise SourceError(f"source {source!r}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        factory = open_capture
    cap = factory(source)
    if cap is None or not cap.isOpened():
        if cap is not None:
            cap.release()
        hint = ""
        if kind == "pipeline" and factory is open_capture and not _has_gstreamer():
            hint = (" — this OpenCV build has no GStreamer support (see cv2.getBuildInformation()); "
                    "on a Jetson use the system OpenCV that JetPack ships")
        elif kind == "camera":
            hint = " — is the camera connected and not used by another process?"
        raise SourceError(f"cannot open {kind} source {source!r}{hint}")
    return cap


class FrameBuffer:
    """Bounded hand-over from the capture thread to the inference loop.

    ``drop=True``: the newest ``capacity`` frames are kept and older ones are dropped (counted);
    ``drop=False``: ``put`` waits for room, so no frame is lost (files and folders in order).
    ``wake``: an event set on every ``put`` and ``close``, so one consumer can wait on many
    buffers at once (the multi-source loop).
    """

    def __init__(self, capacity: int, drop: bool, wake: Optional[threading.Event] = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity, self.drop, self.wake = capacity, drop, wake
        self._items: Deque[Any] = deque()
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: Any, halt: threading.Event) -> bool:
        """Add an item; False when ``halt`` was set while waiting for room."""
        with self._cond:
            if self.drop:
                while len(self._items) >= self.capacity:
                    self._items.popleft()
                    self.dropped += 1
            else:
                while len(self._items) >= self.capacity:
                    if halt.is_set():
                        return False
                    self._cond.wait(0.05)
            self._items.append(item)
            self._cond.notify_all()
        if self.wake is not None:
            self.wake.set()
        return True

    def close(self) -> None:
        """Mark the end: after the buffered items ``get`` returns ``END``."""
        with self._cond:
            self._items.append(END)
            self._cond.notify_all()
        if self.wake is not None:
            self.wake.set()

    def get(self, timeout: float) -> Any:
        """The oldest item, ``END``, or None when nothing arrived within ``timeout`` seconds
        (0: do not wait)."""
        with self._cond:
            if not self._items and timeout > 0:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items[0]
            if item is not END:
                self._items.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return sum(1 for i in self._items if i is not END)


class CaptureThread(threading.Thread):
    """Reads ``cap`` into a ``FrameBuffer``; reconnects live sources with exponential backoff.

    Items are ``(index, frame, capture_time)``; ``index`` counts every frame the source
    delivered (including bad and dropped ones). ``pace_fps`` > 0 releases frames at that rate
    (``--realtime`` on a file). After the thread ends, ``lost`` says whether a live source was
    given up on after ``reconnect_attempts`` (< 0: forever).
    """

    def __init__(self, cap: Any, source: Source, buffer: FrameBuffer, halt: threading.Event,
                 factory: CaptureFactory, live: bool, pace_fps: float = 0.0, reconnect_attempts: int = 10,
                 reconnect_delay: float = 0.5, reconnect_max_delay: float = 10.0, name: str = "hgad-capture",
                 label: Optional[str] = None):
        super().__init__(name=name, daemon=True)
        self.cap, self.source, self.buffer, self.halt = cap, source, buffer, halt
        self.label = label or repr(source)  # how logs name the source (a URL without its password)
        self.factory, self.live, self.pace_fps = factory, live, pace_fps
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay, self.reconnect_max_delay = reconnect_delay, reconnect_max_delay
        self.frames_read = 0
        self.bad_frames = 0
        self.reconnects = 0
        self.lost = False
        self.connected = True  # False while reconnecting
        self.error: Optional[BaseException] = None
        self._attempt = 0   # failed reconnect attempts since the last good read
        self._delay = reconnect_delay

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # reported by the inference loop, which re-raises it
            self.error = e
        finally:
            self._release()
            self.buffer.close()

    def _release(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def _read(self) -> Tuple[bool, Optional[np.ndarray]]:
        try:
            return self.cap.read()
        except Exception as e:  # a driver or decoder error is a failed read, not a crash
            log.warning("reading source %s failed: %s", self.label, e)
            return False, None

    def _loop(self) -> None:
        t0 = time.perf_counter()
        while not self.halt.is_set():
            ok, frame = self._read()
            if not ok:
                if not self.live:
                    log.info("end of source %s after %d frames", self.label, self.frames_read)
                    return
                if not self._reconnect():
                    return
                continue
            index = self.frames_read
            self.frames_read += 1
            self._attempt, self._delay = 0, self.reconnect_delay
            if frame is None or not isinstance(frame, np.ndarray) or frame.size == 0:
                self.bad_frames += 1
                log.debug("bad frame %d from %s skipped", index, self.label)
                continue
            if self.pace_fps > 0:
                due = t0 + index / self.pace_fps
                if self.halt.wait(max(0.0, due - time.perf_counter())):
                    return
            if not self.buffer.put((index, frame, time.time()), self.halt):
                return

    def _reconnect(self) -> bool:
        """Release, wait, reopen until a capture opens; False when giving up or halted.

        Attempts and the backoff delay carry over until a frame is read, so a source that
        opens but never delivers still runs out of attempts."""
        self._release()
        self.connected = False
        while self.reconnect_attempts < 0 or self._attempt < self.reconnect_attempts:
            self._attempt += 1
            attempt, delay = self._attempt, self._delay
            self._delay = min(delay * 2.0, self.reconnect_max_delay)
            limit = "unlimited" if self.reconnect_attempts < 0 else str(self.reconnect_attempts)
            log.warning("source %s lost; reconnecting in %.1f s (attempt %d/%s)", self.label, delay, attempt, limit)
            if self.halt.wait(delay):
                return False
            try:
                cap = self.factory(self.source)
            except Exception as e:  # an opener error is one more failed attempt
                log.warning("reopening %s failed: %s", self.label, e)
                cap = None
            if cap is not None and cap.isOpened():
                self.cap = cap
                self.reconnects += 1
                self.connected = True
                log.warning("source %s reconnected after %d attempt(s)", self.label, attempt)
                return True
            if cap is not None:
                cap.release()
        log.error("source %s lost; giving up after %d reconnect attempt(s)", self.label, self._attempt)
        self.lost = True
        return False
