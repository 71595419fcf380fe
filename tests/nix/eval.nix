# Evaluates deploy/nixos/module.nix and deploy/home-manager/module.nix with
# a bare nix-instantiate: no nixpkgs and no home-manager on the test machine,
# so `lib` and `pkgs` here are small hand-made stand-ins for the few functions
# the modules call, and the module system is imitated, not run:
#
# - option values are filled from the options the module declares (its
#   defaults; an undeclared name, a missing value or a wrong simple type
#   throws), which catches a name used in `config` but never declared;
# - mkIf / mkMerge / mkDefault are resolved by a plain deep merge.
#
# Not checked here: nixpkgs' real option types and merging, priorities,
# the home-manager and NixOS modules these set options of (nix.settings,
# systemd, home.activation): their names are as those projects document.
#
# pkgs.writeShellScript writes the script text with builtins.toFile, so
# tests/nix/check.sh can run exactly what the modules generate.
{
  tmp,
  ferryPackage,
}:

let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    elem
    filter
    foldl'
    isAttrs
    isBool
    isFunction
    isInt
    isList
    isString
    listToAttrs
    mapAttrs
    match
    ;

  # ---- lib stand-in -------------------------------------------------------
  lib = rec {
    mkOption = o: o // { _type = "option"; };
    mkEnableOption = d: mkOption {
      type = "bool";
      default = false;
      description = d;
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkDefault = content: {
      _type = "override";
      inherit content;
    };
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    types = {
      str = "str";
      bool = "bool";
      package = "package";
      int = "int";
      ints = {
        positive = "positive";
        unsigned = "unsigned";
        between = lo: hi: { between = [ lo hi ]; };
      };
      strMatching = r: { strMatching = r; };
      nullOr = t: { nullOr = t; };
      listOf = t: { listOf = t; };
      attrsOf = t: { attrsOf = t; };
      enum = l: { enum = l; };
      submodule = m: { submodule = m; };
    };
    filterAttrs =
      f: s:
      listToAttrs (
        map (n: {
          name = n;
          value = s.${n};
        }) (filter (n: f n s.${n}) (attrNames s))
      );
    mapAttrsToList = f: s: map (n: f n s.${n}) (attrNames s);
    inherit concatStringsSep;
    optionalString = c: s: if c then s else "";
    optionalAttrs = c: s: if c then s else { };
    optional = c: x: if c then [ x ] else [ ];
    unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
    last = l: builtins.elemAt l (builtins.length l - 1);
    splitString = sep: s: filter isString (builtins.split sep s);
    toInt = s: builtins.fromJSON s;
    escapeShellArgs = l: concatStringsSep " " (map (import ../../deploy/client-lib.nix).shellQuote l);
    makeBinPath = ps: concatStringsSep ":" (map (p: "${p}/bin") ps);
    hm.dag.entryAfter = after: data: {
      inherit after data;
      before = [ ];
    };
  };

  # ---- pkgs stand-in ------------------------------------------------------
  pkgs = {
    nix = "/stub/nix";
    writeShellScript = name: text: builtins.toFile name ("#!/usr/bin/env bash\n" + text);
    formats.toml = _: {
      type = "toml";
      generate = name: value: builtins.deepSeq value "/stub/${name}";
    };
  };

  # ---- module-system imitation -------------------------------------------
  isOption = x: isAttrs x && (x._type or null) == "option";

  check =
    path: t: v:
    let
      bad = throw "${path}: ${builtins.toJSON v} is not a ${builtins.toJSON t}";
      ok = c: if c then v else bad;
    in
    if t == "str" then
      ok (isString v)
    else if t == "bool" then
      ok (isBool v)
    else if t == "package" || t == "toml" then
      v
    else if t == "int" then
      ok (isInt v)
    else if t == "positive" then
      ok (isInt v && v > 0)
    else if t == "unsigned" then
      ok (isInt v && v >= 0)
    else if t ? between then
      ok (isInt v && v >= builtins.head t.between && v <= builtins.elemAt t.between 1)
    else if t ? strMatching then
      ok (isString v && match t.strMatching v != null)
    else if t ? enum then
      ok (elem v t.enum)
    else if t ? nullOr then
      (if v == null then null else check path t.nullOr v)
    else if t ? listOf then
      (if isList v then map (check "${path}[]" t.listOf) v else bad)
    else if t ? attrsOf then
      (if isAttrs v then mapAttrs (n: check "${path}.${n}" t.attrsOf) v else bad)
    else if t ? submodule then
      (
        if !isAttrs v then
          bad
        else
          let
            m = if isFunction t.submodule then t.submodule { name = "stub"; } else t.submodule;
            declared = fill path m.options v;
            free = removeAttrs v (attrNames m.options);
          in
          (if m ? freeformType then free else { }) // declared
      )
    else
      throw "${path}: stub has no type ${builtins.toJSON t}";

  # Option values for the option tree `opts` from the definitions `v`.
  fill =
    path: opts: v:
    let
      undeclared = filter (n: !(opts ? ${n})) (attrNames v);
    in
    if undeclared != [ ] then
      throw "${path}.${builtins.head undeclared} is not a declared option"
    else
      mapAttrs (
        n: o:
        if isOption o then
          (
            if v ? ${n} then
              check "${path}.${n}" o.type v.${n}
            else if o ? default then
              check "${path}.${n}" o.type o.default
            else
              throw "${path}.${n} is used but not defined"
          )
        else
          fill "${path}.${n}" o (v.${n} or { })
      ) opts;

  none = {
    _type = "none";
  };
  isNone = x: isAttrs x && (x._type or null) == "none";
  plain = x: isAttrs x && !(x ? _type) && !(x ? __toString);

  # mkIf / mkMerge / mkDefault pushed through, then merged.
  resolve =
    x:
    if isAttrs x && (x._type or null) == "if" then
      (if x.condition then resolve x.content else none)
    else if isAttrs x && (x._type or null) == "merge" then
      foldl' merge { } (filter (y: !isNone y) (map resolve x.contents))
    else if isAttrs x && (x._type or null) == "override" then
      resolve x.content
    else if plain x then
      lib.filterAttrs (_: y: !isNone y) (mapAttrs (_: resolve) x)
    else
      x;

  merge =
    a: b:
    a
    // mapAttrs (
      n: y:
      if !(a ? ${n}) then
        y
      else if plain a.${n} && plain y then
        merge a.${n} y
      else if isList a.${n} && isList y then
        a.${n} ++ y
      else if a.${n} == y then
        y
      else
        throw "conflicting definitions of ${n}"
    ) b;

  # Evaluates a module: `defs` are the user's definitions of the module's
  # own options (under `prefix`, an attribute path), `other` the values of
  # options other modules declare.
  evalModule =
    {
      file,
      prefix,
      defs,
      other ? { },
    }:
    let
      m = import file {
        inherit lib pkgs;
        config = other // setAt prefix (fill (concatStringsSep "." prefix) (getAt prefix m.options) defs);
      };
      resolved = resolve m.config;
    in
    {
      options = m.options;
      config = if isNone resolved then { } else resolved;
      values = fill (concatStringsSep "." prefix) (getAt prefix m.options) defs;
    };
  getAt = path: s: foldl' (acc: n: acc.${n}) s path;
  setAt =
    path: v:
    if path == [ ] then v else { ${builtins.head path} = setAt (builtins.tail path) v; };

  # ---- the cases ------------------------------------------------------------
  servers = {
    home = {
      url = "https://cache.example.org/";
      tokenFile = "${tmp}/home-token";
      caches.main.publicKey = "main-1:AAAA";
      caches.ci = {
        publicKey = "ci-1:BBBB";
        priority = 30;
      };
    };
    lan = {
      url = "http://me@[fd00::1]:8080/";
      tokenFile = "${tmp}/lan-token";
      caches.x.publicKey = "main-1:AAAA";
    };
    pub = {
      url = "https://public.example.org";
      caches.main.publicKey = "pub-1:DDDD";
    };
  };
  wantSubstituters = [
    "https://cache.example.org/ci?priority=30"
    "https://cache.example.org/main"
    "http://me@[fd00::1]:8080/x"
    "https://public.example.org/main"
  ];
  wantKeys = [
    "ci-1:BBBB"
    "main-1:AAAA"
    "pub-1:DDDD"
  ];

  hm = evalModule {
    file = ../../deploy/home-manager/module.nix;
    prefix = [
      "programs"
      "ferry"
    ];
    defs = {
      enable = true;
      package = ferryPackage;
      inherit servers;
      defaultServer = "home";
      netrcFile = "${tmp}/hm/ferry/netrc";
      extraNetrcFiles = [ "${tmp}/extra.netrc" ];
      watchStore = {
        enable = true;
        target = "home:main";
        extraArgs = [
          "--interval"
          "5"
        ];
      };
    };
    other = {
      nix.package = null;
      xdg.configHome = "${tmp}/xdg";
    };
  };

  hmDefaults = evalModule {
    file = ../../deploy/home-manager/module.nix;
    prefix = [
      "programs"
      "ferry"
    ];
    defs = {
      enable = true;
      package = ferryPackage;
    };
    other = {
      nix.package = "/stub/system-nix";
      xdg.configHome = "${tmp}/xdg";
    };
  };

  nixos = evalModule {
    file = ../../deploy/nixos/module.nix;
    prefix = [
      "services"
      "ferry"
    ];
    defs = {
      client = {
        enable = true;
        inherit servers;
        netrcFile = "${tmp}/nixos/netrc";
      };
    };
  };

  # Server and client at once: the server's config is forced too.
  nixosBoth = evalModule {
    file = ../../deploy/nixos/module.nix;
    prefix = [
      "services"
      "ferry"
    ];
    defs = {
      enable = true;
      package = ferryPackage;
      settings.listen = "[::]:8095";
      openFirewall = true;
      client = {
        enable = true;
        servers.home = servers.home;
      };
    };
  };

  # The server with its blobs in S3, credentials from files.
  nixosS3 = evalModule {
    file = ../../deploy/nixos/module.nix;
    prefix = [
      "services"
      "ferry"
    ];
    defs = {
      enable = true;
      package = ferryPackage;
      settings.s3 = {
        endpoint = "http://127.0.0.1:3900";
        bucket = "ferry";
        region = "garage";
      };
      s3Credentials = {
        accessKeyIdFile = "/run/secrets/s3-id";
        secretAccessKeyFile = "/run/secrets/s3-secret";
      };
      rootKeyFile = "/run/secrets/ferry-root-key";
      settings.database-url = "host=/run/postgresql dbname=ferry";
    };
  };

  # Assertions that fail, by message prefix.
  failing = r: map (a: a.message) (filter (a: !a.assertion) r.config.assertions);
  hmWith =
    defs:
    failing (evalModule {
      file = ../../deploy/home-manager/module.nix;
      prefix = [
        "programs"
        "ferry"
      ];
      defs = {
        enable = true;
        package = ferryPackage;
      }
      // defs;
      other = {
        nix.package = null;
        xdg.configHome = "${tmp}/xdg";
      };
    });
  nixosWith =
    client:
    failing (evalModule {
      file = ../../deploy/nixos/module.nix;
      prefix = [
        "services"
        "ferry"
      ];
      defs.client = {
        enable = true;
      }
      // client;
    });
  startsWith = p: s: match "${p}.*" s != null;
  failsWith = p: msgs: builtins.length msgs == 1 && startsWith p (builtins.head msgs);

  hmScript = hm.config.home.activation.ferry;
  netrcUnit = nixos.config.systemd.services.ferry-netrc;
  watch = hm.config.systemd.user.services.ferry-watch-store;

  checks = {
    hm-assertions-pass = failing hm == [ ];
    hm-substituters = hm.config.nix.settings.extra-substituters == wantSubstituters;
    hm-keys = hm.config.nix.settings.extra-trusted-public-keys == wantKeys;
    hm-netrc-file = hm.config.nix.settings.netrc-file == "${tmp}/hm/ferry/netrc";
    hm-nix-package-default = hm.config.nix.package == "/stub/nix";
    hm-package-installed = hm.config.home.packages == [ ferryPackage ];
    hm-activation-after-write = hmScript.after == [ "writeBoundary" ];
    hm-activation-runs-script = match "run /nix/store/[a-z0-9]+-ferry-activate\n" hmScript.data != null;
    hm-watch-exec =
      watch.Service.ExecStart == "${ferryPackage}/bin/ferry watch-store 'home:main' '--interval' '5'";
    hm-watch-path = watch.Service.Environment == [ "PATH=/stub/nix/bin" ];
    hm-watch-restart = watch.Service.Restart == "on-failure";
    hm-watch-wanted = watch.Install.WantedBy == [ "default.target" ];
    hm-default-netrc = hmDefaults.config.nix.settings.netrc-file == "${tmp}/xdg/ferry/netrc";
    hm-default-no-substituters = !(hmDefaults.config.nix.settings ? extra-substituters);
    hm-default-no-service = !(hmDefaults.config ? systemd);
    hm-default-no-watch-target = failing hmDefaults == [ ];
    hm-configure-nix-off = !((resolveHm { configureNix = false; }) ? nix);
    hm-disabled-is-empty = (resolveHm { enable = false; }) == { };

    hm-token-in-store = failsWith "programs.ferry.servers.s.tokenFile must be an absolute path outside the Nix store" (hmWith {
      servers.s = {
        url = "https://a.example";
        tokenFile = "${builtins.storeDir}/abc-token";
      };
    });
    hm-token-relative = failsWith "programs.ferry.servers.s.tokenFile must be an absolute" (hmWith {
      servers.s = {
        url = "https://a.example";
        tokenFile = "token";
      };
    });
    hm-bad-server-name = failsWith "programs.ferry.servers.a b: a server name" (hmWith {
      servers."a b".url = "https://a.example";
    });
    hm-shared-host = failsWith "programs.ferry.servers: servers with a token file share a host \\(a.example\\)" (hmWith {
      servers.s = {
        url = "https://a.example/one";
        tokenFile = "/run/t1";
      };
      servers.t = {
        url = "http://a.example:8080";
        tokenFile = "/run/t2";
      };
    });
    hm-watch-unknown-server = failsWith "programs.ferry.watchStore.target: other:main must name" (hmWith {
      servers.s = {
        url = "https://a.example";
        tokenFile = "/run/t1";
      };
      watchStore = {
        enable = true;
        target = "other:main";
      };
    });
    hm-watch-public-server = failsWith "programs.ferry.watchStore.target" (hmWith {
      servers.s.url = "https://a.example";
      watchStore = {
        enable = true;
        target = "s:main";
      };
    });
    hm-default-server-unknown = failsWith "programs.ferry.defaultServer names nope" (hmWith {
      defaultServer = "nope";
    });

    nixos-assertions-pass = failing nixos == [ ];
    nixos-substituters = nixos.config.nix.settings.substituters == wantSubstituters;
    nixos-keys = nixos.config.nix.settings.trusted-public-keys == wantKeys;
    nixos-netrc-file = nixos.config.nix.settings.netrc-file == "${tmp}/nixos/netrc";
    nixos-default-netrc =
      (nixosWith { } == [ ])
      && (evalModule {
        file = ../../deploy/nixos/module.nix;
        prefix = [ "services" "ferry" ];
        defs.client.enable = true;
      }).config.nix.settings.netrc-file == "/run/ferry-client/netrc";
    nixos-unit-before-daemon = netrcUnit.before == [ "nix-daemon.service" ];
    nixos-unit-wanted = netrcUnit.wantedBy == [
      "multi-user.target"
      "nix-daemon.service"
    ];
    nixos-unit-oneshot = netrcUnit.serviceConfig.Type == "oneshot" && netrcUnit.serviceConfig.RemainAfterExit;
    nixos-unit-offline = netrcUnit.serviceConfig.PrivateNetwork;
    nixos-unit-script = match "/nix/store/[a-z0-9]+-ferry-netrc" netrcUnit.serviceConfig.ExecStart != null;
    nixos-client-only-no-server = !(nixos.config ? environment) && attrNames nixos.config.systemd.services == [ "ferry-netrc" ];
    nixos-token-in-store = failsWith "services.ferry.client.servers.s.tokenFile must be an absolute path outside the Nix store" (nixosWith {
      servers.s = {
        url = "https://a.example";
        tokenFile = "${builtins.storeDir}/abc-token";
      };
    });
    nixos-netrc-in-store = failsWith "services.ferry.client.netrcFile must be" (nixosWith {
      netrcFile = "${builtins.storeDir}/netrc";
    });

    both-services = attrNames nixosBoth.config.systemd.services == [
      "ferry"
      "ferry-netrc"
    ];
    both-server-unit = builtins.deepSeq nixosBoth.config true;
    s3-evaluates = builtins.deepSeq nixosS3.config true;
    s3-credentials-loaded = nixosS3.config.systemd.services.ferry.serviceConfig.LoadCredential == [
      "s3-access-key-id:/run/secrets/s3-id"
      "s3-secret-access-key:/run/secrets/s3-secret"
      "root-key:/run/secrets/ferry-root-key"
    ];
    database-url-set = nixosS3.values.settings.database-url == "host=/run/postgresql dbname=ferry";
    s3-path-style-default = nixosS3.values.settings.s3.path-style == true;
    no-s3-no-credentials = nixosBoth.config.systemd.services.ferry.serviceConfig.LoadCredential == [ ];
    both-firewall = nixosBoth.config.networking.firewall.allowedTCPPorts == [ 8095 ];
    both-settings-defaults = nixosBoth.values.settings.data-dir == "/var/lib/ferry" && nixosBoth.values.settings.zstd-level == 3;
    both-substituters = nixosBoth.config.nix.settings.substituters == [
      "https://cache.example.org/ci?priority=30"
      "https://cache.example.org/main"
    ];
    disabled-is-empty =
      (evalModule {
        file = ../../deploy/nixos/module.nix;
        prefix = [ "services" "ferry" ];
        defs = { };
      }).config == { };
  };

  resolveHm =
    defs:
    (evalModule {
      file = ../../deploy/home-manager/module.nix;
      prefix = [
        "programs"
        "ferry"
      ];
      defs = {
        enable = true;
        package = ferryPackage;
      }
      // defs;
      other = {
        nix.package = null;
        xdg.configHome = "${tmp}/xdg";
      };
    }).config;
in
{
  failed = filter (n: !checks.${n}) (attrNames checks);
  passed = filter (n: checks.${n}) (attrNames checks);
  hmScript = builtins.head (builtins.match "run (.*)\n" hmScript.data);
  nixosScript = netrcUnit.serviceConfig.ExecStart;
}
