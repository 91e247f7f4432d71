//! Model files: safetensors (u64 LE header length, JSON header, raw
//! little-endian data) with a SHA-256 of the data section in the header's
//! `__metadata__`, written atomically and deterministically (sealed with our
//! own envelope when encryption at rest is on), and parsed by the
//! `safetensors` crate and verified completely before anything is loaded.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use vfl_fs::write_atomic;

use vfl_attest::seal::{self, Context, Sealer};

use crate::TrainError;

/// Why a model file, checkpoint or run record could not be written, read
/// or used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a {what}: {source}")]
    Json {
        path: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: not a safetensors file: {source}")]
    Format {
        path: String,
        #[source]
        source: safetensors::SafeTensorError,
    },
    #[error("{path}: checksum mismatch: the file is damaged or was altered")]
    Checksum { path: String },
    #[error("{path}: tensor `{name}`: only F32 is supported")]
    Dtype { path: String, name: String },
    #[error("{path}: not encrypted, but encryption at rest is on (--model-key): refusing a plaintext file")]
    Plaintext { path: String },
    #[error("{path}: encrypted: give the key with --model-key (see `vfl model inspect`)")]
    Encrypted { path: String },
    #[error("{path}: written by the {found:?}, not the {expected}")]
    Role {
        path: String,
        found: String,
        expected: &'static str,
    },
    #[error("{path}: written for a different model spec")]
    Model { path: String },
    #[error("{path}: holds step {found:?}, its name says {expected}")]
    Step { path: String, found: String, expected: u64 },
    #[error("{path}: its {key} is {found:?}, expected {expected:?}")]
    Binding {
        path: String,
        key: String,
        found: String,
        expected: String,
    },
    #[error("{path}: holds {found} tensors, the model has {expected}")]
    TensorCount {
        path: String,
        found: usize,
        expected: usize,
    },
    #[error("{path}: tensor `{name}` is missing or has shape {found:?}, the model needs {expected:?}")]
    TensorShape {
        path: String,
        name: String,
        found: Option<Vec<usize>>,
        expected: Vec<usize>,
    },
    #[error("encoding the {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// An I/O error on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
        move |source| {
            TrainError::Store(StoreError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    }

    /// An encoding error of `what`.
    pub fn encode(what: &'static str) -> impl FnOnce(serde_json::Error) -> TrainError {
        move |source| TrainError::Store(StoreError::Encode { what, source })
    }
}

fn name(path: &Path) -> String {
    path.display().to_string()
}

/// Encryption of one file: the key and what the file is (its context,
/// authenticated with the contents).
#[derive(Clone, Copy)]
pub struct Sealing<'a> {
    pub sealer: &'a Sealer,
    pub context: &'a Context,
}

/// A named f32 tensor read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The contents of a file: tensors by name and string metadata.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stored {
    pub tensors: BTreeMap<String, Tensor>,
    pub meta: BTreeMap<String, String>,
}

/// The safetensors bytes of `tensors` (in the given order) and `meta`, with
/// the SHA-256 of the data section in the metadata (`data_sha256`).
///
/// Written here rather than by `safetensors::serialize`, which takes the
/// metadata as a randomly seeded `HashMap` and so writes its keys in a
/// different order every time: outputs must be byte-identical for equal
/// inputs (a released export equals its decrypted sealed copy; builds and
/// runs are compared by digest). Reading goes through the crate.
fn encode(tensors: &[(String, Vec<usize>, &[f32])], meta: &BTreeMap<String, String>) -> Result<Vec<u8>, TrainError> {
    let mut header = Map::new();
    let mut data = Vec::with_capacity(tensors.iter().map(|t| t.2.len() * 4).sum());
    for (name, shape, values) in tensors {
        let begin = data.len();
        for v in *values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let mut m: Map<String, Value> = meta
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    m.insert("data_sha256".into(), Value::String(hex::encode(Sha256::digest(&data))));
    header.insert("__metadata__".into(), Value::Object(m));
    let mut h = serde_json::to_vec(&Value::Object(header)).map_err(StoreError::encode("model file header"))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Writes tensors and metadata atomically (sealed when `sealing` is given).
pub fn write(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    meta: &BTreeMap<String, String>,
    sealing: Option<Sealing<'_>>,
) -> Result<(), TrainError> {
    let plain = encode(tensors, meta)?;
    match sealing {
        None => write_atomic(path, |w| w.write_all(&plain)).map_err(StoreError::io(path)),
        Some(s) => {
            let sealed = s.sealer.seal(s.context, &plain)?;
            write_atomic(path, |w| w.write_all(&sealed)).map_err(StoreError::io(path))
        }
    }
}

/// Reads and fully verifies a file (decryption when sealed, header,
/// offsets, checksum). With `sealing`, only a file sealed with that key and
/// context is accepted; without, an encrypted file is refused.
pub fn read(path: &Path, sealing: Option<Sealing<'_>>) -> Result<Stored, TrainError> {
    let raw = std::fs::read(path).map_err(StoreError::io(path))?;
    let bytes = match (sealing, seal::is_sealed(&raw)) {
        (Some(s), true) => s.sealer.open_file(&raw, s.context, path)?.1,
        (Some(_), false) => return Err(StoreError::Plaintext { path: name(path) }.into()),
        (None, true) => return Err(StoreError::Encrypted { path: name(path) }.into()),
        (None, false) => raw,
    };
    parse(&bytes, path)
}

/// Parses and verifies safetensors bytes (`path` names them in errors): the
/// `safetensors` crate checks the header and the offsets; the data section
/// must match its `data_sha256`; only F32 tensors are taken.
pub fn parse(bytes: &[u8], path: &Path) -> Result<Stored, TrainError> {
    let format = |source| StoreError::Format {
        path: name(path),
        source,
    };
    let (n, header) = SafeTensors::read_metadata(bytes).map_err(format)?;
    let mut out = Stored::default();
    if let Some(m) = header.metadata() {
        out.meta = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    }
    let data = bytes.get(8 + n..).unwrap_or_default();
    let want = out.meta.get("data_sha256").cloned().unwrap_or_default();
    if want != hex::encode(Sha256::digest(data)) {
        return Err(StoreError::Checksum { path: name(path) }.into());
    }
    let st = SafeTensors::deserialize(bytes).map_err(format)?;
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(StoreError::Dtype {
                path: self::name(path),
                name,
            }
            .into());
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.tensors.insert(
            name,
            Tensor {
                shape: view.shape().to_vec(),
                data: values,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("vfl-store-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join("m.safetensors")
    }

    /// A header whose shape's element count overflows is an error, not a
    /// wrapped product that passes the length check (the overflow a fuzzer
    /// finds first; the safetensors crate's check).
    #[test]
    fn a_shape_whose_size_overflows_is_refused() {
        let header = br#"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]},"__metadata__":{"data_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        let e = parse(&bytes, Path::new("x")).unwrap_err();
        assert!(matches!(e, TrainError::Store(StoreError::Format { .. })), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("not a safetensors file") && e.contains("overflow"), "{e}");
    }

    /// Files written before the `safetensors` crate laid them out (tensors
    /// in the caller's order, not sorted) still read: the digest covers the
    /// data section as stored.
    #[test]
    fn files_of_the_earlier_writer_still_read() {
        let data: Vec<u8> = [7.0f32, 1.0, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let header = format!(
            r#"{{"b":{{"dtype":"F32","shape":[1],"data_offsets":[0,4]}},"a":{{"dtype":"F32","shape":[2],"data_offsets":[4,12]}},"__metadata__":{{"data_sha256":"{}"}}}}"#,
            hex::encode(Sha256::digest(&data))
        );
        let mut header = header.into_bytes();
        while header.len() % 8 != 0 {
            header.push(b' ');
        }
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&data);
        let s = parse(&bytes, Path::new("old")).unwrap();
        assert_eq!(s.tensors["a"].data, [1.0, 2.0]);
        assert_eq!(s.tensors["b"].data, [7.0]);
    }

    proptest::proptest! {
        /// Whatever tensors and metadata are written read back the same.
        #[test]
        fn encode_then_parse_round_trips(
            tensors in proptest::collection::btree_map("[a-z_.]{1,12}", proptest::collection::vec(-1e6f32..1e6, 0..40), 0..6),
            meta in proptest::collection::btree_map("[a-z]{1,8}", "[ -~]{0,16}", 0..4),
        ) {
            let list: Vec<(String, Vec<usize>, &[f32])> =
                tensors.iter().map(|(n, v)| (n.clone(), vec![v.len()], &v[..])).collect();
            let bytes = encode(&list, &meta).unwrap();
            let back = parse(&bytes, Path::new("p")).unwrap();
            proptest::prop_assert_eq!(back.tensors.len(), tensors.len());
            for (n, v) in &tensors {
                proptest::prop_assert_eq!(&back.tensors[n].data, v);
                proptest::prop_assert_eq!(&back.tensors[n].shape, &vec![v.len()]);
            }
            for (k, v) in &meta {
                proptest::prop_assert_eq!(&back.meta[k], v);
            }
        }
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let p = tmp("rt");
        let w = [1.0f32, -2.5, 3.0, 0.0];
        let meta = BTreeMap::from([("role".to_string(), "leader".to_string())]);
        write(
            &p,
            &[("a".into(), vec![2, 2], &w[..]), ("b".into(), vec![1], &[7.0][..])],
            &meta,
            None,
        )
        .unwrap();
        let s = read(&p, None).unwrap();
        assert_eq!(s.tensors["a"].data, w);
        assert_eq!(s.tensors["a"].shape, vec![2, 2]);
        assert_eq!(s.meta["role"], "leader");
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        let e = read(&p, None).unwrap_err();
        assert!(matches!(e, TrainError::Store(StoreError::Checksum { .. })), "{e:?}");
        std::fs::write(&p, &bytes[..5]).unwrap();
        assert!(read(&p, None).is_err());
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }
}
