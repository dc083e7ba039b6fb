"""Per-source bookkeeping of a stream: counters, latencies, alarms, own thresholds, summary."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Tuple

from hgad_edge.postprocess import calibrated_score
from hgad_edge.stream.alarm import AlarmDebouncer
from hgad_edge.stream.capture import CaptureThread, FrameBuffer
from hgad_edge.stream.outputs import LatencyStats, VideoOut, Window
from hgad_edge.stream.sources import SourceSpec

log = logging.getLogger("hgad_edge.stream")
ENDINGS = ("end_of_source", "max_frames", "duration", "stopped", "source_lost")
RUNNING, STOPPING, ENDED = "running", "stopping", "ended"


@dataclass(frozen=True)
class StreamSummary:
    """What a stream (one source) did. ``frames_read`` = scored + dropped + bad (+ frames still
    buffered when it was stopped); ``bad_reasons`` splits ``bad_frames`` by why (``unreadable``:
    a failed read of a file, ``empty``: no pixels, ``roi_outside_frame``, ``rejected`` by the
    Detector); latencies: ``latency_*`` the detector call (the whole batch the frame was in),
    ``e2e_*`` capture → result."""

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
    bad_reasons: Dict[str, int] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        """JSON-friendly (NaN, e.g. a latency with no frame scored, becomes None)."""
        return {k: (None if v != v else round(v, 3)) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def format(self) -> str:
        return "\n".join([
            f"stream summary ({self.source}, backend {self.backend}, ended by {self.ended_by})",
            f"  frames scored   {self.frames_scored}  (read {self.frames_read}, dropped {self.frames_dropped}, "
            f"bad {self.bad_frames}{_reasons(self.bad_reasons)})",
            f"  anomalous       {self.anomalous}   alarms {self.alarms}   reconnects {self.reconnects}",
            f"  throughput      {self.fps:.2f} FPS over {self.duration_s:.1f} s",
            f"  latency         p50 {self.latency_p50_ms:.1f} ms  p99 {self.latency_p99_ms:.1f} ms  "
            f"(capture→result p50 {self.e2e_p50_ms:.1f} ms  p99 {self.e2e_p99_ms:.1f} ms)"])


@dataclass(frozen=True)
class MultiSummary:
    """What a multi-source run did: one ``StreamSummary`` per source and the aggregate."""

    sources: Tuple[StreamSummary, ...]
    backend: str
    ended_by: str  # "stopped", "duration", or "sources_ended" (each source ended on its own)
    duration_s: float
    frames_scored: int
    fps: float  # aggregate scored frames / s, first to last result
    batches: int
    mean_batch: float

    def by_id(self) -> Dict[str, StreamSummary]:
        return {s.source: s for s in self.sources}

    def as_dict(self) -> Dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "sources"}
        return {**{k: round(v, 3) if isinstance(v, float) else v for k, v in d.items()},
                "sources": [s.as_dict() for s in self.sources]}

    def format(self) -> str:
        lines = [f"run summary ({len(self.sources)} sources, backend {self.backend}, ended by {self.ended_by}): "
                 f"{self.frames_scored} frames scored, {self.fps:.2f} FPS in all, {self.batches} batches "
                 f"(mean {self.mean_batch:.2f} frames)"]
        return "\n".join(lines + [s.format() for s in self.sources])


def _reasons(reasons: Dict[str, int]) -> str:
    return f": {', '.join(f'{n} {k}' for k, n in sorted(reasons.items()))}" if reasons else ""


class Thresholds:
    """A source's own target FPR: per class the (threshold, spread) the detector itself computes
    for that FPR (``calibrate.threshold`` on the calibration scores of its map, backend and
    precision), applied to the detector's Results of that source.

    Identity when ``target_fpr`` is None or equals the detector's."""

    def __init__(self, detector, target_fpr: Optional[float]):
        self.target_fpr = target_fpr
        self.table: Optional[Dict[str, Tuple[float, float]]] = None
        if target_fpr is None or target_fpr == getattr(detector, "target_fpr", None):
            return
        if not callable(getattr(detector, "set_target_fpr", None)):
            raise ValueError("a per-source target_fpr needs a hgad_edge Detector (its stored calibration scores)")
        # The detector's own public way to threshold at an FPR (it knows which calibration scores
        # belong to its backend and precision), then back to its own FPR; before any scoring.
        own = detector.target_fpr
        try:
            detector.set_target_fpr(target_fpr)
            self.table = dict(zip(detector.class_names, (tuple(t) for t in detector.thresholds)))
        finally:
            detector.set_target_fpr(own)

    def apply(self, r):
        """``r`` re-thresholded: score, verdict, mask and threshold at this source's FPR."""
        if self.table is None:
            return r
        thr, spread = self.table[r.class_name if r.class_name is not None else r.nearest_class]
        return dataclasses.replace(r, score=calibrated_score(r.raw_score, thr, spread), is_anomaly=r.raw_score > thr,
                                   mask=r.anomaly_map > thr, threshold=thr)


class SourceState:
    """One source while it streams: its capture thread and buffer, counters and outputs."""

    def __init__(self, spec: SourceSpec, grabber: CaptureThread, buffer: FrameBuffer, halt: threading.Event,
                 fps: float, realtime: bool, thresholds: Thresholds, video: Optional[VideoOut],
                 window: Optional[Window]):
        self.spec, self.grabber, self.buffer, self.halt = spec, grabber, buffer, halt
        self.fps, self.realtime, self.thresholds = fps, realtime, thresholds
        self.video, self.window = video, window
        self.debouncer = AlarmDebouncer(*spec.alarm) if spec.alarm else None
        self.lat, self.e2e = LatencyStats(), LatencyStats()
        self.scored = self.anomalous = 0
        self.bad_reasons: Dict[str, int] = {}  # frames the loop could not score, by why
        self.fps_ema = 0.0
        self.t_start = time.perf_counter()
        self.t_first: Optional[float] = None
        self.t_last: Optional[float] = None
        self.phase = RUNNING
        self.ending: Optional[str] = None  # why it is stopping
        self.deadline = 0.0  # STOPPING: give up waiting for the capture thread then
        self.summary: Optional[StreamSummary] = None

    @property
    def id(self) -> str:
        return self.spec.id

    def bad(self, reason: str) -> int:
        """Count one bad frame of the loop's (``roi_outside_frame``, ``rejected``); how many so far."""
        n = self.bad_reasons[reason] = self.bad_reasons.get(reason, 0) + 1
        return n

    def bad_counts(self) -> Dict[str, int]:
        """Bad frames by reason, the capture thread's and the loop's."""
        out = dict(self.grabber.bad_reasons)
        for k, n in list(self.bad_reasons.items()):
            out[k] = out.get(k, 0) + n
        return out

    def scored_one(self, t0: float, t1: float, ms: float, t_cap: float, anomalous: bool) -> None:
        if self.t_last is not None:
            inst = 1.0 / max(t1 - self.t_last, 1e-9)
            self.fps_ema = inst if self.fps_ema == 0 else 0.9 * self.fps_ema + 0.1 * inst
        self.t_first = t0 if self.t_first is None else self.t_first
        self.t_last = t1
        self.scored += 1
        self.anomalous += bool(anomalous)
        self.lat.add(ms)
        self.e2e.add((time.time() - t_cap) * 1e3)

    def stop(self, reason: str, wait_s: float = 10.0) -> None:
        """Ask the capture thread to end; the source ends when its buffer says END."""
        if self.phase == RUNNING:
            self.phase, self.ending = STOPPING, reason
            self.deadline = time.perf_counter() + wait_s
            self.halt.set()

    def finish(self, ended_by: str, backend: str) -> StreamSummary:
        """Join the capture thread (bounded), close the outputs, make the summary."""
        self.halt.set()
        self.grabber.join(timeout=max(0.0, self.deadline - time.perf_counter()) if self.deadline else 10.0)
        if self.grabber.is_alive():
            log.warning("capture thread of %s still blocked in the source after 10 s; leaving it (daemon)", self.id)
        for out in (self.video, self.window):
            if out is not None:
                out.close()
        self.video = self.window = None
        span = (self.t_last - self.t_first) if self.scored and self.t_first is not None else 0.0
        g = self.grabber
        self.summary = StreamSummary(
            source=self.id, backend=backend, ended_by=ended_by, frames_read=g.frames_read, frames_scored=self.scored,
            frames_dropped=self.buffer.dropped, bad_frames=sum(self.bad_counts().values()), anomalous=self.anomalous,
            alarms=self.debouncer.fired if self.debouncer else 0, reconnects=g.reconnects,
            duration_s=time.perf_counter() - self.t_start, fps=self.scored / span if span > 0 else 0.0,
            latency_p50_ms=self.lat.quantile(0.5), latency_p99_ms=self.lat.quantile(0.99),
            e2e_p50_ms=self.e2e.quantile(0.5), e2e_p99_ms=self.e2e.quantile(0.99), bad_reasons=self.bad_counts())
        self.phase = ENDED
        log.info("source %s ended (%s): %d frames scored, %d dropped, %.2f FPS", self.id, ended_by, self.scored,
                 self.buffer.dropped, self.summary.fps)
        return self.summary

    def snapshot(self) -> Dict[str, Any]:
        """Live counters for the web view's status (read from another thread: plain values)."""
        g = self.grabber
        state = self.phase if self.phase != RUNNING else ("reconnecting" if not g.connected else RUNNING)
        return {"id": self.id, "url": self.spec.display, "class": self.spec.class_name, "roi": self.spec.roi,
                "alarm": self.spec.alarm, "target_fpr": self.thresholds.target_fpr, "state": state,
                "ended_by": self.summary.ended_by if self.summary else None,
                "frames_read": g.frames_read, "frames_scored": self.scored, "frames_dropped": self.buffer.dropped,
                "bad_frames": g.bad_frames + sum(self.bad_reasons.values()), "anomalous": self.anomalous,
                "alarms": self.debouncer.fired if self.debouncer else 0, "reconnects": g.reconnects,
                "fps": round(self.fps_ema, 3), "latency_p50_ms": _num(self.lat.quantile(0.5)),
                "latency_p99_ms": _num(self.lat.quantile(0.99)), "e2e_p50_ms": _num(self.e2e.quantile(0.5)),
                "e2e_p99_ms": _num(self.e2e.quantile(0.99))}


def _num(v: float) -> Optional[float]:
    return None if v != v else round(v, 3)
