//! The SGX deployment files: the Gramine manifest template renders to valid
//! TOML with the required keys, and its fixed command line is one `vfl`
//! accepts.

use std::collections::BTreeMap;
use std::process::Command;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy");

/// Substitutes `{{ name }}` as gramine-manifest (Jinja2) would, failing on
/// any variable not given (Gramine renders with strict undefined too).
fn render(template: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("}}").expect("unclosed {{") + i;
        let name = rest[i + 2..end].trim();
        out.push_str(
            vars.get(name)
                .unwrap_or_else(|| panic!("template variable `{name}` not documented/given")),
        );
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    assert!(
        !out.contains("{%"),
        "the template uses Jinja statements the test does not render"
    );
    out
}

fn rendered() -> toml::Table {
    let template = std::fs::read_to_string(format!("{DEPLOY}/vfl.manifest.template")).unwrap();
    let vars = BTreeMap::from([
        ("gramine.libos", "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"),
        (
            "gramine.runtimedir()",
            "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc",
        ),
        ("log_level", "error"),
        ("arch_libdir", "/lib/x86_64-linux-gnu"),
        ("isv_prod_id", "1"),
        ("isv_svn", "1"),
        ("enclave_size", "512M"),
        ("max_threads", "16"),
        ("model", "wide_n_deep"),
        ("batch_size", "32"),
        ("application_id", "vfl"),
        ("threads", "2"),
        ("epoch_num", "1"),
        ("save_checkpoint_steps", "1000"),
        ("policy_file", "/srv/vfl/build/dynamic_config.json"),
    ]);
    toml::from_str(&render(&template, &vars)).expect("the rendered manifest is not valid TOML")
}

fn get<'a>(t: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut parts = path.split('.');
    let mut v = t.get(parts.next().unwrap()).unwrap_or_else(|| panic!("missing {path}"));
    for p in parts {
        v = v.get(p).unwrap_or_else(|| panic!("missing {path}"));
    }
    v
}

fn strings(v: &toml::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn manifest_renders_with_the_required_keys() {
    let m = rendered();
    assert_eq!(get(&m, "sgx.remote_attestation").as_str(), Some("dcap"));
    assert_eq!(get(&m, "sgx.debug").as_bool(), Some(false));
    assert_eq!(get(&m, "sgx.isvprodid").as_integer(), Some(1));
    assert_eq!(get(&m, "sgx.isvsvn").as_integer(), Some(1));
    assert_eq!(get(&m, "sgx.enclave_size").as_str(), Some("512M"));
    assert_eq!(get(&m, "sgx.max_threads").as_integer(), Some(16));
    assert_eq!(get(&m, "libos.entrypoint").as_str(), Some("/app/vfl"));
    let trusted = strings(get(&m, "sgx.trusted_files"));
    assert!(trusted.contains(&"file:/app/vfl".to_string()), "{trusted:?}");
    assert!(
        trusted.contains(&"file:/srv/vfl/build/dynamic_config.json".to_string()),
        "the policy must be measured: {trusted:?}"
    );
    let mounts = get(&m, "fs.mounts").as_array().unwrap();
    let policy_mount = mounts
        .iter()
        .find(|mt| mt.get("path").and_then(|p| p.as_str()) == Some("/app/dynamic_config.json"))
        .expect("the policy is mounted at /app/dynamic_config.json");
    assert_eq!(
        policy_mount.get("uri").and_then(|u| u.as_str()),
        Some("file:/srv/vfl/build/dynamic_config.json")
    );
    let allowed = strings(get(&m, "sgx.allowed_files"));
    assert!(!allowed.iter().any(|f| f.contains("dynamic_config")), "{allowed:?}");
    let loader = get(&m, "loader").as_table().unwrap();
    assert!(!loader.contains_key("insecure__use_host_env"));
    assert!(!loader.contains_key("insecure__use_cmdline_argv"));
}

#[test]
fn the_fixed_command_line_is_secure_and_accepted_by_vfl() {
    let m = rendered();
    let argv = strings(get(&m, "loader.argv"));
    let joined = argv.join(" ");
    assert!(joined.contains("--attestation sgx"), "{joined}");
    assert!(joined.contains("--policy /app/dynamic_config.json"), "{joined}");
    // Sealed with the key of this exact enclave, never the signer's.
    assert!(joined.contains("--model-key sgx-mrenclave"), "{joined}");
    for bad in [
        "--insecure-no-tls",
        "simulated",
        "--model-key none",
        "sgx-mrsigner",
        "--allow-rollback",
        "file:",
        "env:",
    ] {
        assert!(!joined.contains(bad), "{joined}");
    }
    // Only role, addresses, PCCS, mode and the scale-out process's role,
    // index and run shape come from the host.
    let env: Vec<&String> = get(&m, "loader.env").as_table().unwrap().keys().collect();
    assert_eq!(
        env,
        [
            "LD_LIBRARY_PATH",
            "MALLOC_ARENA_MAX",
            "VFL_COORDINATOR_ADDR",
            "VFL_INDEX",
            "VFL_LOAD_MODEL",
            "VFL_LOCAL_ADDR",
            "VFL_METRICS_ADDR",
            "VFL_MODE",
            "VFL_PCCS_URL",
            "VFL_PEER_ADDR",
            "VFL_PROCESS",
            "VFL_ROLE",
            "VFL_SHARDS",
            "VFL_SHARD_ADDR",
            "VFL_WORKERS"
        ]
    );
    // Run it outside an enclave: clap must accept every flag (a usage error
    // exits with 2); the run then stops at the attestation device, which
    // exists only inside the enclave.
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args(&argv[1..])
        .env("VFL_ROLE", "leader")
        .env("VFL_LOCAL_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/dev/attestation") && err.contains("not running inside a Gramine SGX enclave"),
        "{err}"
    );
    // The scale-out roles run from the same command line (VFL_PROCESS), as
    // vfl-sgx.sh and deploy/k8s start them, and stop at the same device.
    for process in ["shard", "worker", "coordinator"] {
        let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
            .args(&argv[1..])
            .env("VFL_ROLE", "leader")
            .env("VFL_PROCESS", process)
            .env("VFL_INDEX", "0")
            .env("VFL_WORKERS", "1")
            .env("VFL_SHARDS", "1")
            .env("VFL_LOCAL_ADDR", "127.0.0.1:0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{process}: {err}");
        assert!(
            err.contains("not running inside a Gramine SGX enclave"),
            "{process}: {err}"
        );
    }
}

/// The shipped policy admits nobody until both parties' identities are
/// trusted (`vfl-sgx.sh trust`), and it pins the enclave and the signer.
#[test]
fn the_shipped_policy_pins_enclave_and_signer_and_admits_nobody_yet() {
    let p = vfl_attest::Policy::load(std::path::Path::new(&format!("{DEPLOY}/dynamic_config.json"))).unwrap();
    assert!(p.verify_mr_enclave && p.verify_mr_signer && p.verify_isv_prod_id && p.verify_isv_svn);
    assert!(p.entries.is_empty());
    assert!(!p.allows_simulated() && !p.allow_debug);
    assert!(p.release_exports.is_empty());
    assert_eq!(p.allowed_tcb_statuses, ["UpToDate"]);
}

/// Writes an executable shell script.
fn script(path: &std::path::Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\nset -eu\n{body}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// `deploy/vfl-sgx.sh keygen / trust / make / check-peer` for two parties,
/// with stand-ins for Gramine's tools (none is installable here): each
/// party's identity file comes from its own key, trusting each other's
/// files gives both the same policy (so the same stand-in MRENCLAVE, which
/// hashes the policy), with each signer admitted in its own role only, and
/// `make` refuses a policy that does not admit both roles yet.
#[test]
fn the_sgx_workflow_exchanges_identities_without_hand_editing() {
    let dir = std::env::temp_dir().join(format!("vfl-sgx-workflow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (bin, app) = (dir.join("bin"), dir.join("app"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&app).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_vfl"), app.join("vfl")).unwrap();
    std::fs::copy(format!("{DEPLOY}/dynamic_config.json"), app.join("dynamic_config.json")).unwrap();
    // Stand-ins: the manifest records the policy path, the signature the key,
    // and the SIGSTRUCT view derives MRENCLAVE from the policy's bytes.
    script(
        &bin.join("gramine-manifest"),
        r#"for a; do out=$a; case $a in -Dpolicy_file=*) policy=${a#-Dpolicy_file=};; esac; done
echo "policy=$policy" > "$out""#,
    );
    script(
        &bin.join("gramine-sgx-sign"),
        r#"while [ $# -gt 0 ]; do case $1 in --manifest) m=$2;; --output) o=$2;; --key) k=$2;; esac; shift; done
cp "$m" "$o"; { cat "$m"; echo "key=$k"; } > "$(dirname "$o")/vfl.sig""#,
    );
    script(
        &bin.join("gramine-sgx-sigstruct-view"),
        r#"for a; do sig=$a; done
policy=$(sed -n 's/^policy=//p' "$sig"); key=$(sed -n 's/^key=//p' "$sig")
printf '{"mr_enclave": "%s", "mr_signer": "%s", "isv_prod_id": 1, "isv_svn": 1, "debug_enclave": false}\n' \
  "$(sha256sum "$policy" | cut -d' ' -f1)" "$("$VFL_BIN" attest mrsigner --key "$key")""#,
    );
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/../attest/tests/fixtures/signing-key");
    let party = |name: &str, key: &str| (dir.join(name), format!("{keys}/{key}"));
    let (leader, leader_key) = party("leader", "test-only-enclave-key.pkcs8.pem");
    let (follower, follower_key) = party("follower", "test-only-second-enclave-key.pem");
    let sh = |build: &std::path::Path, key: &str, args: &[&str]| {
        let out = Command::new("bash")
            .arg(format!("{DEPLOY}/vfl-sgx.sh"))
            .args(args)
            .env(
                "PATH",
                format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()),
            )
            .env("VFL_APP_DIR", &app)
            .env("VFL_BUILD_DIR", build)
            .env("VFL_SIGNING_KEY", key)
            .env("VFL_BIN", env!("CARGO_BIN_EXE_vfl"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    for (build, key, role) in [(&leader, &leader_key, "leader"), (&follower, &follower_key, "follower")] {
        let (ok, out) = sh(build, key, &["keygen", role]);
        assert!(ok, "{out}");
        // make refuses before the identities are exchanged.
        let (ok, out) = sh(build, key, &["make"]);
        assert!(!ok && out.contains("trust"), "{out}");
    }
    let leader_id = leader.join("party-identity.json");
    let follower_id = follower.join("party-identity.json");
    let (ok, out) = sh(&leader, &leader_key, &["trust", follower_id.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = sh(&follower, &follower_key, &["trust", leader_id.to_str().unwrap()]);
    assert!(ok, "{out}");
    let policy_l = std::fs::read(leader.join("dynamic_config.json")).unwrap();
    assert_eq!(policy_l, std::fs::read(follower.join("dynamic_config.json")).unwrap());
    let p = vfl_attest::Policy::parse(&policy_l, "policy").unwrap();
    let signer = |k: &str| vfl_attest::mrsigner::from_pem(&std::fs::read(k).unwrap()).unwrap();
    let by_role = |r| p.entries.iter().find(|e| e.role == Some(r)).unwrap();
    assert_eq!(
        by_role(vfl_attest::PartyRole::Leader).mr_signer,
        Some(signer(&leader_key))
    );
    assert_eq!(
        by_role(vfl_attest::PartyRole::Follower).mr_signer,
        Some(signer(&follower_key))
    );
    assert!(p.entries.iter().all(|e| e.mr_enclave_self));
    for (build, key) in [(&leader, &leader_key), (&follower, &follower_key)] {
        let (ok, out) = sh(build, key, &["make"]);
        assert!(ok, "{out}");
    }
    let peer = follower.join("vfl-identity.json");
    let (ok, out) = sh(&leader, &leader_key, &["check-peer", peer.to_str().unwrap()]);
    assert!(ok && out.contains("same enclave"), "{out}");
    // A peer that signed with our own key is not the other party.
    let (ok, out) = sh(
        &leader,
        &leader_key,
        &["check-peer", leader.join("vfl-identity.json").to_str().unwrap()],
    );
    assert!(!ok && out.contains("mr_signer"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
