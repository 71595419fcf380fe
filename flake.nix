{
  description = "ferry: a Nix binary cache server that takes NARs in parts (fits behind a Cloudflare Tunnel)";

  # edition 2024 and let-chains need Rust >= 1.88: nixos-unstable (or 25.11+).
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      lib = nixpkgs.lib;
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAllSystems (pkgs: rec {
        ferry = pkgs.rustPlatform.buildRustPackage {
          pname = "ferry";
          version = (lib.importTOML ./Cargo.toml).package.version;
          src = lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # The test suite drives a real nginx, real Nix (as root, single-user)
          # and loopback servers; none of that exists in the build sandbox.
          # Run it with `bash .ci/run` instead.
          doCheck = false;
          # Shell completions and the man page, generated from the clap
          # definitions by the binary itself.
          nativeBuildInputs = [ pkgs.installShellFiles ];
          postInstall = lib.optionalString (pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform) ''
            installShellCompletion --cmd ferry \
              --bash <($out/bin/ferry completions bash) \
              --zsh <($out/bin/ferry completions zsh) \
              --fish <($out/bin/ferry completions fish)
            $out/bin/ferry man > ferry.1
            installManPage ferry.1
          '';
          meta = {
            description = "Nix binary cache server that takes NARs in parts";
            mainProgram = "ferry";
            platforms = lib.platforms.unix;
          };
        };
        default = ferry;
      });

      # The module (server: services.ferry; client: services.ferry.client),
      # with `package` defaulting to this flake's build.
      nixosModules.default = { pkgs, ... }: {
        imports = [ ./deploy/nixos/module.nix ];
        services.ferry.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };

      # The client for one user (programs.ferry), for home-manager.
      homeManagerModules.default = { pkgs, ... }: {
        imports = [ ./deploy/home-manager/module.nix ];
        programs.ferry.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo rustc clippy rustfmt
            # what the end-to-end tests and examples/curl-push.sh call
            nginx zstd b3sum curl python3 nodejs
          ];
        };
      });

      checks = forAllSystems (pkgs:
        { package = self.packages.${pkgs.stdenv.hostPlatform.system}.default; }
        // lib.optionalAttrs pkgs.stdenv.isLinux {
          # Boots a VM with the module enabled and checks the server answers.
          nixos = pkgs.testers.runNixOSTest {
            name = "ferry";
            nodes.machine = { pkgs, ... }: {
              imports = [ self.nixosModules.default ];
              services.ferry.enable = true;
              environment.systemPackages = [ pkgs.curl ];
            };
            testScript = ''
              machine.wait_for_unit("ferry.service")
              machine.wait_for_open_port(8080)
              machine.succeed("curl -sf http://127.0.0.1:8080/healthz")
              machine.succeed("journalctl -u ferry | grep -q 'Admin token'")
            '';
          };
          # The client side: the system netrc from a token file, at boot.
          nixos-client = pkgs.testers.runNixOSTest {
            name = "ferry-client";
            nodes.machine = { ... }: {
              imports = [ self.nixosModules.default ];
              services.ferry.client = {
                enable = true;
                servers.home = {
                  url = "https://cache.example.org";
                  # A test token only: a real one must never be in the store.
                  tokenFile = "/etc/ferry-test-token";
                  caches.main.publicKey = "main-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
                };
              };
              environment.etc."ferry-test-token".text = "test-token\n";
            };
            testScript = ''
              machine.wait_for_unit("ferry-netrc.service")
              machine.succeed("test \"$(stat -c %a /run/ferry-client/netrc)\" = 600")
              machine.succeed("grep -qx 'machine cache.example.org login token password test-token' /run/ferry-client/netrc")
              machine.succeed("grep -q '^netrc-file = /run/ferry-client/netrc' /etc/nix/nix.conf")
              machine.succeed("grep -q '^substituters = .*https://cache.example.org/main' /etc/nix/nix.conf")
            '';
          };
        });
    };
}
