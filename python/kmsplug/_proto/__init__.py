"""Generated protobuf and gRPC modules: `make proto` writes them, do not edit.

They are committed so that every wheel and sdist ships them (maturin has no build step
that could run protoc). tests/packaging/test_proto.py fails when they no longer match
proto/ or the pinned grpcio-tools of requirements-dev.txt.
"""
