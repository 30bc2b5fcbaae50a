"""`python -m genjobs.server.runtime.probe`: exit 0 when the local server's gRPC health says
SERVING, else 1 (a container's HEALTHCHECK; Kubernetes has gRPC probes of its own)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from genjobs.server.runtime.config import Settings


def check(settings: Settings, timeout: float = 3.0) -> bool:
    """Whether the server on `settings`' port answers SERVING."""
    target = f"127.0.0.1:{settings.port}"
    if settings.tls_cert_file:
        # Trust the server's own chain, under a name its certificate holds.
        credentials = grpc.ssl_channel_credentials(Path(settings.tls_cert_file).read_bytes())
        options = [
            ("grpc.ssl_target_name_override", os.environ.get("GENJOBS_PROBE_SERVER_NAME", "localhost"))
        ]
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return answer.status == health_pb2.HealthCheckResponse.SERVING


def main() -> int:
    """Entry point: 0 when SERVING."""
    return 0 if check(Settings.from_env()) else 1


if __name__ == "__main__":
    sys.exit(main())
