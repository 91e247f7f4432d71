//! Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/) from
//! the project's own encoders and test fixtures:
//! `cargo run --release -p vfl-cli --example fuzz_seeds -- fuzz/corpus`.

use std::path::{Path, PathBuf};

use prost::Message;
use vfl_attest::devpki::{DevRoot, SimPlatformOptions};
use vfl_attest::seal::{Context, Sealer};
use vfl_attest::{SimAttester, SimIdentity, SimTdIdentity, cert};
use vfl_bridge::pb;
use vfl_data::example::{Value, encode_example};
use vfl_data::tfrecord::RecordWriter;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../attest/tests/fixtures");

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(name), bytes).unwrap();
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz/corpus".into()));
    // RA-TLS certificates of a simulated enclave under the fuzz development
    // root (trusted by the ratls_cert target), collateral valid at its time.
    let root = DevRoot::from_pem(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../attest/tests/fixtures/fuzz/dev-root.pem"
        ))
        .unwrap(),
    )
    .unwrap();
    let id = SimIdentity {
        mr_enclave: [7; 32],
        mr_signer: None,
        isv_prod_id: 1,
        isv_svn: 1,
        debug: false,
    };
    let fuzz_time = 1_750_377_600;
    let a = SimAttester::new(&root, &id, &SimPlatformOptions::fresh(fuzz_time)).unwrap();
    let c = cert::issue(&a).unwrap();
    put(&dir, "ratls_cert", "simulated", &c.cert_der);
    let key = cert::new_key().unwrap();
    let sample_quote = std::fs::read(format!("{FIX}/dcap-qvl/sgx_quote")).unwrap();
    let legacy = cert::build_cert(
        &key,
        &cert::CertEvidence {
            legacy_quote: Some(sample_quote.clone()),
            tcg: None,
            sim: None,
        },
    )
    .unwrap();
    put(&dir, "ratls_cert", "legacy-sample-quote", &legacy);
    // Quotes.
    put(&dir, "quote", "intel-sample", &sample_quote);
    put(
        &dir,
        "quote",
        "simulated",
        &a.platform().quote(a.identity(), &[3; 64]).unwrap(),
    );
    // TDX: Intel's v4 and v5 samples, a simulated TD's quote and certificate.
    put(
        &dir,
        "quote",
        "intel-tdx-v4",
        &std::fs::read(format!("{FIX}/dcap-qvl/tdx_quote")).unwrap(),
    );
    put(
        &dir,
        "quote",
        "intel-tdx-v5-td15ex",
        &std::fs::read(format!("{FIX}/dcap-qvl/tdx_quote_td15ex")).unwrap(),
    );
    let td = SimAttester::new_tdx(
        &root,
        &SimTdIdentity {
            mr_td: [7; 48],
            rtmr: [[1; 48], [2; 48], [3; 48], [4; 48]],
            mr_config_id: [0; 48],
            debug: false,
        },
        &SimPlatformOptions::fresh_tdx(fuzz_time),
    )
    .unwrap();
    put(
        &dir,
        "quote",
        "simulated-tdx",
        &td.platform().quote(td.identity(), &[3; 64]).unwrap(),
    );
    put(&dir, "ratls_cert", "simulated-tdx", &cert::issue(&td).unwrap().cert_der);
    // Policies.
    let deploy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/dynamic_config.json");
    put(&dir, "policy", "shipped", &std::fs::read(deploy).unwrap());
    put(
        &dir,
        "policy",
        "roles",
        format!(
            r#"{{"verify_mr_enclave":"on","verify_mr_signer":"on","verify_isv_prod_id":"on","verify_isv_svn":"on",
                "sgx_mrs":[{{"role":"leader","mr_enclave":"self","mr_signer":"{0}","isv_prod_id":"1","min_isv_svn":"1"}},
                           {{"role":"follower","mode":"simulated","mr_enclave":"self","mr_signer":"{0}","isv_prod_id":"1","isv_svn":"1"}}],
                "allow_simulated":true,"simulated_roots":["{0}"],"allowed_tcb_statuses":["UpToDate","SWHardeningNeeded"],
                "min_tcb_eval_data_number":17,"release_exports":["leader"],"allow_debug":false}}"#,
            "ab".repeat(32)
        )
        .as_bytes(),
    );
    put(
        &dir,
        "policy",
        "tdx",
        format!(
            r#"{{"tdx_mrs":[{{"role":"follower","mr_td":"self","rtmr1":"{0}","rtmr2":"{0}","rtmr3":"{0}"}},
                           {{"role":"leader","mode":"simulated","mr_config_id":"{0}","rtmr0":"{0}"}}],
                "allow_simulated":true,"simulated_roots":["{1}"],"allowed_tcb_statuses":["UpToDate","TDRelaunchAdvised"]}}"#,
            "cd".repeat(48),
            "ab".repeat(32)
        )
        .as_bytes(),
    );
    // Collateral.
    put(
        &dir,
        "collateral",
        "intel-tdx",
        &std::fs::read(format!("{FIX}/dcap-qvl/tdx_quote_collateral.json")).unwrap(),
    );
    put(
        &dir,
        "collateral",
        "intel-sample",
        &std::fs::read(format!("{FIX}/dcap-qvl/sgx_quote_collateral.json")).unwrap(),
    );
    put(
        &dir,
        "collateral",
        "simulated",
        &serde_json::to_vec(a.platform().collateral()).unwrap(),
    );
    // tf.Example and TFRecord.
    let mut ex = Vec::new();
    encode_example(
        &[
            ("example_id", Value::Bytes(b"42")),
            ("y", Value::Int64(&[1])),
            ("loss_mask", Value::Int64(&[0])),
            ("x_0", Value::Int64(&[3, 100])),
            ("x_1", Value::Int64(&[])),
            ("d_0", Value::Float(&[0.5])),
        ],
        &mut ex,
    );
    put(&dir, "tf_example", "leader-row", &ex);
    let mut w = RecordWriter::new(Vec::new());
    w.write_record(&ex).unwrap();
    w.write_record(b"").unwrap();
    w.write_record(&ex).unwrap();
    let records = w.into_inner();
    put(&dir, "tfrecord", "three-records", &records);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &records).unwrap();
    put(&dir, "tfrecord", "three-records-gzip", &gz.finish().unwrap());
    // CSV.
    put(
        &dir,
        "csv",
        "leader",
        b"id,y,x_0,x_1,d_0\n1,0,3|4,,0.5\n\"2\",1,7,100,-1e3\n3,1,\"5|6\",2,0\n",
    );
    // Model files.
    let t = [1.0f32, -2.0, 3.5, 0.0];
    let meta = std::collections::BTreeMap::from([("role".to_string(), "leader".to_string())]);
    let p = std::env::temp_dir().join(format!("vfl-fuzz-seed-{}.safetensors", std::process::id()));
    vfl_trainer::store::write(&p, &[("w".into(), vec![2, 2], &t[..])], &meta, None).unwrap();
    let model = std::fs::read(&p).unwrap();
    let _ = std::fs::remove_file(&p);
    put(&dir, "model_file", "small", &model);
    let sealer = Sealer::from_key([7; 32], "fuzz").unwrap();
    let sealed = sealer
        .seal(&Context::new("checkpoint").with("step", 1).with("run", "r"), &model)
        .unwrap();
    put(&dir, "sealed", "checkpoint", &sealed);
    // Protocol messages.
    let act = pb::FollowerMessage {
        session_id: "s-1".into(),
        seq: 3,
        ack: 2,
        msg: Some(pb::follower_message::Msg::Activations(pb::Activations {
            iteration: 7,
            batch_digest: vec![1; 16],
            train: true,
            tensor: Some(pb::Tensor {
                shape: vec![4, 3],
                data: vec![0u8; 48].into(),
            }),
        })),
    };
    put(&dir, "wire", "activations", &act.encode_to_vec());
    let grad = pb::LeaderMessage {
        seq: 2,
        ack: 3,
        msg: Some(pb::leader_message::Msg::Gradient(pb::Gradient {
            iteration: 7,
            tensor: Some(pb::Tensor {
                shape: vec![4, 3],
                data: vec![0u8; 48].into(),
            }),
            checkpoint_step: 0,
        })),
    };
    put(&dir, "wire", "gradient", &grad.encode_to_vec());
    let hello = pb::HelloRequest {
        protocol_version: 2,
        application_id: "vfl".into(),
        role: "follower".into(),
        run_id: "r".into(),
        checkpoint_steps: vec![10, 20],
        ..Default::default()
    };
    put(&dir, "wire", "hello", &hello.encode_to_vec());
    // Link operations: sends, acknowledgements, arrivals.
    let mut ops = Vec::new();
    for (k, v) in [
        (0u8, 1u64),
        (0, 2),
        (2, 1),
        (1, 1),
        (2, 2),
        (2, 2),
        (2, 5),
        (130, 0),
        (1, 9),
    ] {
        ops.push(k);
        ops.extend_from_slice(&v.to_le_bytes());
    }
    put(&dir, "link", "ops", &ops);
    // The join: partition bits 0, then a Tags chunk and a Matches answer.
    let mut frames = vec![0u8];
    for kind in [
        vfl_join::pb::frame::Kind::Tags(vfl_join::pb::Tags {
            partition: 0,
            tags: [[4u8; 16], [9u8; 16]].concat().into(),
            last: true,
        }),
        vfl_join::pb::frame::Kind::Matches(vfl_join::pb::Matches {
            partition: 0,
            bits: vec![1u8].into(),
        }),
    ] {
        let body = prost::Message::encode_to_vec(&vfl_join::pb::Frame { kind: Some(kind) });
        frames.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frames.extend_from_slice(&body);
    }
    put(&dir, "join_frames", "tags-and-matches", &frames);
    put(
        &dir,
        "join_csv",
        "fate-like",
        b"id,y,x_0,x_1\n1,0,3|4,0.5\n2,1,,abc\n\"3\",1,\"5\",\"x,y\"\n",
    );
    println!("seed corpora written under {}", dir.display());
}
