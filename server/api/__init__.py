"""The faces of the service: gRPC servicers, the HTTP/JSON transcoder, auth.

`servicers/` turn protobuf requests into service calls and domain errors into
statuses; `http/` serves the same RPCs as HTTP/JSON (and the dashboard);
`auth` checks bearer tokens; `convert` turns stored documents into messages;
`watch` is the stream loop of the Watch RPCs; `reflection` registers gRPC
reflection.

Layering (target, for import-linter): runtime -> api -> services ->
dispatch | notify | generators -> storage -> model. api may import services
and the rooms below it, never runtime.
"""
