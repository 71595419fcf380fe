# Shared by the client side of the NixOS module (services.ferry.client) and
# the home-manager module (programs.ferry). Everything but `serverType` uses
# builtins only, so tests/nix/check.sh evaluates it with a bare
# nix-instantiate (no nixpkgs on the test machine).
let
  inherit (builtins)
    concatStringsSep
    elemAt
    filter
    head
    length
    match
    replaceStrings
    split
    ;

  lastOf = l: elemAt l (length l - 1);

  # One shell word.
  shellQuote = s: "'" + replaceStrings [ "'" ] [ "'\\''" ] s + "'";

  # "https://cache.example.org/" -> "https://cache.example.org"
  stripSlashes =
    url:
    let
      m = match "(.*[^/])/*" url;
    in
    if m == null then url else head m;

  # The host a netrc `machine` line names for a server URL: no scheme,
  # credentials, port or path, IPv6 without its brackets. The same as
  # `ferry use` (host_of in src/client/nixconf.rs).
  hostOf =
    url:
    let
      m = match "[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)([/?#].*)?" url;
      authority = if m == null then throw "ferry: ${url} is not a URL" else head m;
      hostPort = lastOf (split "@" authority);
      v6 = match "\\[([^]]*).*" hostPort;
      plain = match "([^:]*).*" hostPort;
      host = if v6 != null then head v6 else head plain;
    in
    if host == "" then throw "ferry: ${url} names no host" else host;

  # The substituter URL of one cache: what `ferry use` writes, plus Nix's
  # `?priority=` store parameter when one is given.
  substituterOf =
    {
      url,
      cache,
      priority ? null,
    }:
    stripSlashes url
    + "/"
    + cache
    + (if priority == null then "" else "?priority=${toString priority}");

  validServerName = name: match "[A-Za-z0-9._-]{1,64}" name != null;

  isAbsolute = p: match "/.*" p != null;
  inStore = p: match "${builtins.storeDir}/.*" p != null;
in
{
  inherit
    hostOf
    shellQuote
    stripSlashes
    substituterOf
    validServerName
    ;

  # servers (an attrset, as the `servers` option holds it) -> a list of
  # { name, url, tokenFile, caches } and the list of caches, each
  # { server, url, cache, publicKey, priority, substituter }.
  serverList = servers: map (name: servers.${name} // { inherit name; }) (builtins.attrNames servers);
  cacheList =
    servers:
    builtins.concatMap (
      name:
      let
        s = servers.${name};
      in
      map (
        cache:
        let
          c = s.caches.${cache};
        in
        {
          server = name;
          inherit (s) url;
          inherit cache;
          inherit (c) publicKey priority;
          substituter = substituterOf {
            inherit (s) url;
            inherit cache;
            inherit (c) priority;
          };
        }
      ) (builtins.attrNames s.caches)
    ) (builtins.attrNames servers);

  # The module system's `assertions` for the options both modules share.
  # `prefix` is the option path, for the messages.
  assertions =
    {
      prefix,
      servers,
      netrcFile,
      extraNetrcFiles,
    }:
    let
      names = builtins.attrNames servers;
      withToken = filter (n: servers.${n}.tokenFile != null) names;
      hosts = map (n: hostOf servers.${n}.url) withToken;
      dupHosts = builtins.foldl' (acc: h: if builtins.elem h acc then acc else acc ++ [ h ]) [ ] (
        filter (h: length (filter (x: x == h) hosts) > 1) hosts
      );
      secretPath =
        what: p:
        {
          assertion = isAbsolute p && !inStore p;
          message = "${what} must be an absolute path outside the Nix store (got ${p}): write it as a string, e.g. config.age.secrets.ferry-token.path, never as a Nix path literal (that copies the file into the world-readable store)";
        };
    in
    [
      (secretPath "${prefix}.netrcFile" netrcFile)
    ]
    ++ map (secretPath "${prefix}.extraNetrcFiles") extraNetrcFiles
    ++ map (n: {
      assertion = validServerName n;
      message = "${prefix}.servers.${n}: a server name may only hold letters, digits, '.', '_' and '-' (at most 64), as for `ferry login`";
    }) names
    ++ map (n: secretPath "${prefix}.servers.${n}.tokenFile" servers.${n}.tokenFile) withToken
    ++ [
      {
        assertion = dupHosts == [ ];
        message = "${prefix}.servers: servers with a token file share a host (${concatStringsSep ", " dupHosts}); a netrc holds one password per host";
      }
    ];

  # Bash that writes `netrcFile` atomically, mode 0600: one line
  # `machine HOST login token password TOKEN` per server with a token file,
  # then the `extraNetrcFiles` as they are. No network: only local files are
  # read. Tokens are read and printed by bash builtins, so they never appear
  # on a command line, and never in the Nix store (only their paths are in
  # this script). A token file that is missing, unreadable or empty is
  # reported on stderr and its server left out; the rest is still written.
  # `epilogue` runs after the write (it may call `report`); then the script
  # exits 1 if anything was reported and `failOnMissing`, else 0.
  netrcScript =
    {
      servers,
      netrcFile,
      extraNetrcFiles ? [ ],
      failOnMissing,
      epilogue ? "",
    }:
    let
      q = shellQuote;
      names = filter (n: servers.${n}.tokenFile != null) (builtins.attrNames servers);
      addToken =
        n: "add_token ${q n} ${q (hostOf servers.${n}.url)} ${q servers.${n}.tokenFile}";
      addFile = f: "add_file ${q f}";
    in
    ''
      set -eu
      umask 077
      netrc=${q netrcFile}
      dir=''${netrc%/*}
      dir=''${dir:-/}
      mkdir -p -- "$dir"
      tmp=$(mktemp -- "$dir/.ferry-netrc.XXXXXX")
      trap 'rm -f -- "$tmp"' EXIT
      missing=0
      report() {
        echo "ferry: $*" >&2
        missing=1
      }
      add_token() {
        local name=$1 host=$2 file=$3 token
        if [ ! -r "$file" ] || [ -d "$file" ]; then
          report "token file $file of server $name is missing or unreadable: $host left out of $netrc"
          return 0
        fi
        token=$(< "$file")
        token=''${token//[[:space:]]/}
        if [ -z "$token" ]; then
          report "token file $file of server $name is empty: $host left out of $netrc"
          return 0
        fi
        printf 'machine %s login token password %s\n' "$host" "$token" >> "$tmp"
      }
      add_file() {
        if [ ! -r "$1" ] || [ -d "$1" ]; then
          report "netrc file $1 is missing or unreadable: left out of $netrc"
          return 0
        fi
        cat -- "$1" >> "$tmp"
        # a last line without its newline must not run into the next entry
        if [ -n "$(tail -c 1 -- "$1")" ]; then echo >> "$tmp"; fi
      }
      ${concatStringsSep "\n" (map addToken names ++ map addFile extraNetrcFiles)}
      chmod 600 -- "$tmp"
      mv -f -- "$tmp" "$netrc"
      trap - EXIT
      ${epilogue}
      ${if failOnMissing then ''exit "$missing"'' else "exit 0"}
    '';

  # The `servers` option's element type (needs nixpkgs' lib).
  serverType =
    lib:
    let
      inherit (lib) mkOption types literalExpression;
    in
    types.submodule {
      options = {
        url = mkOption {
          type = types.strMatching "https?://[^/?#]+.*";
          example = "https://cache.example.org";
          description = "The server's base URL (what `ferry login` takes).";
        };

        tokenFile = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/run/agenix/ferry-token";
          description = ''
            A file holding a token for this server (from agenix, sops-nix,
            or written by hand with mode 0600). Only its path goes into the
            configuration; the token is read when the netrc is written and
            never enters the Nix store. A string, not a Nix path: a path
            literal would be copied into the store. It needs the `pull`
            right on the caches below (and `push` for `ferry watch-store`).
            null: no netrc line (public caches only).
          '';
        };

        caches = mkOption {
          default = { };
          description = ''
            Caches of this server to substitute from, by name. Each becomes
            the substituter `URL/NAME`; its public key is what
            `ferry cache info SERVER:NAME` prints.
          '';
          example = literalExpression ''
            { main.publicKey = "main-1:/Bx+IrQQLUVKBA9f7Z98hbVC+/W0J7Lfvzq6H2nMRuc="; }
          '';
          type = types.attrsOf (
            types.submodule {
              options = {
                publicKey = mkOption {
                  type = types.strMatching "[^:]+:.+";
                  example = "main-1:/Bx+IrQQLUVKBA9f7Z98hbVC+/W0J7Lfvzq6H2nMRuc=";
                  description = "The cache's signing key, `NAME:BASE64` (trusted-public-keys).";
                };
                priority = mkOption {
                  type = types.nullOr types.ints.unsigned;
                  default = null;
                  example = 30;
                  description = ''
                    Substituter priority (lower is tried first; cache.nixos.org
                    is 40). null: the one the cache announces (41 unless
                    configured).
                  '';
                };
              };
            }
          );
        };
      };
    };
}
