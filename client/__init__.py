"""The genjobs Python client and command line."""

from client.client import (
    AlreadyExists,
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
    "AlreadyExists",
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
