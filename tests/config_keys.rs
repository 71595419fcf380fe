//! The deployment files name exactly the config keys `ferry::config::Config`
//! has: one NixOS option per key in deploy/nixos/module.nix (each written
//! `"key-name" = mkOption {`), and every key in examples/ferry.toml, which
//! must also still parse as a `Config`. The binary is not run here.

use std::collections::BTreeSet;
use std::path::Path;

use ferry::config::{Config, S3Config};

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The struct's keys: a default `Config` serialized to TOML, with every
/// `Option` set so that no key is skipped.
fn struct_keys() -> BTreeSet<String> {
    let c = Config {
        default_retention: Some("6 months".into()),
        public_url: Some("https://cache.example.org".into()),
        metrics_listen: Some("127.0.0.1:9090".parse().unwrap()),
        database_url: Some("postgres://ferry@%2Frun%2Fpostgresql/ferry".into()),
        s3: Some(full_s3()),
        root_key_file: Some("/etc/ferry/root.key".into()),
        ..Config::default()
    };
    let text = toml::to_string(&c).expect("Config serializes to TOML");
    let table: toml::Table = text.parse().expect("serialized Config parses back");
    let keys: BTreeSet<String> = table.keys().cloned().collect();
    assert!(
        keys.contains("listen") && keys.contains("data-dir"),
        "{keys:?}"
    );
    keys
}

/// An `[s3]` table with every key set.
fn full_s3() -> S3Config {
    S3Config {
        endpoint: Some("http://127.0.0.1:3900".into()),
        bucket: "ferry".into(),
        region: "garage".into(),
        access_key_id: Some("id".into()),
        secret_access_key: Some("secret".into()),
        access_key_id_file: Some("/run/id".into()),
        secret_access_key_file: Some("/run/secret".into()),
        path_style: true,
    }
}

/// The keys of the `[s3]` table.
fn s3_keys() -> BTreeSet<String> {
    let text = toml::to_string(&full_s3()).expect("S3Config serializes");
    let table: toml::Table = text.parse().unwrap();
    table.keys().cloned().collect()
}

/// Option names in the module: lines of the form `"key" = mkOption {`.
fn module_keys() -> BTreeSet<String> {
    let text = read("deploy/nixos/module.nix");
    let mut keys = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        let Some(rest) = line.strip_prefix('"') else {
            continue;
        };
        let Some((name, tail)) = rest.split_once('"') else {
            continue;
        };
        if tail.trim_start().starts_with("= mkOption") {
            assert!(
                keys.insert(name.to_owned()),
                "option {name:?} declared twice in module.nix"
            );
        }
    }
    keys
}

#[test]
fn nixos_module_has_one_option_per_config_key() {
    let want = struct_keys();
    let got = module_keys();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "deploy/nixos/module.nix settings options differ from src/config.rs:\n  missing: {missing:?}\n  not config keys: {extra:?}"
    );
}

#[test]
fn example_config_parses_and_mentions_every_key() {
    let text = read("examples/ferry.toml");
    let cfg: Config = toml::from_str(&text).expect("examples/ferry.toml parses as a Config");
    cfg.validate().expect("examples/ferry.toml validates");

    // Keys set, plus keys shown commented out (`# key = value`); a
    // (commented) `[s3]` header mentions `s3`, and the keys after it are
    // that table's.
    let mut mentioned = BTreeSet::new();
    let mut in_s3 = BTreeSet::new();
    let mut table: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_start().trim_start_matches('#').trim_start();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            mentioned.insert(name.to_owned());
            table = Some(name.to_owned());
            continue;
        }
        if let Some((key, _)) = line.split_once(" = ")
            && !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            match table.as_deref() {
                None => mentioned.insert(key.to_owned()),
                Some("s3") => in_s3.insert(key.to_owned()),
                Some(other) => panic!("examples/ferry.toml: unknown table [{other}]"),
            };
        }
    }
    assert_eq!(in_s3, s3_keys(), "examples/ferry.toml's [s3] keys");
    let want = struct_keys();
    let missing: Vec<_> = want.difference(&mentioned).collect();
    let extra: Vec<_> = mentioned.difference(&want).collect();
    assert!(
        missing.is_empty(),
        "examples/ferry.toml does not mention: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "examples/ferry.toml mentions unknown keys: {extra:?}"
    );

    // Its values are the defaults, so it documents them truthfully.
    let default = toml::to_string(&Config::default()).unwrap();
    let set = toml::to_string(&cfg).unwrap();
    assert_eq!(
        set, default,
        "examples/ferry.toml should set every key to its default"
    );
}

/// `ferry serve --check-config` on a file; returns (success, stdout+stderr).
fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["serve", "--check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
    msg.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), msg)
}

#[test]
fn check_config_names_the_offending_key() {
    let (ok, msg) = check_config("listne = \"127.0.0.1:1\"\n");
    assert!(!ok && msg.contains("listne"), "{msg}");
    let (ok, msg) = check_config("max-part-size = 200000000\n");
    assert!(!ok && msg.contains("max-part-size"), "{msg}");
    let (ok, msg) = check_config("max-part-size = 67108864\n");
    assert!(ok, "{msg}");
    let (ok, msg) = check_config("trusted-proxies = [\"not-an-ip\"]\n");
    assert!(!ok && msg.contains("trusted-proxies"), "{msg}");
    let (ok, msg) = check_config("max-nar-size = 0\n");
    assert!(!ok && msg.contains("max-nar-size"), "{msg}");
}

#[test]
fn check_config_lists_the_limits() {
    let (ok, msg) =
        check_config("max-open-uploads-per-token = 7\nmetrics-listen = \"127.0.0.1:9100\"\n");
    assert!(ok, "{msg}");
    for line in [
        "max-nar-size = 274877906944",
        "max-open-uploads-per-token = 7",
        "metrics-listen = 127.0.0.1:9100",
        "trusted-proxies = []",
    ] {
        assert!(msg.contains(line), "{line} not in:\n{msg}");
    }
}
