"""Generated protobuf and gRPC code for the virtwire.v1 proto package (make protos)."""
