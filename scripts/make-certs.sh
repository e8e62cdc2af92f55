#!/usr/bin/env bash
# Credentials for a local (or test) Flower deployment of fedctx; never commit what this writes.
#
#   scripts/make-certs.sh OUTDIR [NUM_SUPERNODES]     (NUM_SUPERNODES defaults to 3)
#
# OUTDIR/ca.crt, ca.key          a local certificate authority (SuperNodes and `flwr` trust ca.crt)
# OUTDIR/server.pem, server.key  the SuperLink's TLS certificate, signed by the CA, valid for
#                                localhost and 127.0.0.1 plus the names in SERVER_SAN
# OUTDIR/supernode-<k>, .pub     SuperNode k's ECDSA P-384 key pair (k = 0 .. NUM_SUPERNODES-1), made with
#                                `ssh-keygen -t ecdsa -b 384 -N ""` as Flower's SuperNode authentication wants;
#                                register the .pub with `flwr supernode register`, give the private key to
#                                `flower-supernode --auth-supernode-private-key`
#
# Environment: SERVER_SAN   extra subjectAltName entries for the SuperLink, comma separated, e.g.
#                           SERVER_SAN="DNS:link.example.org,IP:10.0.0.5" for SuperNodes on other machines
#              DAYS         validity of the CA and the server certificate (default 365)
#
# Files that already exist are kept (the CA too), so running it again with a larger NUM_SUPERNODES only adds
# key pairs. Delete OUTDIR to start over. For development and tests: a production CA lives elsewhere.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR [NUM_SUPERNODES]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage
OUT="$1"
N="${2:-3}"
[[ "$N" =~ ^[0-9]+$ ]] || { echo "NUM_SUPERNODES must be a whole number >= 0, got '$N'" >&2; exit 2; }
DAYS="${DAYS:-365}"
SAN="DNS:localhost,IP:127.0.0.1${SERVER_SAN:+,$SERVER_SAN}"

for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "$tool is needed (install openssl / openssh-client)" >&2; exit 1; }
done

umask 077  # private keys readable by their owner only
mkdir -p "$OUT"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cat > "$tmp/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
O = fedctx local deployment
CN = localhost
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $SAN
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF

if [[ ! -f "$OUT/ca.crt" || ! -f "$OUT/ca.key" ]]; then
    openssl req -x509 -new -newkey rsa:3072 -nodes -sha256 -days "$DAYS" \
        -keyout "$OUT/ca.key" -out "$OUT/ca.crt" \
        -config "$tmp/openssl.cnf" -extensions ca_ext -subj "/O=fedctx local deployment/CN=fedctx local CA" \
        2>/dev/null
    rm -f "$OUT/server.pem"  # a new CA: the server certificate is signed again
    echo "CA: $OUT/ca.crt"
fi

if [[ ! -f "$OUT/server.pem" || ! -f "$OUT/server.key" ]]; then
    openssl req -new -newkey rsa:3072 -nodes -sha256 -keyout "$OUT/server.key" -out "$tmp/server.csr" \
        -config "$tmp/openssl.cnf" 2>/dev/null
    openssl x509 -req -in "$tmp/server.csr" -CA "$OUT/ca.crt" -CAkey "$OUT/ca.key" -CAcreateserial \
        -CAserial "$tmp/ca.srl" -out "$OUT/server.pem" -days "$DAYS" -sha256 \
        -extfile "$tmp/openssl.cnf" -extensions server_ext 2>/dev/null
    openssl verify -CAfile "$OUT/ca.crt" "$OUT/server.pem" >/dev/null
    echo "SuperLink certificate: $OUT/server.pem ($SAN)"
fi

for ((k = 0; k < N; k++)); do
    key="$OUT/supernode-$k"
    if [[ ! -f "$key" || ! -f "$key.pub" ]]; then
        rm -f "$key" "$key.pub"
        ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedctx-supernode-$k" -f "$key"
        echo "SuperNode $k key pair: $key (private), $key.pub (register it)"
    fi
done
chmod 644 "$OUT/ca.crt" "$OUT/server.pem" "$OUT"/supernode-*.pub 2>/dev/null || true
