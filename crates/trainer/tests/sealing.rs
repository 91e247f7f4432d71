//! Encryption at rest of checkpoints and exported models.

use std::path::{Path, PathBuf};

use vfl_nn::{ModelSpec, Role};
use vfl_trainer::checkpoint::{self, RunState};
use vfl_trainer::seal::{KeySource, Sealer};

const SPEC: &str = r#"
name = "seal-test"
seed = 5
optimizer = { kind = "adam", learning_rate = 0.01 }
[leader]
sparse = [{ prefix = "x_", count = 2, vocab = 11, dim = 4 }]
layers = [{ units = 4, activation = "relu" }]
[follower]
sparse = [{ prefix = "x_", count = 2, vocab = 11, dim = 4 }]
layers = [{ units = 3 }]
[head]
layers = [{ units = 1 }]
loss = "sigmoid_cross_entropy"
"#;

fn spec() -> ModelSpec {
    ModelSpec::from_toml_str(SPEC, "test").unwrap()
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vfl-seal-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn key(byte: u8) -> Sealer {
    Sealer::from_key([byte; 32], "test").unwrap()
}

/// Saves checkpoint `step` of a fresh leader model; returns its weights.
fn save(d: &Path, step: u64, sealer: Option<&Sealer>) -> Vec<Vec<f32>> {
    let mut m = vfl_nn::split::LeaderModel::new(&spec());
    let weights: Vec<Vec<f32>> = m.tensors_mut().iter().map(|t| t.data.to_vec()).collect();
    let st = RunState::default();
    checkpoint::save(
        d,
        step,
        Role::Leader,
        &spec().fingerprint(),
        m.tensors_mut(),
        &st,
        10,
        sealer,
    )
    .unwrap();
    weights
}

fn load(d: &Path, step: u64, sealer: Option<&Sealer>) -> Result<Vec<Vec<f32>>, String> {
    let mut m = vfl_nn::split::LeaderModel::new(&spec());
    for t in m.tensors_mut() {
        t.data.fill(0.0);
    }
    checkpoint::load(d, step, Role::Leader, &spec().fingerprint(), m.tensors_mut(), sealer)
        .map_err(|e| e.to_string())?;
    Ok(m.tensors_mut().iter().map(|t| t.data.to_vec()).collect())
}

#[test]
fn sealed_checkpoint_round_trips_and_is_not_plaintext() {
    let d = dir("rt");
    let k = key(1);
    let w = save(&d, 10, Some(&k));
    assert_eq!(load(&d, 10, Some(&k)).unwrap(), w);
    let raw = std::fs::read(checkpoint::path(&d, 10)).unwrap();
    assert!(raw.starts_with(b"VFLSEAL1"));
    assert!(
        !raw.windows(b"data_sha256".len()).any(|x| x == b"data_sha256"),
        "metadata visible in the encrypted file"
    );
}

#[test]
fn a_flipped_byte_is_refused() {
    let d = dir("flip");
    let k = key(1);
    save(&d, 10, Some(&k));
    let p = checkpoint::path(&d, 10);
    let mut raw = std::fs::read(&p).unwrap();
    let n = raw.len();
    raw[n / 2] ^= 0x01;
    std::fs::write(&p, raw).unwrap();
    let e = load(&d, 10, Some(&k)).unwrap_err();
    assert!(e.contains("authentication failed"), "{e}");
}

#[test]
fn a_checkpoint_renamed_to_another_step_is_refused() {
    let d = dir("swap");
    let k = key(1);
    save(&d, 10, Some(&k));
    std::fs::rename(checkpoint::path(&d, 10), checkpoint::path(&d, 20)).unwrap();
    let e = load(&d, 20, Some(&k)).unwrap_err();
    assert!(
        e.contains("step 10") && e.contains("expected") && e.contains("step 20"),
        "{e}"
    );
}

#[test]
fn a_swapped_context_with_a_forged_header_still_fails_authentication() {
    // Rewrite the clear context to claim step 20: the tag covers it.
    let d = dir("forge");
    let k = key(1);
    save(&d, 10, Some(&k));
    let p = checkpoint::path(&d, 10);
    let raw = std::fs::read(&p).unwrap();
    let old = b"step 10";
    let at = raw.windows(old.len()).position(|w| w == old).unwrap();
    let mut forged = raw.clone();
    forged[at..at + old.len()].copy_from_slice(b"step 20");
    std::fs::write(checkpoint::path(&d, 20), forged).unwrap();
    let e = load(&d, 20, Some(&k)).unwrap_err();
    assert!(e.contains("authentication failed"), "{e}");
}

#[test]
fn a_wrong_key_is_refused_naming_both_key_ids() {
    let d = dir("wrongkey");
    save(&d, 10, Some(&key(1)));
    let e = load(&d, 10, Some(&key(2))).unwrap_err();
    assert!(
        e.contains("encrypted with another key") && e.contains(&key(2).key_id()),
        "{e}"
    );
}

#[test]
fn a_plaintext_file_is_refused_when_encryption_is_on() {
    let d = dir("plain");
    save(&d, 10, None);
    let e = load(&d, 10, Some(&key(1))).unwrap_err();
    assert!(e.contains("refusing a plaintext file"), "{e}");
}

#[test]
fn an_encrypted_file_without_a_key_is_refused_clearly() {
    let d = dir("nokey");
    save(&d, 10, Some(&key(1)));
    let e = load(&d, 10, None).unwrap_err();
    assert!(e.contains("encrypted: give the key with --model-key"), "{e}");
}

#[test]
fn a_refused_load_leaves_the_model_untouched() {
    let d = dir("untouched");
    save(&d, 10, Some(&key(1)));
    let mut m = vfl_nn::split::LeaderModel::new(&spec());
    let before: Vec<Vec<f32>> = m.tensors_mut().iter().map(|t| t.data.to_vec()).collect();
    assert!(
        checkpoint::load(
            &d,
            10,
            Role::Leader,
            &spec().fingerprint(),
            m.tensors_mut(),
            Some(&key(2))
        )
        .is_err()
    );
    let after: Vec<Vec<f32>> = m.tensors_mut().iter().map(|t| t.data.to_vec()).collect();
    assert_eq!(before, after);
}

#[test]
fn exported_weights_are_sealed_and_load_back_only_for_their_role() {
    let d = dir("export");
    let k = key(3);
    let mut m = vfl_nn::split::LeaderModel::new(&spec());
    let out = checkpoint::export(
        &d,
        "run1",
        Role::Leader,
        &spec(),
        m.tensors_mut(),
        serde_json::json!({}),
        Some(&k),
    )
    .unwrap();
    assert!(
        std::fs::read(out.join("model.safetensors"))
            .unwrap()
            .starts_with(b"VFLSEAL1")
    );
    checkpoint::load_export(
        &d.join("run1"),
        Role::Leader,
        &spec().fingerprint(),
        m.tensors_mut(),
        Some(&k),
    )
    .unwrap();
    // The leader's file copied over the follower's place is refused.
    std::fs::create_dir_all(d.join("run1/follower")).unwrap();
    std::fs::copy(out.join("model.safetensors"), d.join("run1/follower/model.safetensors")).unwrap();
    let mut f = vfl_nn::split::FollowerModel::new(&spec());
    let e = checkpoint::load_export(
        &d.join("run1"),
        Role::Follower,
        &spec().fingerprint(),
        f.tensors_mut(),
        Some(&k),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("expected") && e.contains("follower"), "{e}");
}

#[test]
fn sgx_sealing_keys_come_from_the_attestation_device() {
    let d = dir("sgxkey");
    std::fs::create_dir_all(d.join("keys")).unwrap();
    std::fs::write(d.join("keys/_sgx_mrsigner"), [9u8; 16]).unwrap();
    std::fs::write(d.join("keys/_sgx_mrenclave"), [8u8; 16]).unwrap();
    let a = Sealer::open(&KeySource::SgxMrSigner, &d).unwrap();
    let b = Sealer::open(&KeySource::SgxMrEnclave, &d).unwrap();
    assert_ne!(a.key_id(), b.key_id());
    assert_eq!(a.key_id(), Sealer::open(&KeySource::SgxMrSigner, &d).unwrap().key_id());
    std::fs::write(d.join("keys/_sgx_mrsigner"), [9u8; 15]).unwrap();
    let e = Sealer::open(&KeySource::SgxMrSigner, &d).unwrap_err().to_string();
    assert!(e.contains("expected a 16-byte sealing key"), "{e}");
    let e = Sealer::open(&KeySource::SgxMrSigner, Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("only inside a Gramine SGX enclave"), "{e}");
}

#[test]
fn key_files_and_variables() {
    let d = dir("keyfile");
    std::fs::write(d.join("raw.key"), [4u8; 32]).unwrap();
    std::fs::write(d.join("hex.key"), format!("{}\n", "04".repeat(32))).unwrap();
    let raw = Sealer::open(&KeySource::File(d.join("raw.key")), &d).unwrap();
    let hex = Sealer::open(&KeySource::File(d.join("hex.key")), &d).unwrap();
    assert_eq!(raw.key_id(), hex.key_id());
    std::fs::write(d.join("short.key"), "abcd").unwrap();
    let e = Sealer::open(&KeySource::File(d.join("short.key")), &d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("64 hex digits"), "{e}");
    let e = Sealer::open(&KeySource::Env("VFL_TEST_SURELY_UNSET_KEY".into()), &d)
        .unwrap_err()
        .to_string();
    assert!(e.contains("VFL_TEST_SURELY_UNSET_KEY is not set"), "{e}");
    assert!("bogus".parse::<KeySource>().is_err());
    assert_eq!("file:/k".parse::<KeySource>().unwrap(), KeySource::File("/k".into()));
}
