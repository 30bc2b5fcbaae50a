"""The genjobs Python client and command line."""

from genjobs.client.client import GenJobsClient
from genjobs.client.errors import (
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
