#!/usr/bin/env bash
# Checks the Nix files in deploy/ as far as a machine without nixpkgs or
# home-manager allows (tests/nix_modules.rs runs it; it also runs alone):
#
# 1. every .nix file in the repository parses (nix-instantiate --parse);
# 2. tests/nix/eval.nix evaluates both modules against stand-ins for lib and
#    pkgs (see the comment there for what that does and does not check);
# 3. the netrc scripts the modules generate run as they would at activation
#    and at boot, on token files made here: the netrc's lines and mode, a
#    missing token left out (the NixOS unit fails, home-manager goes on),
#    and `ferry login` run for each server with a token file.
#
# FERRY_BIN: a ferry binary for step 3's `ferry login` (its saved config is
# then checked); without it a stand-in records the arguments.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
: "${NIX_CONFIG:=$'build-users-group =\nsandbox = false\nexperimental-features = nix-command\nsubstituters ='}"
export NIX_CONFIG

fail() {
    echo "tests/nix/check.sh: $*" >&2
    exit 1
}

# 1. parse
while IFS= read -r -d '' f; do
    nix-instantiate --parse "$f" >/dev/null || fail "$f does not parse"
    echo "parsed ${f#"$root"/}"
done < <(find "$root" -name '*.nix' -not -path '*/target/*' -not -path '*/node_modules/*' -print0)

# 2. evaluate
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/ferry-pkg/bin"
if [ -n "${FERRY_BIN:-}" ]; then
    ln -s "$FERRY_BIN" "$tmp/ferry-pkg/bin/ferry"
else
    cat >"$tmp/ferry-pkg/bin/ferry" <<EOF
#!/usr/bin/env bash
echo "\$*" >> '$tmp/ferry-calls'
EOF
    chmod +x "$tmp/ferry-pkg/bin/ferry"
fi

out=$(nix-instantiate --read-write-mode --eval --strict --json "$root/tests/nix/eval.nix" \
    --argstr tmp "$tmp" --argstr ferryPackage "$tmp/ferry-pkg") || fail "tests/nix/eval.nix failed to evaluate"
field() { python3 -c 'import json,sys; v=json.load(sys.stdin)[sys.argv[1]]; print(v if isinstance(v,str) else "\n".join(v))' "$1" <<<"$out"; }
failed=$(field failed)
passed=$(field passed)
[ -z "$failed" ] || fail "module checks failed: $(echo "$failed" | tr '\n' ' ')"
echo "module evaluation: $(echo "$passed" | wc -l) checks passed"
hm_script=$(field hmScript)
nixos_script=$(field nixosScript)
for s in "$hm_script" "$nixos_script"; do
    bash -n "$s" || fail "$s: bash syntax error"
done

# 3. run the generated scripts
printf 'tok-home\n' >"$tmp/home-token"
printf 'machine other.example login x password y' >"$tmp/extra.netrc" # no final newline
expect_netrc() { # file, expected content
    [ "$(cat "$1")" = "$2" ] || fail "$1 holds:
$(cat "$1")
expected:
$2"
    [ "$(stat -c %a "$1")" = 600 ] || fail "$1 has mode $(stat -c %a "$1"), not 600"
    [ -z "$(find "$(dirname "$1")" -name '.ferry-netrc.*')" ] || fail "a temporary file is left beside $1"
}
grep -q tok-home "$hm_script" "$nixos_script" && fail "a token is in a generated script"

# home-manager activation: lan's token is missing -> warned about, left out,
# activation goes on (exit 0); ferry login for home only.
export HOME="$tmp/home" XDG_CONFIG_HOME="$tmp/xdg"
mkdir -p "$HOME"
bash "$hm_script" 2>"$tmp/hm.err" || fail "home-manager activation script failed: $(cat "$tmp/hm.err")"
grep -q "token file $tmp/lan-token of server lan is missing" "$tmp/hm.err" || fail "no warning for the missing token: $(cat "$tmp/hm.err")"
expect_netrc "$tmp/hm/ferry/netrc" "machine cache.example.org login token password tok-home
machine other.example login x password y"
if [ -n "${FERRY_BIN:-}" ]; then
    conf="$XDG_CONFIG_HOME/ferry/config.toml"
    [ "$(stat -c %a "$conf")" = 600 ] || fail "$conf is not 0600"
    python3 - "$conf" <<'EOF' || fail "ferry login did not save the server: $(cat "$conf")"
import sys, tomllib
c = tomllib.load(open(sys.argv[1], "rb"))
assert c["default-server"] == "home", c
assert c["servers"]["home"]["url"] == "https://cache.example.org", c
assert c["servers"]["home"]["token"] == "tok-home", c
assert "lan" not in c["servers"], c
EOF
else
    [ "$(cat "$tmp/ferry-calls")" = "login home https://cache.example.org/ --token-file $tmp/home-token --set-default" ] \
        || fail "ferry login calls: $(cat "$tmp/ferry-calls")"
fi

# NixOS unit: the same, but a missing token fails the unit (exit 1) after
# writing the rest; with the token there it succeeds; a rerun changes nothing.
set +e
bash "$nixos_script" 2>"$tmp/nixos.err"
status=$?
set -e
[ "$status" = 1 ] || fail "the NixOS netrc script exited $status with a token missing, not 1"
expect_netrc "$tmp/nixos/netrc" "machine cache.example.org login token password tok-home"
printf '  tok-lan \n\n' >"$tmp/lan-token"
bash "$nixos_script" || fail "the NixOS netrc script failed with every token there"
want="machine cache.example.org login token password tok-home
machine fd00::1 login token password tok-lan"
expect_netrc "$tmp/nixos/netrc" "$want"
bash "$nixos_script" || fail "the NixOS netrc script failed on a rerun"
expect_netrc "$tmp/nixos/netrc" "$want"
: >"$tmp/lan-token"
set +e
bash "$nixos_script" 2>"$tmp/nixos.err"
status=$?
set -e
[ "$status" = 1 ] && grep -q "lan-token of server lan is empty" "$tmp/nixos.err" \
    || fail "an empty token file was not reported (exit $status): $(cat "$tmp/nixos.err")"

echo "generated netrc scripts: ok"
