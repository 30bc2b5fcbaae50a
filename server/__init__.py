"""The genjobs service: storage, state machine, dispatcher and gRPC servicers."""
