"""The genjobs Python client and command line."""

from client.client import (
    FailedPrecondition,
    GenJobsClient,
    GenJobsError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    translate,
)

__all__ = [
    "FailedPrecondition",
    "GenJobsClient",
    "GenJobsError",
    "InvalidArgument",
    "NotFound",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "translate",
]
