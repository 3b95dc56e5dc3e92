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

# The broker's key and a demo PKI in folder $1 (made once, kept afterwards): the provider's CA
# and signing certificate (common name demo-telco), a TSA for the broker's built-in RFC 3161
# service, the custody log's signing certificate and an outside witness's certificate. Real
# deployments bring their own. Needs custos-broker on PATH.
demo_pki() {
  local dir=$1
  mkdir -p "$dir"
  ( cd "$dir"
  [ -f broker.key ] || custos-broker keys generate --private-key broker.key --public-key broker.pub >/dev/null
  # The chunk store's AES-256 key (kept: the demo's stored packages are encrypted under it).
  [ -f storage.key ] || custos-broker storage-key --out storage.key >/dev/null
  # A demo PKI: the provider's CA and signing certificate (common name = provider id), and a
  # TSA for the broker's built-in RFC 3161 service. Real deployments bring their own.
  if [ ! -f provider.pem ]; then
    custos-broker pki ca --name "Demo Telco CA" --key-out provider-ca.key --certificate-out provider-ca.pem >/dev/null
    custos-broker pki issue --name demo-telco --organization "Demo Telco" --role signer --ca-certificate provider-ca.pem \
      --ca-key provider-ca.key --key-out provider.key --certificate-out provider.pem >/dev/null
    custos-broker pki ca --name "Demo TSA CA" --key-out tsa-ca.key --certificate-out tsa-ca.pem >/dev/null
    custos-broker pki issue --name "Demo TSA" --role tsa --ca-certificate tsa-ca.pem --ca-key tsa-ca.key \
      --key-out tsa.key --certificate-out tsa.pem >/dev/null
  fi
  # The custody log's signing certificate (checkpoints), and an outside witness's certificate.
  if [ ! -f custody.pem ]; then
    custos-broker pki ca --name "Demo Custody CA" --key-out custody-ca.key --certificate-out custody-ca.pem >/dev/null
    custos-broker pki issue --name "Demo Custody Log" --role signer --ca-certificate custody-ca.pem --ca-key custody-ca.key \
      --key-out custody.key --certificate-out custody.pem >/dev/null
    custos-broker pki ca --name "Demo Procuracy Witness" --key-out witness.key --certificate-out witness.pem >/dev/null
  fi
  )
}

# A synthetic one-page PDF decision (demo data only) written to $1.
synthetic_decision() {
  python3 - "$1" <<'PY'
import sys
text = "Synthetic decision QD-0001/2026 - demo data only"
stream = "BT /F1 12 Tf 72 720 Td (%s) Tj ET" % text
objs = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        "<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream), "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
out, offsets = "%PDF-1.4\n", []
for i, o in enumerate(objs):
    offsets.append(len(out)); out += "%d 0 obj\n%s\nendobj\n" % (i + 1, o)
xref = len(out)
out += "xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1) + "".join("%010d 00000 n \n" % o for o in offsets)
out += "trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
open(sys.argv[1], "w").write(out)
PY
}
