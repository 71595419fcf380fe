//! Nix 2.8 (Debian `nix-bin`) driven as single-user root with no daemon.
//!
//! Quirks this module encodes (found against Nix 2.8.0):
//! - Settings: `build-users-group =` (empty, root builds directly),
//!   `sandbox = false`, `experimental-features = nix-command`,
//!   `substituters =` (never reach cache.nixos.org), and
//!   `narinfo-cache-{positive,negative}-ttl = 0`: Nix keeps a narinfo disk
//!   cache in `$XDG_CACHE_HOME/nix/binary-cache-v6.sqlite` keyed by URL, and
//!   tests reuse `127.0.0.1:<port>` URLs; a cached positive narinfo even lets
//!   a later run skip the (401) narinfo request. `XDG_CACHE_HOME` is also
//!   pointed at a per-process directory.
//! - `nix path-info --json` prints an array of objects: `path`, `narHash`
//!   (SRI: `sha256-<base64>`), `narSize`, `references` (full paths, always
//!   present), `deriver` (full path), `registrationTime`, `ultimate`, and
//!   only when set `signatures` (array) and `ca`.
//! - A chroot store is just a directory: `--store /tmp/x` or `--to /tmp/x`;
//!   its paths live in `/tmp/x/nix/store/<base>`.
//! - Signing: `nix store sign -r --key-file SK PATH` (writes into the local
//!   store's DB); keys from `nix-store --generate-binary-cache-key NAME SK PK`.
//! - netrc: `--option netrc-file F`; an entry without `login` is ignored by
//!   curl 7.88 (Debian 12), so write `machine HOST login token password T`.
//!   `machine` is the host without the port.
//! - Nix 2.8 treats a 401/403 on a NAR as "file does not exist", and a 401
//!   on `nix-cache-info` as "not a binary cache" (it then even tries to PUT
//!   `nix-cache-info`).

use super::tools::{CmdFailure, describe, require_tool, run, run_ok, unique_salt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The settings every Nix command gets through `NIX_CONFIG`.
pub const NIX_CONFIG: &str = "build-users-group =\n\
sandbox = false\n\
experimental-features = nix-command\n\
substituters =\n\
narinfo-cache-negative-ttl = 0\n\
narinfo-cache-positive-ttl = 0\n\
warn-dirty = false\n";

fn xdg_cache_home() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("ferry-harness-xdg-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("create XDG_CACHE_HOME");
        d
    })
}

/// A `Command` for a Nix program (`nix`, `nix-store`, `nix-build`, ...) with
/// the harness environment set: `NIX_CONFIG` (see [`NIX_CONFIG`]) and a
/// per-process `XDG_CACHE_HOME`. Panics if the program is missing.
pub fn nix_cmd(program: &str) -> Command {
    let mut c = Command::new(require_tool(program));
    c.env("NIX_CONFIG", NIX_CONFIG);
    c.env("XDG_CACHE_HOME", xdg_cache_home());
    c
}

/// What a leaf path of a test closure contains.
#[derive(Clone, Debug)]
pub enum BlobKind {
    /// `size` bytes from `/dev/urandom`: incompressible (zstd can't shrink it).
    Random,
    /// `size` bytes of a repeated text line: compresses very well.
    Compressible,
}

/// One leaf store path of a closure: a single regular file of `size` bytes.
#[derive(Clone, Debug)]
pub struct BlobSpec {
    pub name: String,
    pub kind: BlobKind,
    pub size: u64,
}

/// A closure to build: leaf blobs plus a top directory path that references
/// all of them. The top contains `refs` (the blob paths, one per line, which
/// is how Nix detects the references), `link` (a symlink to the first blob
/// if any), `bin/run` (an executable script), `sub/dir/file` and
/// `empty-dir/`, so trees exercise files, symlinks, exec bits and
/// directories. `salt` goes into every derivation: a new salt means new
/// store paths ([`ClosureSpec::new`] picks a unique one).
#[derive(Clone, Debug)]
pub struct ClosureSpec {
    pub name: String,
    pub blobs: Vec<BlobSpec>,
    pub salt: String,
}

impl ClosureSpec {
    /// An empty spec named `name` (store-path-name characters only) with a
    /// unique salt.
    pub fn new(name: &str) -> Self {
        check_name(name);
        ClosureSpec {
            name: name.to_string(),
            blobs: Vec::new(),
            salt: unique_salt(),
        }
    }
    /// Add a leaf of `size` incompressible bytes.
    pub fn random(mut self, name: &str, size: u64) -> Self {
        check_name(name);
        self.blobs.push(BlobSpec {
            name: name.into(),
            kind: BlobKind::Random,
            size,
        });
        self
    }
    /// Add a leaf of `size` highly compressible bytes.
    pub fn compressible(mut self, name: &str, size: u64) -> Self {
        check_name(name);
        self.blobs.push(BlobSpec {
            name: name.into(),
            kind: BlobKind::Compressible,
            size,
        });
        self
    }
    /// Replace the salt (same spec + same salt = same store paths).
    pub fn salt(mut self, salt: &str) -> Self {
        assert!(!salt.contains('"') && !salt.contains('\\') && !salt.contains('$'));
        self.salt = salt.into();
        self
    }
}

fn check_name(name: &str) {
    assert!(
        !name.is_empty()
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-._?=".contains(c)),
        "invalid store path name {name:?}"
    );
}

/// The result of [`build_closure`]: `top` and `blobs` (in spec order) are
/// full store paths; `paths` is the whole closure (top and blobs).
#[derive(Clone, Debug)]
pub struct BuiltClosure {
    pub top: String,
    pub blobs: Vec<String>,
    pub paths: Vec<String>,
}

/// Build `spec` in the local store with `nix-build` (builder `/bin/sh`,
/// `PATH=/usr/bin:/bin`, no sandbox) and return its paths. 150 MB of random
/// data takes about a second. Safe to call from parallel tests.
pub fn build_closure(spec: &ClosureSpec) -> BuiltClosure {
    let mut e = String::new();
    e.push_str("let\n  mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = \"/bin/sh\"; args = [ \"-c\" script ]; PATH = \"/usr/bin:/bin\"; salt = \"");
    e.push_str(&spec.salt);
    e.push_str("\"; };\n");
    for (i, b) in spec.blobs.iter().enumerate() {
        let script = match b.kind {
            BlobKind::Random => format!("head -c {} /dev/urandom > $out", b.size),
            BlobKind::Compressible => format!(
                "yes 'ferry test data: this line repeats and compresses well 0123456789' | head -c {} > $out",
                b.size
            ),
        };
        e.push_str(&format!("  b{i} = mk \"{}\" \"{}\";\n", b.name, script));
    }
    let mut top = String::from(
        "set -e; mkdir -p $out/bin $out/sub/dir $out/empty-dir; : > $out/refs; \
         printf '#!/bin/sh\\necho hello from ferry test\\n' > $out/bin/run; chmod 755 $out/bin/run; \
         echo nested > $out/sub/dir/file; ",
    );
    for i in 0..spec.blobs.len() {
        top.push_str(&format!("echo ${{b{i}}} >> $out/refs; "));
    }
    if !spec.blobs.is_empty() {
        top.push_str("ln -s ${b0} $out/link; ");
    }
    e.push_str(&format!("  top = mk \"{}\" \"{}\";\n", spec.name, top));
    e.push_str("in [ top");
    for i in 0..spec.blobs.len() {
        e.push_str(&format!(" b{i}"));
    }
    e.push_str(" ]\n");

    let lines = nix_build_expr(&e);
    assert_eq!(
        lines.len(),
        spec.blobs.len() + 1,
        "unexpected nix-build output {lines:?}"
    );
    let top = lines[0].clone();
    let blobs = lines[1..].to_vec();
    let mut paths = vec![top.clone()];
    paths.extend(blobs.iter().cloned());
    BuiltClosure { top, blobs, paths }
}

/// Builds a store path named `name` holding a copy of `dir` (a file or a
/// directory, read by the builder: no sandbox), with `salt` in the
/// derivation; returns the path.
pub fn build_copy_of(name: &str, dir: &Path, salt: &str) -> String {
    check_name(name);
    let src = dir.to_str().expect("utf-8 path");
    assert!(!src.contains('"') && !src.contains('$') && !src.contains('\\') && !salt.contains('"'));
    let e = format!(
        "derivation {{ name = \"{name}\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
         args = [ \"-c\" \"cp -r '{src}' $out\" ]; PATH = \"/usr/bin:/bin\"; salt = \"{salt}\"; }}"
    );
    nix_build_expr(&e).pop().expect("nix-build printed a path")
}

/// `nix-build --no-out-link -E EXPR`: the store paths it prints.
fn nix_build_expr(e: &str) -> Vec<String> {
    let out = run_ok(
        nix_cmd("nix-build")
            .arg("--no-out-link")
            .arg("--quiet")
            .arg("-E")
            .arg(e),
    );
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// One entry of `nix path-info --json`.
#[derive(Clone, Debug, PartialEq)]
pub struct PathInfo {
    /// Full store path.
    pub path: String,
    /// As Nix 2.8 prints it: SRI `sha256-<base64>`. See [`PathInfo::nar_hash_nix32`].
    pub nar_hash: String,
    pub nar_size: u64,
    /// Full store paths, sorted as Nix prints them (may include `path` itself).
    pub references: Vec<String>,
    /// Full `.drv` path.
    pub deriver: Option<String>,
    pub ca: Option<String>,
    /// `name:base64` signatures; empty when none.
    pub sigs: Vec<String>,
}

impl PathInfo {
    /// The NAR hash as a narinfo writes it: `sha256:<nix32>`.
    pub fn nar_hash_nix32(&self) -> String {
        format!("sha256:{}", nix_hash_to_base32(&self.nar_hash))
    }
    /// Base name of the path (`<hash>-<name>`).
    pub fn base(&self) -> &str {
        self.path.rsplit('/').next().unwrap()
    }
    /// The 32-character hash part (the narinfo file stem).
    pub fn hash_part(&self) -> &str {
        &self.base()[..32]
    }
}

/// `nix path-info --json [--recursive] PATHS` in the local store.
pub fn path_info(paths: &[&str], recursive: bool) -> Vec<PathInfo> {
    path_info_in(None, paths, recursive)
}

/// Like [`path_info`] against another store (`Some("/tmp/x")` for a chroot
/// store such as [`FreshStore::root`], or a store URL).
pub fn path_info_in(store: Option<&str>, paths: &[&str], recursive: bool) -> Vec<PathInfo> {
    let mut c = nix_cmd("nix");
    c.arg("path-info").arg("--json");
    if let Some(s) = store {
        c.arg("--store").arg(s);
    }
    if recursive {
        c.arg("--recursive");
    }
    c.args(paths);
    let out = run_ok(&mut c);
    let v: serde_json::Value = serde_json::from_slice(&out).expect("path-info JSON");
    v.as_array()
        .expect("path-info prints an array")
        .iter()
        .map(|o| {
            let s = |k: &str| o.get(k).and_then(|x| x.as_str()).map(str::to_string);
            let list = |k: &str| {
                o.get(k)
                    .and_then(|x| x.as_array())
                    .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default()
            };
            PathInfo {
                path: s("path").expect("path"),
                nar_hash: s("narHash")
                    .unwrap_or_else(|| panic!("no narHash (path not valid?) in {o}")),
                nar_size: o.get("narSize").and_then(|x| x.as_u64()).expect("narSize"),
                references: list("references"),
                deriver: s("deriver"),
                ca: s("ca"),
                sigs: list("signatures"),
            }
        })
        .collect()
}

/// `nix hash to-base32 HASH`: any accepted form (SRI, `sha256:` base16/
/// base32/base64) to bare nix32 (52 characters for SHA-256).
pub fn nix_hash_to_base32(hash: &str) -> String {
    let mut c = nix_cmd("nix");
    c.args(["hash", "to-base32"]);
    if !hash.contains(':') && !hash.contains('-') {
        c.args(["--type", "sha256"]);
    }
    c.arg(hash);
    String::from_utf8(run_ok(&mut c))
        .unwrap()
        .trim()
        .to_string()
}

/// Write the NAR serialisation of `path` (local store) to `out`
/// (`nix-store --dump`).
pub fn dump_nar(path: &str, out: &Path) {
    let f = std::fs::File::create(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let mut c = nix_cmd("nix-store");
    c.arg("--dump").arg(path).stdout(f);
    let command = describe(&c);
    let o = c
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    assert!(
        o.status.success(),
        "{command} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A binary cache signing key pair in a temp dir.
pub struct CacheKey {
    pub dir: tempfile::TempDir,
    /// File holding `name:base64(secret)` (for `--key-file`, `secret-key=`).
    pub secret_file: PathBuf,
    /// `name:base64(public)`, ready for `trusted-public-keys`.
    pub public: String,
}

/// `nix-store --generate-binary-cache-key NAME SK PK`.
pub fn generate_key(name: &str) -> CacheKey {
    let dir = tempfile::tempdir().unwrap();
    let sk = dir.path().join("secret");
    let pk = dir.path().join("public");
    run_ok(
        nix_cmd("nix-store")
            .arg("--generate-binary-cache-key")
            .arg(name)
            .arg(&sk)
            .arg(&pk),
    );
    let public = std::fs::read_to_string(&pk).unwrap().trim().to_string();
    CacheKey {
        dir,
        secret_file: sk,
        public,
    }
}

/// `nix store sign --recursive --key-file K PATHS` in the local store (adds
/// the signature to the store DB, so later copies carry it).
pub fn nix_sign(paths: &[&str], key: &CacheKey) {
    run_ok(
        nix_cmd("nix")
            .args(["store", "sign", "--recursive", "--key-file"])
            .arg(&key.secret_file)
            .args(paths),
    );
}

/// `nix copy --to URL PATHS` from the local store (closure included), e.g.
/// `file:///tmp/c?compression=zstd` or `http://HOST/cache?compression=zstd`;
/// with a netrc when given. Returns the command result.
pub fn nix_copy_to(
    url: &str,
    paths: &[&str],
    netrc: Option<&Path>,
) -> Result<std::process::Output, CmdFailure> {
    let mut c = nix_cmd("nix");
    c.arg("copy").arg("--to").arg(url);
    if let Some(n) = netrc {
        c.arg("--option").arg("netrc-file").arg(n);
    }
    c.args(paths);
    run(&mut c)
}

/// A fresh, empty chroot store in a temp dir. Nix sees store dir
/// `/nix/store`; files live under `<root>/nix/store`.
pub struct FreshStore {
    pub dir: tempfile::TempDir,
}

impl FreshStore {
    pub fn new() -> Self {
        FreshStore {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    /// The store root, usable as `--store`/`--to` value.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }
    /// The store root as a string (for [`path_info_in`]).
    pub fn url(&self) -> String {
        self.dir.path().to_str().unwrap().to_string()
    }
    /// Where a `/nix/store/...` path's files are in this store.
    pub fn real_path(&self, store_path: &str) -> PathBuf {
        self.dir.path().join(store_path.trim_start_matches('/'))
    }
    /// Whether the path was copied in.
    pub fn has(&self, store_path: &str) -> bool {
        self.real_path(store_path).symlink_metadata().is_ok()
    }
}

/// Copy `path` (and its closure) from the binary cache at `url` into a new
/// [`FreshStore`] with `require-sigs = true` and `trusted-public-keys =
/// pubkey` only, using `netrc` when given. Panics on failure.
pub fn nix_copy_from(url: &str, pubkey: &str, netrc: Option<&Path>, path: &str) -> FreshStore {
    match try_nix_copy_from(url, pubkey, netrc, path) {
        Ok(s) => s,
        Err(e) => panic!("nix copy --from {url} {path} failed: {e:?}"),
    }
}

/// [`nix_copy_from`] returning the failure (exit status and stderr) instead
/// of panicking: for tests that expect Nix to refuse.
pub fn try_nix_copy_from(
    url: &str,
    pubkey: &str,
    netrc: Option<&Path>,
    path: &str,
) -> Result<FreshStore, CmdFailure> {
    let store = FreshStore::new();
    let mut c = nix_cmd("nix");
    c.arg("copy")
        .arg("--from")
        .arg(url)
        .arg("--to")
        .arg(store.root());
    c.args([
        "--option",
        "require-sigs",
        "true",
        "--option",
        "trusted-public-keys",
        pubkey,
    ]);
    if let Some(n) = netrc {
        c.arg("--option").arg("netrc-file").arg(n);
    }
    c.arg(path);
    run(&mut c).map(|_| store)
}

/// Write a netrc file (`machine HOST login token password TOKEN`) into
/// `dir` and return its path. `host` is without port.
pub fn write_netrc(dir: &Path, host: &str, token: &str) -> PathBuf {
    let p = dir.join("netrc");
    std::fs::write(&p, format!("machine {host} login token password {token}\n")).unwrap();
    p
}
