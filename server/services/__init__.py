"""The domain: what each RPC does, and the rules it applies.

`jobs`, `bulk`, `schedules`, `templates`, `budgets` and `progress` carry out
the RPCs of their aggregate; `intake` is SubmitJob's and CreateBulkJob's
operation, which a schedule's tick calls too; `validation` checks requests; `entitlement` is
the one rule for PRIORITY_HIGH; `events` is the in-process event feed behind
the Watch streams.

Layering (held by import-linter, pyproject.toml): runtime -> api -> services
-> dispatch | notify | generators -> storage -> telemetry -> model. services may import
dispatch, notify, generators, storage and model, never api or runtime.
"""
