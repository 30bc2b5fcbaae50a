"""Running jobs: the dispatcher thread that claims and runs them, and fair share.

`dispatcher` claims queued jobs and hands each to the `run.RunLifecycle` it
holds, which runs the generator under the watchdog and records the outcome;
`fairshare` decides who goes next (priority, then round robin by owner, then
the owner's order).

Layering (held by import-linter, pyproject.toml): runtime -> api -> services
-> dispatch | notify | generators -> storage -> telemetry -> model. dispatch may import
storage and model, and generators (it runs them); notify and generators are
its side-by-side rooms, never services, api or runtime.
"""
