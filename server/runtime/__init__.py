"""The process: settings, assembly, the embedded database, observability, probes.

`config` reads GENJOBS_* variables and flags; `app` assembles one server
(database, store, event feed, gRPC and HTTP faces) and starts and stops it;
`wiring` builds its domain objects, dispatcher and servicers, each complete,
once; `factories` makes the generator and notifier the
settings name; `embedded` and `quiet_nx` run the embedded nx-27017;
`observability` wires metrics, traces and JSON logs (what every layer records
goes through server/telemetry/); `probe` is the container
health check. The entry point `python -m genjobs.server` (server/__main__.py) uses it.

Layering (held by import-linter, pyproject.toml): runtime -> api -> services
-> dispatch | notify | generators -> storage -> telemetry -> model. runtime is the top room:
it may import every other room; no other room should import it.
"""
