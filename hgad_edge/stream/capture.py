"""Frame sources for the stream: opening them, a capture thread, bounded frame hand-over.

A *capture* is anything with OpenCV's ``VideoCapture`` surface: ``isOpened()``, ``read() ->
(ok, frame)``, ``get(prop)`` and ``release()``. Sources are classified as *live* (camera,
URL, GStreamer pipeline: a failed read means the source was lost → reconnect) or *finite*
(video file, image folder: a failed read means the end).
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from hgad_edge.data.images import IMAGE_EXTENSIONS, images_in, read_image

log = logging.getLogger(__name__)

Source = Union[int, str]
CaptureFactory = Callable[[Source], Any]
URL_TIMEOUT_MS = 10000  # FFmpeg open/read timeout of URL sources
END = object()  # put by the capture thread after the last frame
MAX_CAMERA_INDEX = 99  # OpenCV reads an index >= 100 as backend * 100 + index (200 = V4L2 camera 0)
# A file or folder read past failed reads (a corrupt stretch): it has ended only after this many
# failed reads in a row, or this many seconds of them, whichever comes first.
READ_FAILURES, READ_FAILURE_S = 100, 10.0
# The first bytes of what OpenCV/FFmpeg open as a video file or image: (name, offset, bytes).
# Anything else (a text file, which FFmpeg's tty demuxer would "play") is refused at start.
SIGNATURES = (
    ("AVI", 8, b"AVI "), ("AVI", 8, b"AVIX"), ("MP4/MOV", 4, b"ftyp"), ("MP4/MOV", 4, b"moov"), ("MP4/MOV", 4, b"mdat"),
    ("MP4/MOV", 4, b"wide"), ("MP4/MOV", 4, b"free"), ("MP4/MOV", 4, b"skip"), ("MKV/WebM", 0, b"\x1a\x45\xdf\xa3"),
    ("MPEG-PS/H.264/H.265", 0, b"\x00\x00\x01"), ("MPEG-PS/H.264/H.265", 0, b"\x00\x00\x00\x01"),
    ("FLV", 0, b"FLV"), ("Ogg", 0, b"OggS"), ("ASF/WMV", 0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"),
    ("MXF", 0, b"\x06\x0e\x2b\x34"), ("Y4M", 0, b"YUV4MPEG2"), ("IVF", 0, b"DKIF"), ("RealMedia", 0, b".RMF"),
    ("NUT", 0, b"nut/multimedia"), ("HLS playlist", 0, b"#EXTM3U"), ("JPEG/MJPEG", 0, b"\xff\xd8\xff"),
    ("PNG", 0, b"\x89PNG\r\n\x1a\n"), ("GIF", 0, b"GIF8"), ("BMP", 0, b"BM"), ("TIFF", 0, b"II*\x00"),
    ("TIFF", 0, b"MM\x00*"), ("WebP", 8, b"WEBP"), ("JPEG 2000", 4, b"jP  "), ("JPEG 2000", 0, b"\xff\x4f\xff\x51"),
    ("PNM", 0, b"P5"), ("PNM", 0, b"P6"), ("OpenEXR", 0, b"\x76\x2f\x31\x01"))
TS_PACKETS = ((0, 188), (4, 192))  # MPEG-TS / M2TS: a sync byte 0x47 at these two offsets


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


def check_camera_index(index: Any) -> int:
    """``index`` when it is a camera index OpenCV opens as /dev/videoN; else a ``ValueError``."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= MAX_CAMERA_INDEX:
        raise ValueError(f"camera index must be an integer 0-{MAX_CAMERA_INDEX} (/dev/videoN), got {index!r}")
    return index


def file_format(path: str) -> Optional[str]:
    """The video container or image format the first bytes of ``path`` show, else None."""
    with open(path, "rb") as f:
        head = f.read(256)
    for name, offset, magic in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    if any(len(head) > b and head[a] == head[b] == 0x47 for a, b in TS_PACKETS):
        return "MPEG-TS"
    return None


def _check_file(source: str) -> None:
    """A regular file given as a source must look like a video or an image (FFmpeg plays a
    text file as a rendered "video"); devices and FIFOs go to OpenCV as they are."""
    if not os.path.isfile(source):
        return
    try:
        fmt = file_format(source)
        empty = os.path.getsize(source) == 0
    except OSError as e:
        raise SourceError(f"cannot open file source {source!r}: {e.strerror or e}") from None
    if empty:
        raise SourceError(f"cannot open file source {source!r}: the file is empty")
    if fmt is None:
        known = ", ".join(dict.fromkeys(name for name, _, _ in SIGNATURES))
        raise SourceError(f"cannot open file source {source!r}: not a video or image (its first bytes match none "
                          f"of {known}, MPEG-TS)")


_OPENCV_LOG_LOCK = threading.Lock()  # OpenCV's log level is one per process


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV's own warnings off while a source is opened (the error we raise says it in one
    line); left on with debug logging."""
    import cv2

    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    with _OPENCV_LOG_LOCK:
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            yield
        finally:
            cv2.utils.logging.setLogLevel(level)


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
        if kind == "file":
            _check_file(str(source))
        with _quiet_opencv():
            cap = open_capture(source)
    else:
        cap = factory(source)
    if cap is None or not cap.isOpened():
        if cap is not None:
            cap.release()
        hint = ""
        if kind == "pipeline" and factory in (None, open_capture) and not _has_gstreamer():
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
    given up on after ``reconnect_attempts`` (< 0: forever), or a file ended before its
    ``expected_frames`` (the container's frame count; 0: unknown).

    A file or folder is read past failed reads (a corrupt stretch): those that a good frame
    follows are bad frames (``bad_reasons["unreadable"]``); it has ended only after
    ``READ_FAILURES`` failed reads in a row (or ``READ_FAILURE_S`` seconds of them). Frames its
    container promised but that never came are counted as unreadable too.
    """

    def __init__(self, cap: Any, source: Source, buffer: FrameBuffer, halt: threading.Event,
                 factory: CaptureFactory, live: bool, pace_fps: float = 0.0, reconnect_attempts: int = 10,
                 reconnect_delay: float = 0.5, reconnect_max_delay: float = 10.0, name: str = "hgad-capture",
                 label: Optional[str] = None, expected_frames: int = 0):
        super().__init__(name=name, daemon=True)
        self.cap, self.source, self.buffer, self.halt = cap, source, buffer, halt
        self.label = label or repr(source)  # how logs name the source (a URL without its password)
        self.factory, self.live, self.pace_fps = factory, live, pace_fps
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay, self.reconnect_max_delay = reconnect_delay, reconnect_max_delay
        self.expected_frames = expected_frames
        self.frames_read = 0
        self.bad_frames = 0
        self.bad_reasons: Dict[str, int] = {}  # why they were bad: "unreadable", "empty"
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

    def _bad(self, reason: str, n: int = 1) -> None:
        self.bad_reasons[reason] = self.bad_reasons.get(reason, 0) + n
        self.bad_frames += n

    def _loop(self) -> None:
        t0 = time.perf_counter()
        failed, failed_since = 0, 0.0  # failed reads in a row of a file/folder, since when
        while not self.halt.is_set():
            ok, frame = self._read()
            if not ok:
                if not self.live:
                    failed, failed_since = failed + 1, failed_since if failed else time.perf_counter()
                    if failed < READ_FAILURES and time.perf_counter() - failed_since < READ_FAILURE_S:
                        continue
                    self._ended()
                    return
                if not self._reconnect():
                    return
                continue
            if failed:  # a corrupt stretch the file recovered from: each failed read was a frame
                log.warning("source %s: frames %d-%d unreadable (skipped, counted as bad frames)", self.label,
                            self.frames_read, self.frames_read + failed - 1)
                self.frames_read += failed
                self._bad("unreadable", failed)
                failed = 0
            index = self.frames_read
            self.frames_read += 1
            self._attempt, self._delay = 0, self.reconnect_delay
            if frame is None or not isinstance(frame, np.ndarray) or frame.size == 0:
                self._bad("empty")
                log.debug("bad frame %d from %s skipped", index, self.label)
                continue
            if self.pace_fps > 0:
                due = t0 + index / self.pace_fps
                if self.halt.wait(max(0.0, due - time.perf_counter())):
                    return
            if not self.buffer.put((index, frame, time.time()), self.halt):
                return

    def _ended(self) -> None:
        """A file or folder gave no more frames: its end, or fewer than its container said."""
        missing = self.expected_frames - self.frames_read
        if missing <= 0:
            log.info("end of source %s after %d frames", self.label, self.frames_read)
            return
        log.error("source %s stopped delivering after %d of its %d frames: the last %d could not be read "
                  "(counted as bad frames)", self.label, self.frames_read, self.expected_frames, missing)
        self.frames_read += missing
        self._bad("unreadable", missing)
        self.lost = True

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
