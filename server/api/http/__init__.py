"""The HTTP/JSON face of the gRPC API, and the dashboard it serves."""
