"""MongoDB: every query and update, by aggregate, and how outages are told apart.

`store` holds the jobs and bulk-jobs collections; `budgets` the budgets and
usage collections; `schedules` the schedules and templates collections and
their per-owner counters; `eventlog` stores job events for replay;
`pagetoken` signs page tokens; `outage` says what counts as the database
being unreachable.

Layering (target, for import-linter): runtime -> api -> services ->
dispatch | notify | generators -> storage -> model. storage may import only
model.
"""
