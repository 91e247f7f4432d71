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
        trusted.contains(&"file:/app/dynamic_config.json".to_string()),
        "the policy must be measured: {trusted:?}"
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
    assert!(joined.contains("--model-key sgx-mrsigner"), "{joined}");
    for bad in ["--insecure-no-tls", "simulated", "--model-key none"] {
        assert!(!joined.contains(bad), "{joined}");
    }
    // Run it outside an enclave: clap must accept every flag (a usage error
    // exits with 2); the run then stops at the missing policy file.
    let out = Command::new(env!("CARGO_BIN_EXE_vfl"))
        .args(&argv[1..])
        .env("VFL_ROLE", "leader")
        .env("VFL_LOCAL_ADDR", "127.0.0.1:0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/app/dynamic_config.json"), "{err}");
}
