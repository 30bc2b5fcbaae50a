"""The genjobs Python client and command line."""

from client.client import GenJobsClient
from client.errors import (
    AlreadyExists,
    FailedPrecondition,
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
