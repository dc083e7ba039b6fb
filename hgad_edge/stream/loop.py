"""Live stream scoring: ``python -m hgad_edge.stream --camera 0 --model RUN_DIR``.

A capture thread (``capture.py``) hands frames to the inference loop here: newest frame only for
cameras, URLs and GStreamer pipelines (inference never falls behind; drops are counted), every
frame in order for files and folders unless ``realtime``. Each scored frame can go to a window,
an annotated video, a JSONL event log and an N-of-M alarm (``alarm.py``).
"""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

from hgad_edge.stream.alarm import AlarmDebouncer
from hgad_edge.stream.capture import (END, CaptureFactory, CaptureThread, FrameBuffer,  # noqa: F401
                                      SourceError, is_live, open_capture, open_checked, source_kind)
from hgad_edge.stream.outputs import LatencyStats, _crop, _Outputs, annotate  # noqa: F401 (annotate is public API)

log = logging.getLogger("hgad_edge.stream")
ENDINGS = ("end_of_source", "max_frames", "duration", "stopped", "source_lost")


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
        if self.alarm is not None:
            AlarmDebouncer(*self.alarm)  # validates N/M
        if self.roi is not None and (len(self.roi) != 4 or min(self.roi[:2]) < 0 or min(self.roi[2:]) < 1):
            raise ValueError(f"roi must be (x, y, w, h) with x, y >= 0 and w, h >= 1, got {self.roi}")
        for name in ("max_frames", "duration", "fps", "target_fpr"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 (or None), got {v}")
        if self.reconnect_delay < 0 or self.reconnect_max_delay < self.reconnect_delay or self.queue_size < 1:
            raise ValueError("need 0 <= reconnect_delay <= reconnect_max_delay and queue_size >= 1")
        for path in (self.save, self.jsonl):
            folder = os.path.dirname(os.path.abspath(path)) if path else ""
            if path and not os.path.isdir(folder):
                raise ValueError(f"output folder {folder!r} of {path!r} does not exist")


@dataclass(frozen=True)
class StreamSummary:
    """What a stream did. ``frames_read`` = scored + dropped + bad (+ frames still buffered when
    it was stopped); latencies: ``latency_*`` the detector call, ``e2e_*`` capture → result."""

    source: str
    backend: str
    ended_by: str
    frames_read: int
    frames_scored: int
    frames_dropped: int
    bad_frames: int
    anomalous: int
    alarms: int
    reconnects: int
    duration_s: float
    fps: float
    latency_p50_ms: float
    latency_p99_ms: float
    e2e_p50_ms: float
    e2e_p99_ms: float

    def as_dict(self) -> Dict[str, Any]:
        """JSON-friendly (NaN, e.g. a latency with no frame scored, becomes None)."""
        return {k: (None if v != v else round(v, 3)) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def format(self) -> str:
        return "\n".join([
            f"stream summary ({self.source}, backend {self.backend}, ended by {self.ended_by})",
            f"  frames scored   {self.frames_scored}  (read {self.frames_read}, dropped {self.frames_dropped}, "
            f"bad {self.bad_frames})",
            f"  anomalous       {self.anomalous}   alarms {self.alarms}   reconnects {self.reconnects}",
            f"  throughput      {self.fps:.2f} FPS over {self.duration_s:.1f} s",
            f"  latency         p50 {self.latency_p50_ms:.1f} ms  p99 {self.latency_p99_ms:.1f} ms  "
            f"(capture→result p50 {self.e2e_p50_ms:.1f} ms  p99 {self.e2e_p99_ms:.1f} ms)"])


def run_stream(cfg: StreamConfig, detector=None, stop_event: Optional[threading.Event] = None,
               capture_factory: Optional[CaptureFactory] = None,
               on_result: Optional[Callable[[int, Any], None]] = None) -> StreamSummary:
    """Score a stream until it ends, a limit is reached or ``stop_event`` is set.

    Args:
        cfg: the stream configuration.
        detector: a ready ``Detector`` (default: one built from ``cfg.model``/``backend``/...).
        stop_event: set it (from a signal handler, another thread) to stop cleanly.
        capture_factory: ``source -> capture`` with OpenCV's VideoCapture surface (default:
            OpenCV / image folder); also used to reconnect.
        on_result: called as ``on_result(frame_index, result)`` after each scored frame.

    Returns:
        The ``StreamSummary``.

    Raises:
        SourceError: the source cannot be opened or never delivered a frame.
        ValueError: bad configuration (unknown class, roi outside the frame, ...).
    """
    import cv2

    stop_event = stop_event or threading.Event()
    if detector is None and not cfg.model:
        raise ValueError("StreamConfig.model (a RUN_DIR) is needed when no detector is given")
    live = is_live(cfg.source)
    cap = open_checked(cfg.source, capture_factory)  # first: a wrong source fails before the model loads
    own_detector = detector is None
    try:
        if detector is None:
            from hgad_edge.detector import Detector

            detector = Detector(cfg.model, backend=cfg.backend, device=cfg.device, precision=cfg.precision,
                                target_fpr=cfg.target_fpr, threads=cfg.threads)
        detector.class_index(cfg.class_name)  # an unknown class fails here, naming the known ones
    except BaseException:
        cap.release()
        if own_detector and detector is not None:
            detector.close()
        raise
    backend = str(getattr(detector, "backend", "custom"))

    src_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    fps = cfg.fps or (src_fps if 0 < src_fps < 1000 else 25.0)
    realtime = live or bool(cfg.realtime)
    if live and cfg.realtime is False:
        log.info("live sources are always scored newest-frame-only; realtime=False ignored")
    buffer = FrameBuffer(1 if realtime else cfg.queue_size, drop=realtime)
    halt = threading.Event()
    grabber = CaptureThread(cap, cfg.source, buffer, halt, capture_factory or open_capture, live,
                            pace_fps=fps if realtime and not live else 0.0,
                            reconnect_attempts=cfg.reconnect_attempts, reconnect_delay=cfg.reconnect_delay,
                            reconnect_max_delay=cfg.reconnect_max_delay)
    try:
        outputs = _Outputs(cfg, fps)
    except BaseException:
        cap.release()
        raise
    debouncer = AlarmDebouncer(*cfg.alarm) if cfg.alarm else None
    lat, e2e = LatencyStats(), LatencyStats()
    scored = anomalous = rejected = 0
    ended, fps_ema = "stopped", 0.0
    log.info("streaming %s source %r (%s, backend %s)", source_kind(cfg.source), cfg.source,
             "newest frame only" if realtime else "every frame in order", backend)
    outputs.record({"type": "start", "time": time.time(), "source": str(cfg.source), "backend": backend,
                    "class": cfg.class_name, "roi": cfg.roi, "alarm": cfg.alarm})
    t_start = time.perf_counter()
    t_first = t_last = None
    grabber.start()
    try:
        while True:
            if stop_event.is_set():
                ended = "stopped"
                break
            if cfg.duration and time.perf_counter() - t_start >= cfg.duration:
                ended = "duration"
                break
            item = buffer.get(0.1)
            if item is None:
                continue
            if item is END:
                ended = "source_lost" if grabber.lost else "end_of_source"
                break
            index, frame, t_cap = item
            crop, box = _crop(frame, cfg.roi)
            t0 = time.perf_counter()
            try:
                r = detector(crop, class_name=cfg.class_name)
            except ValueError as e:  # a frame the detector cannot take: counted, skipped
                rejected += 1
                log.warning("frame %d skipped: %s", index, e)
                continue
            t1 = time.perf_counter()
            ms = (t1 - t0) * 1e3
            if t_last is not None:
                fps_ema = 1.0 / max(t1 - t_last, 1e-9) if fps_ema == 0 else 0.9 * fps_ema + 0.1 / max(t1 - t_last, 1e-9)
            t_first = t0 if t_first is None else t_first
            t_last = t1
            scored += 1
            anomalous += bool(r.is_anomaly)
            lat.add(ms)
            e2e.add((time.time() - t_cap) * 1e3)
            outputs.record({"type": "frame", "time": round(t_cap, 6), "frame": index, "score": round(r.score, 6),
                            "raw_score": float(r.raw_score), "is_anomaly": bool(r.is_anomaly),
                            "class": r.class_name, "confidence": round(float(r.class_confidence), 6),
                            "latency_ms": round(ms, 3),
                            "timings_ms": {k: round(v, 3) for k, v in r.timings_ms.items()}})
            if debouncer is not None and debouncer.update(r.is_anomaly):
                log.warning("ALARM at frame %d: %d of the last %d frames anomalous (score %.2f, class %s)",
                            index, debouncer.count, debouncer.m, r.score, r.class_name)
                outputs.record({"type": "alarm", "time": round(t_cap, 6), "frame": index, "anomalous": debouncer.count,
                                "window": debouncer.m, "score": round(r.score, 6), "class": r.class_name})
            if on_result is not None:
                on_result(index, r)
            if outputs.wants_image:
                alarm_on = bool(debouncer and debouncer.active)
                if not outputs.image(annotate(frame, r, box, fps_ema, ms, alarm_on)):
                    ended = "stopped"
                    break
            if cfg.max_frames and scored >= cfg.max_frames:
                ended = "max_frames"
                break
    finally:
        halt.set()
        grabber.join(timeout=10.0)
        if grabber.is_alive():
            log.warning("capture thread still blocked in the source after 10 s; leaving it (daemon)")
        if sys.exc_info()[0] is not None:
            outputs.close()
    try:
        if grabber.error is not None:
            raise grabber.error
        if grabber.frames_read == 0 and ended in ("end_of_source", "source_lost"):
            raise SourceError(f"source {cfg.source!r} opened but delivered no frame")
        span = (t_last - t_first) if scored else 0.0
        summary = StreamSummary(
            source=str(cfg.source), backend=backend, ended_by=ended, frames_read=grabber.frames_read,
            frames_scored=scored, frames_dropped=buffer.dropped, bad_frames=grabber.bad_frames + rejected,
            anomalous=anomalous, alarms=debouncer.fired if debouncer else 0, reconnects=grabber.reconnects,
            duration_s=time.perf_counter() - t_start, fps=scored / span if span > 0 else 0.0,
            latency_p50_ms=lat.quantile(0.5), latency_p99_ms=lat.quantile(0.99),
            e2e_p50_ms=e2e.quantile(0.5), e2e_p99_ms=e2e.quantile(0.99))
        outputs.record({"type": "summary", "time": time.time(), **summary.as_dict()})
    finally:
        outputs.close()
        if own_detector:
            detector.close()
    log.info("stream ended (%s): %d frames scored, %d dropped, %.2f FPS", ended, scored, buffer.dropped, summary.fps)
    return summary
