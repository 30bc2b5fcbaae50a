"""The domain's vocabulary: job and bulk state machines, the clock, domain errors,
the caller, shared rules.

`states` says which action each status allows; `clock` is the one source of
time (tests move it); `errors` are the domain errors with their gRPC code,
ErrorInfo reason and bounded details; `caller` is who is calling; `rules`
the request and text rules several layers read; `progress` a progress
report's shape and the attempt tokens; `loops` the event loop each thread
that runs one is built on.

Layering (held by import-linter, pyproject.toml): runtime -> api -> services
-> dispatch | notify | generators -> storage -> telemetry -> model. model is the bottom room:
it imports no other room.
"""
