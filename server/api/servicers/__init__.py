"""gRPC servicers: translate protobuf to domain calls and domain errors to statuses."""
