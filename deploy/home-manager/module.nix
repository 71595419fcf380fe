# home-manager module for ferry's client: `programs.ferry`.
#
#   imports = [ ferry.homeManagerModules.default ];   # from this repository's flake
#   programs.ferry = {
#     enable = true;
#     servers.home = {
#       url = "https://cache.example.org";
#       tokenFile = "/run/user/1000/agenix/ferry-token";   # a string, never a ./path
#       caches.main.publicKey = "main-1:...";   # `ferry cache info home:main` prints it
#     };
#     watchStore = { enable = true; target = "home:main"; };   # optional
#   };
#
# At activation, offline: writes `netrcFile` (0600) from the token files,
# one `machine HOST login token password TOKEN` line per server, and runs
# `ferry login NAME URL --token-file FILE` for each, so `ferry push` and
# `ferry watch-store` find the server in ~/.config/ferry/config.toml. A
# missing token file is a warning, not a failed activation: that server is
# left out until the next activation finds its file.
#
# Nix settings go through home-manager's `nix.settings` (extra-substituters,
# extra-trusted-public-keys, netrc-file), which owns ~/.config/nix/nix.conf
# (move an existing one, e.g. from `ferry use`, out of the way first) and
# needs `nix.package`: set to pkgs.nix with mkDefault here (inside NixOS,
# home-manager sets it to the system's). `configureNix = false` leaves
# nix.conf alone.
#
# Who this suits: single-user Nix, or a user in the daemon's trusted-users.
# On multi-user Nix (every NixOS machine) the nix-daemon fetches, and it
# ignores the substituters, keys and netrc-file of untrusted users: there,
# use the NixOS module's `services.ferry.client` (system netrc) instead.
#
# `programs.*` rather than `services.*`: this configures a command-line
# program and Nix for one user; the watch-store service is an optional
# part of it.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    types
    literalExpression
    ;

  ferryLib = import ../client-lib.nix;
  cfg = config.programs.ferry;

  caches = ferryLib.cacheList cfg.servers;
  withToken = lib.filterAttrs (_: s: s.tokenFile != null) cfg.servers;
  ferry = "${cfg.package}/bin/ferry";

  # `ferry login` is offline: it only saves the server in
  # ~/.config/ferry/config.toml (0600). It reads the token file itself.
  loginLines = lib.concatStringsSep "\n" (
    lib.mapAttrsToList (
      name: s:
      let
        q = ferryLib.shellQuote;
        setDefault = lib.optionalString (cfg.defaultServer == name) " --set-default";
      in
      ''
        if [ -r ${q s.tokenFile} ] && [ ! -d ${q s.tokenFile} ]; then
          ${q ferry} login ${q name} ${q s.url} --token-file ${q s.tokenFile}${setDefault} \
            || report "ferry login ${name} failed"
        fi''
    ) withToken
  );

  activate = pkgs.writeShellScript "ferry-activate" (
    ferryLib.netrcScript {
      inherit (cfg) servers netrcFile extraNetrcFiles;
      failOnMissing = false;
      epilogue = loginLines;
    }
  );

  watchTarget = builtins.match "([^:]+):(.+)" cfg.watchStore.target;
  watchServer = if watchTarget == null then null else builtins.head watchTarget;

  nixPackage = if config.nix.package != null then config.nix.package else pkgs.nix;
in
{
  options.programs.ferry = {
    enable = mkEnableOption "ferry's client: substitute from ferry caches, with a netrc written from token files at activation";

    package = mkOption {
      type = types.package;
      description = ''
        The ferry package. The flake's `homeManagerModules.default` sets it
        to the flake's own build.
      '';
    };

    servers = mkOption {
      type = types.attrsOf (ferryLib.serverType lib);
      default = { };
      description = ''
        ferry servers by name (the NAME of `NAME:CACHE`, as for
        `ferry login`), each with its URL, token file and caches.
      '';
      example = literalExpression ''
        {
          home = {
            url = "https://cache.example.org";
            tokenFile = config.age.secrets.ferry-token.path;
            caches.main.publicKey = "main-1:/Bx+IrQQLUVKBA9f7Z98hbVC+/W0J7Lfvzq6H2nMRuc=";
          };
        }
      '';
    };

    defaultServer = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "home";
      description = ''
        The server `ferry` uses when a target names none (`ferry login
        --set-default`). null: ferry's own rule (the first server logged in).
      '';
    };

    netrcFile = mkOption {
      type = types.str;
      default = "${config.xdg.configHome}/ferry/netrc";
      defaultText = literalExpression ''"''${config.xdg.configHome}/ferry/netrc"'';
      description = ''
        The netrc written at activation and named by `netrc-file` in
        nix.conf. The module owns this file and rewrites it whole; put
        entries for other hosts in `extraNetrcFiles` (Nix reads one
        netrc-file).
      '';
    };

    extraNetrcFiles = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/run/user/1000/secrets/other-cache.netrc" ];
      description = "netrc files appended as they are (other caches' credentials). Paths, as strings: never in the store.";
    };

    configureNix = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Set `nix.settings`: extra-substituters, extra-trusted-public-keys and
        netrc-file. Off: only the netrc, `ferry login` and the service.
      '';
    };

    watchStore = {
      enable = mkEnableOption "a `ferry watch-store` user service that pushes new store paths";

      target = mkOption {
        type = types.strMatching "[^:]+:.+";
        example = "home:main";
        description = ''
          NAME:CACHE to push to; NAME is one of `servers`, with a token file
          that has the `push` right.
        '';
      };

      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [
          "--interval"
          "10"
          "--jobs"
          "2"
        ];
        description = "More arguments for `ferry watch-store`.";
      };
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions =
        ferryLib.assertions {
          prefix = "programs.ferry";
          inherit (cfg) servers netrcFile extraNetrcFiles;
        }
        ++ [
          {
            assertion = cfg.defaultServer == null || withToken ? ${cfg.defaultServer};
            message = "programs.ferry.defaultServer names ${toString cfg.defaultServer}, which is not among programs.ferry.servers with a tokenFile";
          }
          {
            assertion = !cfg.watchStore.enable || (watchServer != null && withToken ? ${watchServer});
            message = "programs.ferry.watchStore.target: ${cfg.watchStore.target} must name one of programs.ferry.servers, with a tokenFile (watch-store pushes)";
          }
        ];

      home.packages = [ cfg.package ];

      # After the files are linked; `run` prints instead of running in a
      # dry run (home-manager switch -n).
      home.activation.ferry = lib.hm.dag.entryAfter [ "writeBoundary" ] ''
        run ${activate}
      '';
    }

    (mkIf cfg.configureNix {
      nix.package = lib.mkDefault pkgs.nix;
      nix.settings = {
        netrc-file = cfg.netrcFile;
      }
      // lib.optionalAttrs (caches != [ ]) {
        extra-substituters = map (c: c.substituter) caches;
        extra-trusted-public-keys = lib.unique (map (c: c.publicKey) caches);
      };
    })

    (mkIf cfg.watchStore.enable {
      systemd.user.services.ferry-watch-store = {
        Unit = {
          Description = "ferry watch-store ${cfg.watchStore.target}: push new store paths";
          # A user manager has no network-online.target to wait for.
          # watch-store contacts the server once at start and exits if it
          # cannot; Restart= tries again, and once running it retries
          # through outages itself.
          X-Restart-Triggers = [ "${activate}" ];
        };
        Service = {
          ExecStart = "${ferry} watch-store ${lib.escapeShellArgs ([ cfg.watchStore.target ] ++ cfg.watchStore.extraArgs)}";
          # ferry push runs `nix path-info` and `nix-store --dump`.
          Environment = [ "PATH=${lib.makeBinPath [ nixPackage ]}" ];
          Restart = "on-failure";
          RestartSec = "30s";
        };
        Install.WantedBy = [ "default.target" ];
      };
    })
  ]);
}
