"""Live stream scoring of one source: ``python -m hgad_edge.stream --camera 0 --model RUN_DIR``.

A capture thread (``capture.py``) hands frames to the inference loop (``multi.py``, here with
one source): newest frame only for cameras, URLs and GStreamer pipelines (inference never falls
behind; drops are counted), every frame in order for files and folders unless ``realtime``.
Each scored frame can go to a window, an annotated video, a JSONL event log and an N-of-M alarm
(``alarm.py``).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple, Union

from hgad_edge.stream.capture import CaptureFactory, SourceError  # noqa: F401 (raised by run_stream)
from hgad_edge.stream.multi import MultiStreamConfig, run_sources
from hgad_edge.stream.outputs import annotate  # noqa: F401 (public API)
from hgad_edge.stream.sources import SourceSpec, redact
from hgad_edge.stream.state import ENDINGS, StreamSummary  # noqa: F401 (public API)


@dataclass(frozen=True)
class StreamConfig:
    """What to score and where the results go.

    Args:
        source: camera index (int), video file, image folder, rtsp/http URL or GStreamer pipeline.
        model: RUN_DIR of a trained model (not needed when ``run_stream`` gets a detector).
        backend, device, precision, target_fpr, threads: passed to ``Detector`` (device "auto":
            a CUDA GPU when one is visible, so ``backend="tensorrt"``/"auto" use it on a Jetson).
        class_name: the product class; None routes every frame on its own.
        realtime: files/folders: True paces at ``fps`` and keeps only the newest frame, False
            (default) scores every frame in order. Live sources are always newest-frame-only.
        fps: source rate for pacing and ``save`` (default: the source's own, else 25).
        display: show a window (falls back to headless when there is no display).
        save: annotated video path (mp4v). jsonl: event log, appended, one line per record.
        alarm: (N, M): alarm when ≥ N of the last M frames are anomalous; None: no alarms.
        roi: (x, y, w, h) in pixels: only that crop is scored.
        max_frames: stop after this many scored frames. duration: stop after this many seconds.
        reconnect_attempts: per loss of a live source (< 0: forever), backoff from
            ``reconnect_delay`` doubling up to ``reconnect_max_delay`` seconds.
        queue_size: frames buffered between capture and inference in ordered mode.
    """

    source: Union[int, str]
    model: Optional[str] = None
    backend: str = "auto"
    device: str = "auto"
    precision: Optional[str] = None
    class_name: Optional[str] = None
    target_fpr: Optional[float] = None
    threads: Optional[int] = None
    realtime: Optional[bool] = None
    fps: Optional[float] = None
    display: bool = False
    save: Optional[str] = None
    jsonl: Optional[str] = None
    alarm: Optional[Tuple[int, int]] = (3, 5)
    roi: Optional[Tuple[int, int, int, int]] = None
    max_frames: Optional[int] = None
    duration: Optional[float] = None
    reconnect_attempts: int = 10
    reconnect_delay: float = 0.5
    reconnect_max_delay: float = 10.0
    queue_size: int = 4

    def __post_init__(self):
        if not isinstance(self.source, (int, str)) or isinstance(self.source, bool) or self.source == "":
            raise ValueError(f"source must be a camera index (int) or a path/URL/pipeline (str), got {self.source!r}")
        self.multi()  # every other rule is the multi-source configuration's

    def multi(self) -> MultiStreamConfig:
        """This configuration as the one-source ``MultiStreamConfig`` that runs it."""
        spec = SourceSpec(id=redact(self.source), source=self.source, class_name=self.class_name, roi=self.roi,
                          alarm=self.alarm, realtime=self.realtime, fps=self.fps)
        return MultiStreamConfig(sources=(spec,), model=self.model, backend=self.backend, device=self.device,
                                 precision=self.precision, target_fpr=self.target_fpr, threads=self.threads,
                                 display=self.display, save=self.save, jsonl=self.jsonl, max_frames=self.max_frames,
                                 duration=self.duration, reconnect_attempts=self.reconnect_attempts,
                                 reconnect_delay=self.reconnect_delay, reconnect_max_delay=self.reconnect_max_delay,
                                 queue_size=self.queue_size)


def run_stream(cfg: StreamConfig, detector=None, stop_event: Optional[threading.Event] = None,
               capture_factory: Optional[CaptureFactory] = None,
               on_result: Optional[Callable[[int, Any], None]] = None, sinks: Sequence[Any] = ()) -> StreamSummary:
    """Score a stream until it ends, a limit is reached or ``stop_event`` is set.

    Args:
        cfg: the stream configuration.
        detector: a ready ``Detector`` (default: one built from ``cfg.model``/``backend``/...).
        stop_event: set it (from a signal handler, another thread) to stop cleanly.
        capture_factory: ``source -> capture`` with OpenCV's VideoCapture surface (default:
            OpenCV / image folder); also used to reconnect.
        on_result: called as ``on_result(frame_index, result)`` after each scored frame.
        sinks: the web view / event outputs (see ``multi.run_sources``).

    Returns:
        The ``StreamSummary``.

    Raises:
        SourceError: the source cannot be opened or never delivered a frame.
        ValueError: bad configuration (unknown class, roi outside the frame, ...).
    """
    multi = cfg.multi()
    callback = None if on_result is None else (lambda _sid, index, r: on_result(index, r))
    summary = run_sources(multi, detector=detector, stop_event=stop_event, capture_factory=capture_factory,
                          on_result=callback, sinks=sinks)
    return summary.sources[0]
