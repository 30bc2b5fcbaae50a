"""BulkService: protobuf in, a `Bulks` call, protobuf out."""

from __future__ import annotations

from genjobs.v1 import bulk_pb2_grpc
from server.bulk import Bulks
from server.events import EventHub


class BulkServicer(bulk_pb2_grpc.BulkServiceServicer):
    """The BulkService RPCs."""

    def __init__(self, bulks: Bulks, hub: EventHub, heartbeat_seconds: float) -> None:
        self.bulks = bulks
        self.hub = hub
        self.heartbeat_seconds = heartbeat_seconds
