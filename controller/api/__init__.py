"""The gRPC edge: the servicer (messages to manager calls, errors to status codes) and the
client. The only importers of grpc and the generated code."""
