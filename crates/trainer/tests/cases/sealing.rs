//! Encryption at rest of checkpoints and exported models: every sealed
//! file is bound to its job, party, model, policy, run (and step), and
//! refused anywhere else.

use std::path::{Path, PathBuf};

use vfl_attest::seal::{KeySource, SealError, Sealer};
use vfl_nn::{ModelSpec, Role};
use vfl_trainer::checkpoint::{self, Binding, ExportPlan, RunState};
use vfl_trainer::{StoreError, TrainError};

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

/// The leader of job "job" under policy "p1".
fn bind() -> Binding {
    Binding {
        app: "job".into(),
        role: Role::Leader,
        model: spec().fingerprint(),
        policy: "p1".into(),
    }
}

const RUN: &str = "run-a";

/// Saves checkpoint `step` of a fresh leader model of run `RUN`; returns its weights.
fn save(d: &Path, step: u64, sealer: Option<&Sealer>) -> Vec<Vec<f32>> {
    let mut m = vfl_nn::split::LeaderModel::new(&spec());
    let weights: Vec<Vec<f32>> = m.tensors_mut().iter().map(|t| t.data.to_vec()).collect();
    let st = RunState::default();
    checkpoint::save(d, step, &bind(), RUN, m.tensors_mut(), &st, 10, sealer).unwrap();
    weights
}

fn load_as(d: &Path, step: u64, b: &Binding, run: &str, sealer: Option<&Sealer>) -> Result<Vec<Vec<f32>>, TrainError> {
    let mut m = vfl_nn::split::LeaderModel::new(&spec());
    for t in m.tensors_mut() {
        t.data.fill(0.0);
    }
    checkpoint::load(d, step, b, run, m.tensors_mut(), sealer)?;
    Ok(m.tensors_mut().iter().map(|t| t.data.to_vec()).collect())
}

fn load(d: &Path, step: u64, sealer: Option<&Sealer>) -> Result<Vec<Vec<f32>>, TrainError> {
    load_as(d, step, &bind(), RUN, sealer)
}

/// The field a sealed file was refused for, with expected and found values.
fn mismatch(e: TrainError) -> (String, String, String) {
    match e {
        TrainError::Seal(SealError::Mismatch {
            field, expected, got, ..
        }) => (field, expected, got),
        other => panic!("expected a context mismatch, got {other}"),
    }
}

#[test]
fn sealed_checkpoint_round_trips_and_is_not_plaintext() {
    let d = dir("rt");
    let k = key(1);
    let w = save(&d, 10, Some(&k));
    assert_eq!(load(&d, 10, Some(&k)).unwrap(), w);
    let raw = std::fs::read(checkpoint::path(&d, 10)).unwrap();
    assert!(raw.starts_with(b"VFLSEAL2"));
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
    assert!(matches!(e, TrainError::Seal(SealError::Tampered { .. })), "{e}");
}

#[test]
fn a_checkpoint_renamed_to_another_step_is_refused() {
    let d = dir("swap");
    let k = key(1);
    save(&d, 10, Some(&k));
    std::fs::rename(checkpoint::path(&d, 10), checkpoint::path(&d, 20)).unwrap();
    let e = load(&d, 20, Some(&k)).unwrap_err();
    assert_eq!(mismatch(e), ("step".into(), "20".into(), "10".into()));
}

#[test]
fn a_checkpoint_of_another_run_is_refused() {
    let d = dir("run");
    let k = key(1);
    save(&d, 10, Some(&k));
    let e = load_as(&d, 10, &bind(), "run-b", Some(&k)).unwrap_err();
    assert_eq!(mismatch(e), ("run".into(), "run-b".into(), RUN.into()));
}

#[test]
fn a_checkpoint_of_another_job_is_refused() {
    let d = dir("job");
    let k = key(1);
    save(&d, 10, Some(&k));
    let other = Binding {
        app: "other-job".into(),
        ..bind()
    };
    let e = load_as(&d, 10, &other, RUN, Some(&k)).unwrap_err();
    assert_eq!(mismatch(e), ("app".into(), "other-job".into(), "job".into()));
}

#[test]
fn a_checkpoint_of_the_other_party_is_refused() {
    let d = dir("role");
    let k = key(1);
    save(&d, 10, Some(&k));
    let follower = Binding {
        role: Role::Follower,
        ..bind()
    };
    let e = load_as(&d, 10, &follower, RUN, Some(&k)).unwrap_err();
    assert_eq!(mismatch(e), ("role".into(), "follower".into(), "leader".into()));
}

#[test]
fn a_checkpoint_written_under_another_policy_is_refused() {
    let d = dir("policy");
    let k = key(1);
    save(&d, 10, Some(&k));
    let other = Binding {
        policy: "p2".into(),
        ..bind()
    };
    let e = load_as(&d, 10, &other, RUN, Some(&k)).unwrap_err();
    assert_eq!(mismatch(e), ("policy".into(), "p2".into(), "p1".into()));
}

#[test]
fn a_checkpoint_sealed_by_another_build_is_refused() {
    // Another enclave build (another MRENCLAVE) derives another sealing key.
    let dev = dir("build-dev");
    std::fs::create_dir_all(dev.join("keys")).unwrap();
    std::fs::write(dev.join("keys/_sgx_mrenclave"), [1u8; 16]).unwrap();
    let ours = Sealer::open(&KeySource::SgxMrEnclave, &dev).unwrap();
    std::fs::write(dev.join("keys/_sgx_mrenclave"), [2u8; 16]).unwrap();
    let theirs = Sealer::open(&KeySource::SgxMrEnclave, &dev).unwrap();
    let d = dir("build");
    save(&d, 10, Some(&theirs));
    let e = load(&d, 10, Some(&ours)).unwrap_err();
    assert!(matches!(e, TrainError::Seal(SealError::WrongKey { .. })), "{e}");
}

#[test]
fn a_swapped_context_with_a_forged_header_still_fails_authentication() {
    // Rewrite the clear context to claim step 20: the tag covers it.
    let d = dir("forge");
    let k = key(1);
    save(&d, 10, Some(&k));
    let p = checkpoint::path(&d, 10);
    let raw = std::fs::read(&p).unwrap();
    let old = br#""step":"10""#;
    let at = raw.windows(old.len()).position(|w| w == old).unwrap();
    let mut forged = raw.clone();
    forged[at..at + old.len()].copy_from_slice(br#""step":"20""#);
    std::fs::write(checkpoint::path(&d, 20), forged).unwrap();
    let e = load(&d, 20, Some(&k)).unwrap_err();
    assert!(matches!(e, TrainError::Seal(SealError::Tampered { .. })), "{e}");
}

#[test]
fn a_wrong_key_is_refused_naming_both_key_ids() {
    let d = dir("wrongkey");
    save(&d, 10, Some(&key(1)));
    let e = load(&d, 10, Some(&key(2))).unwrap_err();
    match e {
        TrainError::Seal(SealError::WrongKey { theirs, ours, .. }) => {
            assert_eq!((theirs, ours), (key(1).key_id(), key(2).key_id()));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_plaintext_file_is_refused_when_encryption_is_on() {
    let d = dir("plain");
    save(&d, 10, None);
    let e = load(&d, 10, Some(&key(1))).unwrap_err();
    assert!(matches!(e, TrainError::Store(StoreError::Plaintext { .. })), "{e:?}");
    assert!(e.to_string().contains("refusing a plaintext file"), "{e}");
}

#[test]
fn an_encrypted_file_without_a_key_is_refused_clearly() {
    let d = dir("nokey");
    save(&d, 10, Some(&key(1)));
    let e = load(&d, 10, None).unwrap_err();
    assert!(matches!(e, TrainError::Store(StoreError::Encrypted { .. })), "{e:?}");
    assert!(e.to_string().contains("give the key with --model-key"), "{e}");
}

#[test]
fn a_refused_load_leaves_the_model_untouched() {
    let d = dir("untouched");
    save(&d, 10, Some(&key(1)));
    let mut m = vfl_nn::split::LeaderModel::new(&spec());
    let before: Vec<Vec<f32>> = m.tensors_mut().iter().map(|t| t.data.to_vec()).collect();
    assert!(checkpoint::load(&d, 10, &bind(), RUN, m.tensors_mut(), Some(&key(2))).is_err());
    let after: Vec<Vec<f32>> = m.tensors_mut().iter().map(|t| t.data.to_vec()).collect();
    assert_eq!(before, after);
}

fn export(d: &Path, id: &str, b: &Binding, release: &[&str], sealer: Option<&Sealer>) -> Result<PathBuf, TrainError> {
    let release: Vec<String> = release.iter().map(|r| r.to_string()).collect();
    let plan = ExportPlan {
        export_path: d,
        id,
        run: RUN,
        release: &release,
    };
    match b.role {
        Role::Leader => {
            let mut m = vfl_nn::split::LeaderModel::new(&spec());
            checkpoint::export(&plan, b, &spec(), m.tensors_mut(), serde_json::json!({}), sealer)
        }
        Role::Follower => {
            let mut m = vfl_nn::split::FollowerModel::new(&spec());
            checkpoint::export(&plan, b, &spec(), m.tensors_mut(), serde_json::json!({}), sealer)
        }
    }
}

#[test]
fn exported_weights_are_sealed_and_load_back_only_for_their_role() {
    let d = dir("export");
    let k = key(3);
    let out = export(&d, "run1", &bind(), &[], Some(&k)).unwrap();
    assert!(
        std::fs::read(out.join("model.safetensors"))
            .unwrap()
            .starts_with(b"VFLSEAL2")
    );
    // Not released: no plaintext copy.
    assert!(!out.join(checkpoint::PLAIN_EXPORT).exists());
    let mut m = vfl_nn::split::LeaderModel::new(&spec());
    checkpoint::load_export(&d.join("run1"), &bind(), m.tensors_mut(), Some(&k)).unwrap();
    // The leader's file copied over the follower's place is refused.
    std::fs::create_dir_all(d.join("run1/follower")).unwrap();
    std::fs::copy(out.join("model.safetensors"), d.join("run1/follower/model.safetensors")).unwrap();
    let mut f = vfl_nn::split::FollowerModel::new(&spec());
    let follower = Binding {
        role: Role::Follower,
        ..bind()
    };
    let e = checkpoint::load_export(&d.join("run1"), &follower, f.tensors_mut(), Some(&k)).unwrap_err();
    assert_eq!(mismatch(e), ("role".into(), "follower".into(), "leader".into()));
}

#[test]
fn a_released_export_is_also_written_in_plaintext_and_equals_the_sealed_one() {
    let d = dir("release");
    let k = key(3);
    let follower = Binding {
        role: Role::Follower,
        ..bind()
    };
    let out = export(&d, "run1", &follower, &["follower", "leader"], Some(&k)).unwrap();
    let plain = vfl_trainer::store::read(&out.join(checkpoint::PLAIN_EXPORT), None).unwrap();
    let ctx = follower.export(RUN, &["follower".into(), "leader".into()]);
    let sealed = vfl_trainer::store::read(
        &out.join("model.safetensors"),
        Some(vfl_trainer::store::Sealing {
            sealer: &k,
            context: &ctx,
        }),
    )
    .unwrap();
    assert!(!plain.tensors.is_empty());
    assert_eq!(plain, sealed);
    // Released for the leader only: the follower's export stays sealed.
    let only_leader = export(&d, "run2", &follower, &["leader"], Some(&k)).unwrap();
    assert!(!only_leader.join(checkpoint::PLAIN_EXPORT).exists());
}

#[test]
fn an_unsafe_export_id_is_refused() {
    let d = dir("exportid");
    for id in ["../x", "/abs", "a/b", "..", ".", "", "a\nb"] {
        let e = export(&d, id, &bind(), &[], Some(&key(1))).unwrap_err();
        assert!(matches!(e, TrainError::UnsafeExportId { .. }), "{id:?}: {e}");
    }
    assert!(!d.join("x").exists() && !Path::new("/abs").exists());
    assert!(export(&d, "1795766453-4f3ccd13-1", &bind(), &[], Some(&key(1))).is_ok());
}

#[test]
fn the_run_record_round_trips_and_never_lowers_the_committed_step() {
    let d = dir("record");
    let k = key(4);
    assert_eq!(checkpoint::read_record(&d, &bind(), Some(&k)).unwrap(), None);
    checkpoint::commit(&d, &bind(), Some(&k), "r1", 30).unwrap();
    checkpoint::commit(&d, &bind(), Some(&k), "r1", 20).unwrap();
    let rec = checkpoint::read_record(&d, &bind(), Some(&k)).unwrap().unwrap();
    assert_eq!((rec.run_id.as_str(), rec.committed_step), ("r1", 30));
    // Sealed: another job cannot read it, and a changed byte is refused.
    let other = Binding {
        app: "other".into(),
        ..bind()
    };
    let e = checkpoint::read_record(&d, &other, Some(&k)).unwrap_err();
    assert_eq!(mismatch(e).0, "app");
    let p = d.join("run.sealed");
    let mut raw = std::fs::read(&p).unwrap();
    let n = raw.len();
    raw[n - 1] ^= 1;
    std::fs::write(&p, raw).unwrap();
    let e = checkpoint::read_record(&d, &bind(), Some(&k)).unwrap_err();
    assert!(matches!(e, TrainError::Seal(SealError::Tampered { .. })), "{e}");
}

#[test]
fn sgx_sealing_keys_come_from_the_attestation_device() {
    let d = dir("sgxkey");
    std::fs::create_dir_all(d.join("keys")).unwrap();
    std::fs::write(d.join("keys/_sgx_mrenclave"), [8u8; 16]).unwrap();
    let a = Sealer::open(&KeySource::SgxMrEnclave, &d).unwrap();
    assert_eq!(a.key_id(), Sealer::open(&KeySource::SgxMrEnclave, &d).unwrap().key_id());
    std::fs::write(d.join("keys/_sgx_mrenclave"), [8u8; 15]).unwrap();
    let e = Sealer::open(&KeySource::SgxMrEnclave, &d).unwrap_err().to_string();
    assert!(e.contains("expected a 16-byte sealing key"), "{e}");
    let e = Sealer::open(&KeySource::SgxMrEnclave, Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("only inside a Gramine SGX enclave"), "{e}");
}

#[test]
fn the_signer_sealing_key_is_no_longer_accepted() {
    let e = "sgx-mrsigner".parse::<KeySource>().unwrap_err();
    assert!(e.contains("signing key"), "{e}");
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

/// Property tests of checkpoint save and load (one test binary).
#[path = "roundtrip.rs"]
mod roundtrip;

// Plaintext files (development runs without --model-key) carry the same
// binding in their metadata, checked on load.

#[test]
fn a_plaintext_checkpoint_of_the_other_party_is_refused() {
    let d = dir("plain-role");
    save(&d, 10, None);
    let follower = Binding {
        role: Role::Follower,
        ..bind()
    };
    let e = load_as(&d, 10, &follower, RUN, None).unwrap_err();
    assert!(
        matches!(&e, TrainError::Store(StoreError::Role { found, expected: "follower", .. }) if found == "leader"),
        "{e:?}"
    );
}

#[test]
fn a_plaintext_checkpoint_of_another_model_is_refused() {
    let d = dir("plain-model");
    save(&d, 10, None);
    let other = Binding {
        model: "another-spec".into(),
        ..bind()
    };
    let e = load_as(&d, 10, &other, RUN, None).unwrap_err();
    assert!(matches!(e, TrainError::Store(StoreError::Model { .. })), "{e:?}");
}

#[test]
fn a_plaintext_checkpoint_of_another_run_is_refused() {
    let d = dir("plain-run");
    save(&d, 10, None);
    let e = load_as(&d, 10, &bind(), "run-b", None).unwrap_err();
    assert!(
        matches!(&e, TrainError::Store(StoreError::Binding { key, .. }) if key == "run"),
        "{e:?}"
    );
}

#[test]
fn a_plaintext_checkpoint_renamed_to_another_step_is_refused() {
    let d = dir("plain-step");
    save(&d, 10, None);
    std::fs::rename(checkpoint::path(&d, 10), checkpoint::path(&d, 20)).unwrap();
    let e = load(&d, 20, None).unwrap_err();
    assert!(
        matches!(e, TrainError::Store(StoreError::Step { expected: 20, .. })),
        "{e:?}"
    );
}

#[test]
fn a_checkpoint_of_another_architecture_is_refused_before_anything_loads() {
    let d = dir("plain-shape");
    save(&d, 10, None);
    // The same binding (the model fingerprint it names matches), but a
    // model whose tower is wider: a tensor's shape differs.
    let mut m = vfl_nn::split::LeaderModel::new(&spec_with_units(5));
    let before: Vec<Vec<f32>> = m.tensors_mut().iter().map(|t| t.data.to_vec()).collect();
    let e = checkpoint::load(&d, 10, &bind(), RUN, m.tensors_mut(), None).unwrap_err();
    assert!(
        matches!(&e, TrainError::Store(StoreError::TensorShape { found: Some(_), .. })),
        "{e:?}"
    );
    let after: Vec<Vec<f32>> = m.tensors_mut().iter().map(|t| t.data.to_vec()).collect();
    assert_eq!(before, after, "a refused load changed the model");
}

#[test]
fn a_plaintext_export_of_another_job_or_policy_is_refused() {
    let d = dir("plain-export");
    export(&d, "run1", &bind(), &[], None).unwrap();
    for (key, other) in [
        (
            "app",
            Binding {
                app: "other-job".into(),
                ..bind()
            },
        ),
        (
            "policy",
            Binding {
                policy: "p2".into(),
                ..bind()
            },
        ),
    ] {
        let mut m = vfl_nn::split::LeaderModel::new(&spec());
        let e = checkpoint::load_export(&d.join("run1"), &other, m.tensors_mut(), None).unwrap_err();
        assert!(
            matches!(&e, TrainError::Store(StoreError::Binding { key: k, .. }) if k == key),
            "{key}: {e:?}"
        );
    }
}

#[test]
fn a_missing_checkpoint_is_an_io_error_naming_the_file() {
    let d = dir("plain-missing");
    let e = load(&d, 10, None).unwrap_err();
    assert!(
        matches!(&e, TrainError::Store(StoreError::Io { path, .. }) if path.contains("ckpt-")),
        "{e:?}"
    );
}

fn spec_with_units(units: usize) -> ModelSpec {
    let text = SPEC.replace(
        "layers = [{ units = 4, activation = \"relu\" }]",
        &format!("layers = [{{ units = {units}, activation = \"relu\" }}]"),
    );
    ModelSpec::from_toml_str(&text, "wider").unwrap()
}
