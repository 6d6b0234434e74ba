#!/usr/bin/env bash
# Builds the container image `raftmq:latest` from the raftmq binary alone: no base image is
# pulled (there may be no registry). The image holds the binary, the shared libraries that
# `ldd` lists for it, and an empty /data and /tmp. Entry point: `raftmq`; default command:
# `serve` with its defaults (data in /data/raftmq-data; HTTP on 0.0.0.0:15672).
# Usage: deploy/image.sh [path/to/raftmq] [tag]
set -euo pipefail
BIN="$(realpath "${1:-target/release/raftmq}")"
TAG="${2:-raftmq:latest}"
[ -x "$BIN" ] || { echo "no raftmq binary at $BIN (cargo build --release)" >&2; exit 2; }
ROOT="$(mktemp -d)"
trap 'rm -rf "$ROOT"' EXIT

install -D -m 0755 "$BIN" "$ROOT/usr/local/bin/raftmq"
# Every library the binary links, at the path the loader looks for it, and the loader itself.
for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
  install -D -m 0755 "$(realpath "$lib")" "$ROOT$lib"
done
mkdir -p "$ROOT/data" "$ROOT/tmp" "$ROOT/etc"
chmod 1777 "$ROOT/tmp"
echo 'root:x:0:0:root:/:/usr/local/bin/raftmq' > "$ROOT/etc/passwd"
printf '127.0.0.1 localhost\n' > "$ROOT/etc/hosts"

tar -C "$ROOT" -c . | docker import \
  --change 'ENTRYPOINT ["/usr/local/bin/raftmq"]' \
  --change 'CMD ["serve"]' \
  --change 'ENV RAFTMQ_HTTP_LISTEN=0.0.0.0:15672' \
  --change 'EXPOSE 5672 15672 7000' \
  --change 'WORKDIR /data' \
  - "$TAG" >/dev/null
echo "built $TAG from $BIN ($(docker image inspect -f '{{.Size}}' "$TAG") bytes)"
