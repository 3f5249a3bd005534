"""Generated protobuf/gRPC code for kvstore.v1 (do not edit; scripts/gen_proto.sh)."""
