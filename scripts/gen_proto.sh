#!/usr/bin/env bash
# Regenerate kvstore/v1/*_pb2*.py from proto/kvstore/v1/*.proto (the proto path mirrors the
# Python package, so generated imports read `from kvstore.v1 import ...`).
# With --check: regenerate into a temporary tree and fail if the committed files differ.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.
if [ "${1:-}" = "--check" ]; then out=$(mktemp -d); fi
python -m grpc_tools.protoc -Iproto --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  proto/kvstore/v1/*.proto
if [ "$out" != "." ]; then
  if ! diff -r -x __init__.py -x __pycache__ "$out/kvstore/v1" kvstore/v1; then
    echo "generated protobuf code is out of date: run scripts/gen_proto.sh and commit" >&2
    exit 1
  fi
  echo "generated protobuf code matches proto/"
fi
