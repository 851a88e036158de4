"""Generated protobuf and gRPC modules (built by `make proto`; do not edit)."""
