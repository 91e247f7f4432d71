//! Model files: safetensors (https://github.com/huggingface/safetensors
//! format: u64 LE header length, JSON header, raw little-endian data) with
//! a SHA-256 of the data section in the header's `__metadata__`, written
//! atomically and verified completely before anything is loaded.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use vfl_fs::write_atomic;

use vfl_attest::seal::{self, Context, Sealer};

use crate::TrainError;

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

/// Writes tensors (in the given order) and metadata atomically.
pub fn write(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    meta: &BTreeMap<String, String>,
    sealing: Option<Sealing<'_>>,
) -> Result<(), TrainError> {
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
    let mut h = serde_json::to_vec(&Value::Object(header)).map_err(|e| TrainError::Store(e.to_string()))?;
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let io = |e: std::io::Error| TrainError::Store(format!("{}: {e}", path.display()));
    match sealing {
        None => write_atomic(path, |w| {
            w.write_all(&(h.len() as u64).to_le_bytes())?;
            w.write_all(&h)?;
            w.write_all(&data)
        })
        .map_err(io),
        Some(s) => {
            let mut plain = Vec::with_capacity(8 + h.len() + data.len());
            plain.extend_from_slice(&(h.len() as u64).to_le_bytes());
            plain.extend_from_slice(&h);
            plain.extend_from_slice(&data);
            let sealed = s.sealer.seal(s.context, &plain)?;
            write_atomic(path, |w| w.write_all(&sealed)).map_err(io)
        }
    }
}

/// Reads and fully verifies a file (decryption when sealed, header,
/// offsets, checksum). With `sealing`, only a file sealed with that key and
/// context is accepted; without, an encrypted file is refused.
pub fn read(path: &Path, sealing: Option<Sealing<'_>>) -> Result<Stored, TrainError> {
    let bad = |why: String| TrainError::Store(format!("{}: {why}", path.display()));
    let raw = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let bytes = match (sealing, seal::is_sealed(&raw)) {
        (Some(s), true) => s.sealer.open_file(&raw, s.context, path)?.1,
        (Some(_), false) => {
            return Err(bad(
                "not encrypted, but encryption at rest is on (--model-key): refusing a plaintext file".into(),
            ));
        }
        (None, true) => {
            return Err(bad(
                "encrypted: give the key with --model-key (see `vfl model inspect`)".into(),
            ));
        }
        (None, false) => raw,
    };
    parse(&bytes, path)
}

/// Parses and verifies safetensors bytes (`path` names them in errors).
pub fn parse(bytes: &[u8], path: &Path) -> Result<Stored, TrainError> {
    let bad = |why: String| TrainError::Store(format!("{}: {why}", path.display()));
    if bytes.len() < 8 {
        return Err(bad("too short for a safetensors file".into()));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) as usize;
    if n > bytes.len() - 8 {
        return Err(bad(format!("header length {n} runs past the end of the file")));
    }
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| bad(format!("bad header: {e}")))?;
    let data = &bytes[8 + n..];
    let mut out = Stored::default();
    if let Some(Value::Object(m)) = header.get("__metadata__") {
        for (k, v) in m {
            out.meta.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
        }
    }
    let want = out.meta.get("data_sha256").cloned().unwrap_or_default();
    if want != hex::encode(Sha256::digest(data)) {
        return Err(bad("checksum mismatch: the file is damaged or was altered".into()));
    }
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| info.get(k).ok_or_else(|| bad(format!("tensor `{name}`: no `{k}`")));
        if field("dtype")?.as_str() != Some("F32") {
            return Err(bad(format!("tensor `{name}`: only F32 is supported")));
        }
        let shape: Vec<usize> =
            serde_json::from_value(field("shape")?.clone()).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        let offs: [usize; 2] =
            serde_json::from_value(field("data_offsets")?.clone()).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        let bytes_needed = shape
            .iter()
            .try_fold(4usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {shape:?} is too large")))?;
        if offs[0] > offs[1] || offs[1] > data.len() || offs[1] - offs[0] != bytes_needed {
            return Err(bad(format!(
                "tensor `{name}`: offsets {offs:?} do not fit shape {shape:?}"
            )));
        }
        let values = data[offs[0]..offs[1]]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.tensors.insert(name.clone(), Tensor { shape, data: values });
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

    /// A header whose shape's element count overflows is an error naming
    /// the tensor, not a wrapped product that passes the length check (the
    /// overflow a fuzzer finds first).
    #[test]
    fn a_shape_whose_size_overflows_is_refused() {
        let header = br#"{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]},"__metadata__":{"data_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        let e = parse(&bytes, Path::new("x")).unwrap_err().to_string();
        assert!(e.contains("tensor `w`") && e.contains("too large"), "{e}");
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
        let e = read(&p, None).unwrap_err().to_string();
        assert!(e.contains("checksum"), "{e}");
        std::fs::write(&p, &bytes[..5]).unwrap();
        assert!(read(&p, None).is_err());
        std::fs::remove_dir_all(p.parent().unwrap()).unwrap();
    }
}
