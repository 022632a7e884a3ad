"""The gRPC edge: the servicer (messages to manager calls, errors to status codes), the client,
and the conversions between plain data and messages they share (messages). The only importers of
grpc and the generated code."""
