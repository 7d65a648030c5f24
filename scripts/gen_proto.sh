#!/bin/sh
# Regenerate fastrcnn/proto/caffe_pb2.py from proto/caffe.proto.
#
# Uses protoc 3.21 (Debian bookworm's protobuf-compiler): its gencode runs on
# protobuf runtimes 4.x to 7.x, while gencode from newer protoc refuses older
# runtimes. Set PROTOC to use a protoc other than the one on PATH.
#
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: fastrcnn/proto)
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-"$root/fastrcnn/proto"}
protoc=${PROTOC:-protoc}

if ! command -v "$protoc" >/dev/null 2>&1; then
    echo "gen_proto.sh: '$protoc' not found; install protoc 3.21" \
         "(Debian bookworm: apt-get install protobuf-compiler)" >&2
    exit 1
fi
version=$("$protoc" --version)
case "$version" in
    "libprotoc 3.21."*) ;;
    *)
        echo "gen_proto.sh: need protoc 3.21.x, '$protoc' is '$version'" >&2
        echo "  (newer protoc writes code that older protobuf runtimes refuse)" >&2
        exit 1
        ;;
esac

mkdir -p "$out"
"$protoc" --proto_path="$root/proto" --python_out="$out" "$root/proto/caffe.proto"
echo "wrote $out/caffe_pb2.py ($version)"
