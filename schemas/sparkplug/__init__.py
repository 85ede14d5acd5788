"""Sparkplug B: the Eclipse Tahu protobuf definition (`sparkplug_b.proto`, EPL-2.0), its generated
module `sparkplug_b_pb2` (`make protos` regenerates it; a test checks it matches), and the host
application's per-node state (`sessions`). The decoder is schemas/decoders/sparkplug.py."""

from schemas.sparkplug.sessions import MetricDefinition, Session, SessionKey, SessionRow, SparkplugSessions

__all__ = ["MetricDefinition", "Session", "SessionKey", "SessionRow", "SparkplugSessions"]
