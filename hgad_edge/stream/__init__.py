"""Live scoring: capture threads, the inference loop, outputs (window, video, JSONL) and N-of-M alarms.

``python -m hgad_edge.stream --model RUN_DIR --camera 0`` (or ``hgad-edge stream``).
"""
from hgad_edge.stream.alarm import AlarmDebouncer, alarm_frames, parse_alarm
from hgad_edge.stream.capture import SourceError
from hgad_edge.stream.loop import ENDINGS, StreamConfig, StreamSummary, run_stream
from hgad_edge.stream.outputs import annotate

__all__ = ["AlarmDebouncer", "alarm_frames", "parse_alarm", "SourceError", "ENDINGS", "StreamConfig",
           "StreamSummary", "run_stream", "annotate"]
