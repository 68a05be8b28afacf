"""Generated protobuf/gRPC code for the cde.v1 API (built from proto/ at install time)."""
