"""gRPC server reflection, v1 and v1alpha.

grpcio-reflection (up to 1.85 at least) ships only v1alpha, while newer tools
(buf curl, grpcurl 1.9+) ask for v1 first. The two protocols are the same on
the wire (identical messages and field numbers, only the package differs), so
without a `grpc_reflection.v1` module the v1alpha servicer also answers under
the v1 service name.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as messages
from grpc_reflection.v1alpha._async import ReflectionServicer

V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve reflection v1alpha and v1 for `service_names` (and themselves) on `server`."""
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    try:
        v1 = importlib.import_module("grpc_reflection.v1.reflection")
    except ImportError:
        v1 = None
    if v1 is not None:
        v1.enable_server_reflection(names, server)
        return
    handlers = {
        "ServerReflectionInfo": grpc.stream_stream_rpc_method_handler(
            ReflectionServicer(names).ServerReflectionInfo,
            request_deserializer=messages.ServerReflectionRequest.FromString,
            response_serializer=messages.ServerReflectionResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, handlers),))
