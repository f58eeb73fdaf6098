#!/bin/sh
# The farm proxy's start: check the token, find or make the TLS certificate, then run the command
# (the nginx image's own entrypoint, which renders nginx.conf.template and starts nginx).
#
#   COMFY_PROXY_TOKEN       bearer token every request must carry (16+ letters, digits, _ or -)
#   COMFY_PROXY_TLS_DIR     folder holding tls.crt (the chain, leaf first) and tls.key; default
#                           /etc/comfy-proxy/tls. Neither there: a self-signed pair is made.
#   COMFY_PROXY_HOSTNAMES   names and addresses clients use, for a self-signed certificate;
#                           comma-separated, default localhost,127.0.0.1
#   COMFY_PROXY_PLAIN_HTTP  1 to serve plain HTTP on port 8080 as well (default 0: HTTPS only)
set -eu

die() {
    echo "proxy: $*" >&2
    exit 1
}

token=${COMFY_PROXY_TOKEN:-}
case $token in
    '' | *[!A-Za-z0-9_-]*) die "set COMFY_PROXY_TOKEN (letters, digits, _ and - only)" ;;
esac
[ "${#token}" -ge 16 ] || die "COMFY_PROXY_TOKEN needs 16 or more characters"

case ${COMFY_PROXY_PLAIN_HTTP:-0} in
    0 | '') COMFY_PROXY_PLAIN_LISTEN="" ;;
    1)
        COMFY_PROXY_PLAIN_LISTEN="listen 8080;"
        echo "proxy: WARNING: plain HTTP is on (port 8080): tokens, prompts and pictures cross the network in clear" >&2
        ;;
    *) die "COMFY_PROXY_PLAIN_HTTP must be 0 or 1, not '${COMFY_PROXY_PLAIN_HTTP}'" ;;
esac

tls_dir=${COMFY_PROXY_TLS_DIR:-/etc/comfy-proxy/tls}
cert=$tls_dir/tls.crt
key=$tls_dir/tls.key

# subjectAltName entries for the names in COMFY_PROXY_HOSTNAMES: IP:... for addresses, DNS:... for names.
alt_names() {
    names=""
    old_ifs=$IFS
    IFS=,
    for name in ${COMFY_PROXY_HOSTNAMES:-localhost,127.0.0.1}; do
        name=$(echo "$name" | tr -d ' ')
        [ -n "$name" ] || continue
        case $name in
            *[!A-Za-z0-9.:*-]*) die "COMFY_PROXY_HOSTNAMES: '$name' is not a host name or an IP address" ;;
            *:*) kind=IP ;;
            *[!0-9.]*) kind=DNS ;;
            *) kind=IP ;;
        esac
        names="${names:+$names,}$kind:$name"
    done
    IFS=$old_ifs
    [ -n "$names" ] || die "COMFY_PROXY_HOSTNAMES names no host"
    echo "$names"
}

make_self_signed() {
    names=$(alt_names)
    config=$(mktemp)
    cat >"$config" <<EOF
[req]
distinguished_name = dn
x509_extensions = ext
prompt = no
[dn]
CN = comfy-farm proxy (self-signed)
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
subjectAltName = $names
EOF
    mkdir -p "$tls_dir"
    # The key is readable by its owner only, from the moment it exists.
    (umask 077 && openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days "${COMFY_PROXY_CERT_DAYS:-825}" -config "$config" -keyout "$key.new" -out "$cert.new" 2>/dev/null) \
        || { rm -f "$config" "$key.new" "$cert.new"; die "openssl could not make a certificate in $tls_dir"; }
    rm -f "$config"
    chmod 644 "$cert.new"
    mv "$key.new" "$key"
    mv "$cert.new" "$cert"
    echo "proxy: made a self-signed certificate for $names in $tls_dir" \
        "(set COMFY_PROXY_HOSTNAMES to the names clients use; delete tls.crt and tls.key for a new one)"
}

if [ -f "$cert" ] && [ -f "$key" ]; then
    echo "proxy: serving HTTPS with $cert"
elif [ -e "$cert" ] || [ -e "$key" ]; then
    die "$tls_dir holds only one of tls.crt and tls.key: give both, or neither for a self-signed pair"
else
    make_self_signed
fi

openssl x509 -in "$cert" -noout >/dev/null 2>&1 || die "$cert is not a PEM certificate"
openssl pkey -in "$key" -noout >/dev/null 2>&1 || die "$key is not a PEM private key without a passphrase"
[ "$(openssl x509 -in "$cert" -noout -pubkey)" = "$(openssl pkey -in "$key" -pubout)" ] \
    || die "$key is not the key of $cert"
until=$(openssl x509 -in "$cert" -noout -enddate | sed 's/^notAfter=//')
openssl x509 -in "$cert" -noout -checkend 0 >/dev/null \
    || die "$cert expired on $until: put a new one there (or delete tls.crt and tls.key for a self-signed pair)"
fingerprint=$(openssl x509 -in "$cert" -noout -fingerprint -sha256 | sed 's/^.*=//')
names=$(openssl x509 -in "$cert" -noout -ext subjectAltName 2>/dev/null | sed -n '2,$p' | tr -d ' ')
echo "proxy: certificate for ${names:-no subjectAltName}, valid until $until"
echo "proxy: certificate SHA-256 fingerprint $fingerprint"

export COMFY_PROXY_TLS_DIR="$tls_dir" COMFY_PROXY_PLAIN_LISTEN
exec "$@"
