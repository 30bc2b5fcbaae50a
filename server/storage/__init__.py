"""MongoDB: every query and update, by aggregate, and how outages are told apart.

One store class per aggregate over the shared connection (`database`):
`jobs` (job documents), `events` (job_events), `queue` (the ready lane,
claims, fenced writes, job and leader leases, fair-share turns), `bulk`
(bulk jobs and their items' lanes), `notifications` (notifications and their
deliveries), `budgets` (budgets and usage), `schedules` (schedules and
templates); `store` makes them together. `paging` keyset pages and request
keys; `inserts` batched inserts from the event loop; `eventlog` stores job
events in the background; `pagetoken` signs page tokens; `outage` says what
counts as the database being unreachable.

Layering (target, for import-linter): runtime -> api -> services ->
dispatch | notify | generators -> storage -> model. storage may import only
model.
"""
