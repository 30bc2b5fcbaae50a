"""The domain's vocabulary: job and bulk state machines, the clock, domain errors.

`states` says which action each status allows; `clock` is the one source of
time (tests move it); `errors` are the domain errors with their gRPC code,
ErrorInfo reason and bounded details.

Layering (target, for import-linter): runtime -> api -> services ->
dispatch | notify | generators -> storage -> model. model is the bottom room:
it imports no other room.
"""
