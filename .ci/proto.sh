#!/usr/bin/env bash
# Regenerates proto/usage/v1/usage.pb.go from proto/usage/v1/usage.proto with
# protoc (Debian's protobuf-compiler) and protoc-gen-go at a pinned version.
set -euo pipefail
# shellcheck source=.ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_cmd protoc protobuf-compiler
# google/protobuf/timestamp.proto and the other well-known types.
[[ -f /usr/include/google/protobuf/timestamp.proto ]] || apt_ensure libprotobuf-dev
gen=$(go_tool protoc-gen-go google.golang.org/protobuf google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION")

mapfile -t files < <(cd proto && find . -name '*.proto' | sed 's|^\./||' | sort)
log "protoc ${files[*]} ($(protoc --version), protoc-gen-go $PROTOC_GEN_GO_VERSION)"
(cd proto && protoc --plugin=protoc-gen-go="$gen" -I . -I /usr/include \
	--go_out=. --go_opt=paths=source_relative "${files[@]}")
