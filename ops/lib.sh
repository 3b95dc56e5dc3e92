# Shared helpers for the ops/ scripts. Sourced, not run.
set -euo pipefail

CUSTOS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Everything the local services write lives here (git-ignored).
CUSTOS_STATE_DIR="${CUSTOS_STATE_DIR:-$CUSTOS_ROOT/.custos}"
CUSTOS_ENV_FILE="$CUSTOS_STATE_DIR/services.env"

say() { printf '%s\n' "custos-ops: $*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi
}

# A TCP port on loopback that nothing listens on right now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Wait until something accepts on 127.0.0.1:$1, at most $2 seconds.
wait_port() {
  local port=$1 limit=${2:-30} i=0
  while ! python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null; do
    i=$((i+1)); [ "$i" -gt $((limit*4)) ] && return 1; sleep 0.25
  done
}
