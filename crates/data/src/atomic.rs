//! Atomic file output: write to a temporary file in the same directory,
//! flush and fsync it, then rename it over the target and fsync the
//! directory. Readers see the old file or the complete new one, never a
//! half-written one; a failed write leaves no temporary file behind.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Writes `path` atomically with the bytes `write` produces.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(temp_name(&name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The temporary file of a write of `name` by process `pid`.
fn temp_name(name: &str, pid: u32) -> String {
    format!(".{name}.tmp-{pid}")
}

/// Removes the temporary files that writes of files named `prefix*` in
/// `dir` left behind when their process was killed (those of other
/// processes: use only on a directory that one process writes). Returns how
/// many were removed.
pub fn remove_stale_temps(dir: &Path, prefix: &str) -> usize {
    let ours = std::process::id().to_string();
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            // `.<name>.tmp-<pid>`, as `temp_name` makes them.
            n.strip_prefix('.')
                .and_then(|rest| rest.rsplit_once(".tmp-"))
                .is_some_and(|(name, pid)| name.starts_with(prefix) && pid != ours)
        })
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_or_nothing() {
        let dir = std::env::temp_dir().join(format!("vfl-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.bin");
        write_atomic(&p, |w| w.write_all(b"first")).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let err = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        });
        assert!(err.is_err());
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temps_of_other_processes_are_removed_ours_and_others_kept() {
        let dir = std::env::temp_dir().join(format!("vfl-atomic-stale-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dead = dir.join(temp_name("ckpt-1.bin", u32::MAX));
        let ours = dir.join(temp_name("ckpt-2.bin", std::process::id()));
        let other_kind = dir.join(temp_name("model.bin", u32::MAX));
        let target = dir.join("ckpt-1.bin");
        for p in [&dead, &ours, &other_kind, &target] {
            fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(&dir, "ckpt-"), 1);
        assert!(!dead.exists());
        assert!(ours.exists() && other_kind.exists() && target.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
