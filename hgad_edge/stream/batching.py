"""The batched inference loop of a multi-source stream (``multi.run_sources`` sets it up).

Each step takes the oldest buffered item of every running source that has one (at most
``max_batch``, round-robin start), scores all of them in one ``Detector.predict`` call, then per
frame re-thresholds at the source's own FPR, writes the records, debounces the alarm, hands
images to the outputs that want them, and ends the sources whose capture said END.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from hgad_edge.stream.capture import END, SourceError, source_kind
from hgad_edge.stream.outputs import Window, _crop, annotate
from hgad_edge.stream.state import ENDED, RUNNING, STOPPING, MultiSummary, SourceState

log = logging.getLogger("hgad_edge.stream")


def score_batch(detector, crops: List[Any], classes: List[Optional[str]]) -> List[Any]:
    """Results per crop (a ``ValueError`` in place of a frame the detector rejected).

    One frame goes through ``detector(frame, class_name=...)``, several through
    ``detector.predict`` (one backbone + flow run); a batch that raises ``ValueError`` (one bad
    frame fails the batch) is scored frame by frame to find it."""
    if len(crops) > 1 and callable(getattr(detector, "predict", None)):
        try:
            return list(detector.predict(crops, classes))
        except ValueError:
            pass
    out: List[Any] = []
    for crop, c in zip(crops, classes):
        try:
            out.append(detector(crop, class_name=c))
        except ValueError as e:
            out.append(e)
    return out


def frame_record(sid: str, index: int, t_cap: float, r, ms: float, batch: int) -> Dict[str, Any]:
    return {"type": "frame", "source": sid, "time": round(t_cap, 6), "frame": index, "score": round(r.score, 6),
            "raw_score": float(r.raw_score), "is_anomaly": bool(r.is_anomaly), "class": r.class_name,
            "confidence": round(float(r.class_confidence), 6), "latency_ms": round(ms, 3), "batch": batch,
            "timings_ms": {k: round(v, 3) for k, v in r.timings_ms.items()}}


class BatchLoop:
    """The inference loop of ``run_sources``: collect one frame per ready source, score them
    in one call, emit records, alarms, images; end sources; make the summary."""

    def __init__(self, cfg, detector, backend, states, jsonl, sinks, wake, stop_event, on_result):
        self.cfg, self.detector, self.backend, self.states = cfg, detector, backend, states
        self.jsonl, self.wake, self.stop_event, self.on_result = jsonl, wake, stop_event, on_result
        self.sinks = sinks
        self.image_sinks = [k for k in sinks if callable(getattr(k, "image", None))]
        self.batches = self.frames = 0
        self.t_first: Optional[float] = None
        self.t_last: Optional[float] = None
        self.rr = 0  # round-robin start, fair when max_batch < sources

    def record(self, rec: Dict[str, Any]) -> None:
        self.jsonl.record(rec)
        for sink in self.sinks:
            try:
                sink.record(rec)
            except Exception as e:  # noqa: BLE001 (an output's bug must not stop scoring)
                log.warning("output %s failed on a %s record: %s", type(sink).__name__, rec.get("type"), e)

    def snapshot(self) -> List[Dict[str, Any]]:
        return [s.snapshot() for s in self.states]

    def run(self) -> MultiSummary:
        cfg, states = self.cfg, self.states
        t_start = time.perf_counter()
        info = {"backend": self.backend, "model": cfg.model, "max_batch": cfg.batch_limit,
                "sources": [{"id": s.id, "url": s.spec.display, "kind": source_kind(s.spec.source)} for s in states],
                "status": self.snapshot}
        for sink in self.sinks:
            if callable(getattr(sink, "start", None)):
                sink.start(info)
        for s in states:
            log.info("streaming %s source %s (%s, backend %s)", source_kind(s.spec.source), s.spec.display,
                     "newest frame only" if s.realtime else "every frame in order", self.backend)
            self.record({"type": "start", "time": time.time(), "source": s.id, "url": s.spec.display,
                         "backend": self.backend, "class": s.spec.class_name, "roi": s.spec.roi,
                         "alarm": s.spec.alarm, "target_fpr": s.thresholds.target_fpr})
        ended = "sources_ended"
        errors: List[BaseException] = []
        for s in states:
            s.grabber.start()
        try:
            while True:
                if self.stop_event.is_set():
                    ended = "stopped"
                    break
                if cfg.duration and time.perf_counter() - t_start >= cfg.duration:
                    ended = "duration"
                    break
                if all(s.phase == ENDED for s in states):
                    break
                self.wake.clear()
                batch = self._collect()
                if not batch:
                    self.wake.wait(0.1)
                    continue
                if not self._score(batch):
                    ended = "stopped"
                    break
        finally:
            for s in states:
                if s.phase != ENDED:
                    s.halt.set()
            exc = sys.exc_info()[1]
            for s in states:
                if s.phase != ENDED:
                    reason = ended if ended != "sources_ended" else "stopped"
                    self._finish(s, reason if s.phase == RUNNING else s.ending, write=exc is None)
            if exc is not None:
                self._close_outputs()
        try:
            errors = [s.grabber.error for s in states if s.grabber.error is not None]
            if errors:
                raise errors[0]
            sums = tuple(s.summary for s in states)
            if all(x.frames_read == 0 and x.ended_by in ("end_of_source", "source_lost") for x in sums):
                if len(states) == 1:
                    raise SourceError(f"source {states[0].spec.display!r} opened but delivered no frame")
                raise SourceError("no source delivered a frame")
            span = (self.t_last - self.t_first) if self.t_first is not None and self.t_last is not None else 0.0
            total = sum(x.frames_scored for x in sums)
            summary = MultiSummary(sources=sums, backend=self.backend, ended_by=ended,
                                   duration_s=time.perf_counter() - t_start, frames_scored=total,
                                   fps=total / span if span > 0 else 0.0, batches=self.batches,
                                   mean_batch=self.frames / self.batches if self.batches else 0.0)
            if len(states) > 1:
                self.record({"type": "run_summary", "source": None, "time": time.time(),
                             **{k: v for k, v in summary.as_dict().items() if k != "sources"}})
        finally:
            self._close_outputs()
        return summary

    def _close_outputs(self) -> None:
        self.jsonl.close()
        for s in self.states:
            for out in (s.video, s.window):
                if out is not None:
                    out.close()
            s.video = s.window = None

    def _finish(self, s: SourceState, reason: str, write: bool = True) -> None:
        summary = s.finish(reason, self.backend)
        if write:
            self.record({"type": "summary", "time": time.time(), **summary.as_dict()})

    def _collect(self) -> List[Tuple[SourceState, Tuple[int, Any, float]]]:
        """Up to ``max_batch`` items, one per source that has one (round-robin start); ends
        the sources whose buffer says END."""
        states, limit = self.states, self.cfg.batch_limit
        n = len(states)
        batch = []
        for k in range(n):
            s = states[(self.rr + k) % n]
            if s.phase == ENDED:
                continue
            if s.phase == STOPPING:  # drain (unscored) until the capture thread has ended
                item = s.buffer.get(0)
                while item is not None and item is not END:
                    item = s.buffer.get(0)
                if item is END or time.perf_counter() >= s.deadline:
                    self._finish(s, s.ending)
                continue
            if len(batch) >= limit:
                continue
            item = s.buffer.get(0)
            if item is None:
                continue
            if item is END:
                self._finish(s, "source_lost" if s.grabber.lost else "end_of_source")
                continue
            batch.append((s, item))
        self.rr = (self.rr + 1) % n
        return batch

    def _score(self, batch) -> bool:
        """Score one batch and emit everything about it; False when a window was closed."""
        crops, boxes, kept = [], [], []
        for s, item in batch:
            try:
                crop, box = _crop(item[1], s.spec.roi)
            except ValueError as e:  # a frame the ROI does not fit (the source changed size): counted, skipped
                n = s.bad("roi_outside_frame")
                if n == 10 ** (len(str(n)) - 1):  # the 1st, 10th, 100th ...: a resized camera must not flood the log
                    log.warning("source %s frame %d skipped (%d such frames so far): %s", s.id, item[0], n, e)
                continue
            crops.append(crop)
            boxes.append(box)
            kept.append((s, item))
        batch = kept
        if not batch:
            return True
        t0 = time.perf_counter()
        results = score_batch(self.detector, crops, [s.spec.class_name for s, _ in batch])
        t1 = time.perf_counter()
        ms = (t1 - t0) * 1e3
        self.batches += 1
        self.frames += len(batch)
        self.t_first = t0 if self.t_first is None else self.t_first
        self.t_last = t1
        windows = False
        for (s, (index, frame, t_cap)), box, r in zip(batch, boxes, results):
            if isinstance(r, ValueError):  # a frame the detector cannot take: counted, skipped
                s.bad("rejected")
                log.warning("source %s frame %d skipped: %s", s.id, index, r)
                continue
            r = s.thresholds.apply(r)
            s.scored_one(t0, t1, ms, t_cap, r.is_anomaly)
            self.record(frame_record(s.id, index, t_cap, r, ms, len(batch)))
            d = s.debouncer
            if d is not None and d.update(r.is_anomaly):
                log.warning("ALARM on %s at frame %d: %d of the last %d frames anomalous (score %.2f, class %s)",
                            s.id, index, d.count, d.m, r.score, r.class_name)
                self.record({"type": "alarm", "source": s.id, "time": round(t_cap, 6), "frame": index,
                             "anomalous": d.count, "window": d.m, "score": round(r.score, 6), "class": r.class_name})
            if self.on_result is not None:
                self.on_result(s.id, index, r)
            alarm_on = bool(d and d.active)
            if s.video is not None or s.window is not None:
                img = annotate(frame, r, box, s.fps_ema, ms, alarm_on)
                if s.video is not None:
                    s.video.write(img)
                if s.window is not None:
                    s.window.show(img)
                    windows = True
            for sink in self.image_sinks:
                if sink.wants_image(s.id):
                    sink.image(s.id, (frame, r, box, s.fps_ema, ms, alarm_on))
            if self.cfg.max_frames and s.scored >= self.cfg.max_frames:
                s.stop("max_frames")
        return Window.keep_open() if windows else True
