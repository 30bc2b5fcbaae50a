"""Where a job or bulk job reports its end: a list of notification targets.

A target is a value, a channel's name and an address on it. Jobs and bulk
jobs carry a list of them; the notify room owns each channel's delivery.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NotifyTarget:
    """One place to tell about an end: `channel` ("webhook", "email", ...) and its `address`."""

    channel: str
    address: str
    # The request field it was given in when that was a shorthand (notify_url):
    # a field violation names it. "" for an entry of the `notify` list.
    given_as: str = field(default="", compare=False, repr=False)
