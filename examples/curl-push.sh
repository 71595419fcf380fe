#!/usr/bin/env bash
# curl-push.sh: push ONE store path to a ferry cache with nothing but curl.
#
# Usage: curl-push.sh SERVER_URL CACHE TOKEN STORE_PATH [PART_SIZE] [COMPRESSION]
#   SERVER_URL   e.g. https://cache.example.org (no trailing slash)
#   CACHE        cache name, e.g. main
#   TOKEN        a ferry token with the push right on CACHE (and pull, to
#                see the narinfo at the end)
#   STORE_PATH   /nix/store/<hash>-<name>, valid in the local store
#   PART_SIZE    split(1) size, default 64M (keep it under your proxy's
#                body limit: Cloudflare allows 100 MB per request)
#   COMPRESSION  zstd (default) or none
#
# It pushes the path only, not its closure: push its references first, so
# a substituter never finds a path whose references are missing.
# Needs: bash, curl, nix-store, split, zstd, sha256sum, python3 (hex to
# base64 for Content-Digest). Every request and every response is printed.
set -euo pipefail

if [ $# -lt 4 ]; then
    sed -n '2,17p' "$0" >&2
    exit 2
fi
SERVER=${1%/}
CACHE=$2
TOKEN=$3
STORE_PATH=$4
PART_SIZE=${5:-64M}
COMPRESSION=${6:-zstd}
case $COMPRESSION in zstd | none) ;; *) echo "COMPRESSION must be zstd or none" >&2; exit 2 ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One API call: prints the request, then the status and JSON answer.
# Sets $status and $body.
api() {
    local method=$1 url=$2 shown=$3
    shift 3
    echo "> $method $url${shown:+ $shown}"
    status=$(curl -sS -X "$method" -H "Authorization: Bearer $TOKEN" \
        -o "$work/response" -w '%{http_code}' "$@" "$url")
    body=$(cat "$work/response")
    echo "< $status $body"
}

# The value of a string field in a flat JSON object.
json_str() { printf '%s' "$body" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }

echo "== $STORE_PATH"
nar_hash=$(nix-store --query --hash "$STORE_PATH")
nar_size=$(nix-store --query --size "$STORE_PATH")
deriver=$(nix-store --query --deriver "$STORE_PATH")
refs=""
for r in $(nix-store --query --references "$STORE_PATH"); do
    refs="$refs${refs:+,}\"$r\""
done
echo "   NarHash $nar_hash, NarSize $nar_size, $(nix-store --query --references "$STORE_PATH" | wc -l) references"

# 1. Is it missing?
api POST "$SERVER/_api/v1/caches/$CACHE/missing" "{\"store_paths\":[\"$STORE_PATH\"]}" \
    -H 'Content-Type: application/json' \
    --data-binary "{\"store_paths\":[\"$STORE_PATH\"]}"
[ "$status" = 200 ] || exit 1
if [ "$body" = '{"missing":[]}' ]; then
    echo "== already in $CACHE"
    exit 0
fi

# 2. The NAR, compressed or not, in parts.
if [ "$COMPRESSION" = zstd ]; then
    nix-store --dump "$STORE_PATH" | zstd -q -T0 -o "$work/nar"
else
    nix-store --dump "$STORE_PATH" > "$work/nar"
fi
(cd "$work" && split -b "$PART_SIZE" -d -a 4 nar part.)
parts=("$work"/part.*)
echo "   $(stat -c %s "$work/nar") bytes to send ($COMPRESSION) in ${#parts[@]} part(s) of at most $PART_SIZE"

# 3. Create the upload.
meta="{\"store_path\":\"$STORE_PATH\",\"nar_hash\":\"$nar_hash\",\"nar_size\":$nar_size,\"references\":[$refs],\"compression\":\"$COMPRESSION\""
if [ "$deriver" != unknown-deriver ]; then meta="$meta,\"deriver\":\"$deriver\""; fi
meta="$meta}"
api POST "$SERVER/_api/v1/caches/$CACHE/uploads" "$meta" \
    -H 'Content-Type: application/json' --data-binary "$meta"
case $status in
200) echo "== committed without upload (the server already had this NAR)"; exit 0 ;;
201) ;;
*) exit 1 ;;
esac
id=$(json_str id)

# 4. One PUT per part, each with its SHA-256 in Content-Digest.
n=0
for part in "${parts[@]}"; do
    n=$((n + 1))
    hex=$(sha256sum "$part" | cut -d' ' -f1)
    digest=$(python3 -c 'import base64,sys; print(base64.b64encode(bytes.fromhex(sys.argv[1])).decode())' "$hex")
    api PUT "$SERVER/_api/v1/uploads/$id/parts/$n" "($(stat -c %s "$part") bytes, Content-Digest: sha-256=:$digest:)" \
        -H "Content-Digest: sha-256=:$digest:" -T "$part"
    [ "$status" = 200 ] || exit 1
done

# 5. Complete: the server joins, decompresses and checks NarHash/NarSize.
api POST "$SERVER/_api/v1/uploads/$id/complete" "{\"parts\":$n}" \
    -H 'Content-Type: application/json' --data-binary "{\"parts\":$n}"
while [ "$status" = 202 ]; do
    sleep 2
    api GET "$SERVER/_api/v1/uploads/$id" ""
    case $(json_str state) in
    committed) status=200 ;;
    verifying) status=202 ;;
    *) exit 1 ;;
    esac
done
[ "$status" = 200 ] || exit 1

echo "== pushed $STORE_PATH"

# 6. What a substituter now sees (needs the pull right too; informative only).
hash=$(basename "$STORE_PATH" | cut -c1-32)
echo "> GET $SERVER/$CACHE/$hash.narinfo"
status=$(curl -sS -H "Authorization: Bearer $TOKEN" -o "$work/response" -w '%{http_code}' \
    "$SERVER/$CACHE/$hash.narinfo")
echo "< $status"
sed 's/^/  /' "$work/response"
echo
