#!/bin/sh
# A Nix post-build-hook that queues every path Nix builds for ferry.
#
# Nix runs the hook after each build and waits for it, so it only appends
# to a queue (never talks to the network); a separate job drains the queue
# with `ferry push --stdin`:
#
#   nix.conf:   post-build-hook = /etc/nix/ferry-post-build-hook.sh
#   drain:      examples/ci/post-build-hook.sh --drain home:main
#               (from a timer, or in a loop; `ferry watch-store home:main`
#               is the alternative that needs no hook at all)
#
# FERRY_QUEUE names the queue file (default /var/lib/ferry-queue/paths).
set -eu
queue=${FERRY_QUEUE:-/var/lib/ferry-queue/paths}

if [ "${1:-}" = "--drain" ]; then
    target=${2:?usage: $0 --drain NAME:CACHE}
    [ -s "$queue" ] || exit 0
    # Take the queue as it is now; paths queued meanwhile wait for the next
    # drain. A failed push puts its paths back.
    sending="$queue.sending.$$"
    mv "$queue" "$sending"
    if ferry push "$target" --stdin < "$sending"; then
        rm -f "$sending"
    else
        cat "$sending" >> "$queue"
        rm -f "$sending"
        exit 1
    fi
    exit 0
fi

mkdir -p "$(dirname "$queue")"
# OUT_PATHS is set by Nix: the built outputs, space-separated.
for p in ${OUT_PATHS:-}; do
    printf '%s\n' "$p" >> "$queue"
done
