//! Atomic, durable file output, the one implementation every crate of
//! enclave-vfl writes its files with.
//!
//! A write goes to a new temporary file in the target's directory, named
//! `.<name>.tmp-<pid>-<random>` and created exclusively (`O_CREAT|O_EXCL`
//! through the `tempfile` crate, so a planted file or symlink of that name
//! is never followed or reused); it is flushed and fsynced, renamed over the
//! target, and the directory is fsynced. Readers see the old file or the
//! complete new one, never a half-written one; a failed write leaves no
//! temporary file behind, and a killed one leaves a temporary that
//! [`remove_stale_temps`] recognises.

#[cfg(unix)]
use std::fs::Permissions;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Who may read the written file (Unix permissions; elsewhere ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// 0644: data, exports, policies.
    Shared,
    /// 0600: keys and other secrets.
    Private,
}

/// Writes `path` atomically with the bytes `write` produces (buffered), as
/// [`Access::Shared`].
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    write_with(path, Access::Shared, write)
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8], access: Access) -> io::Result<()> {
    write_with(path, access, |w| w.write_all(bytes))
}

/// Writes `path` atomically with the bytes `write` produces; the parent
/// directory is created if missing.
pub fn write_with(path: &Path, access: Access, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .to_string_lossy();
    fs::create_dir_all(dir)?;
    let prefix = format!(".{name}.tmp-{}-", std::process::id());
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).rand_bytes(8);
    #[cfg(unix)]
    builder.permissions(permissions(access));
    #[cfg(not(unix))]
    let _ = access;
    let tmp = builder.tempfile_in(dir)?;
    let _in_flight = InFlight::register(tmp.path());
    let mut w = BufWriter::with_capacity(1 << 20, tmp);
    write(&mut w)?;
    let tmp = w.into_inner().map_err(|e| e.into_error())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Make the rename itself durable.
    File::open(dir)?.sync_all()
}

/// The mode the temporary file is created with (the umask applies, as for
/// any new file): 0666 for shared files, 0600 for private ones.
#[cfg(unix)]
fn permissions(access: Access) -> Permissions {
    use std::os::unix::fs::PermissionsExt;
    Permissions::from_mode(match access {
        Access::Shared => 0o666,
        Access::Private => 0o600,
    })
}

/// Temporary files this process is writing now: [`remove_stale_temps`]
/// leaves them alone whatever their pid (in a container every run may be
/// pid 1, so the pid alone cannot tell a crashed run's leftovers from ours).
static IN_FLIGHT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

struct InFlight(PathBuf);

impl InFlight {
    fn register(p: &Path) -> Self {
        IN_FLIGHT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(p.to_path_buf());
        InFlight(p.to_path_buf())
    }

    fn contains(p: &Path) -> bool {
        IN_FLIGHT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|q| q == p)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut v = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = v.iter().position(|q| *q == self.0) {
            v.swap_remove(i);
        }
    }
}

/// The pid in a temporary file name of ours for a file named `prefix*`:
/// `.<name>.tmp-<pid>-<random>`, or `.<name>.tmp-<pid>` as written before
/// the random part was added.
fn temp_pid<'a>(file_name: &'a str, prefix: &str) -> Option<&'a str> {
    let (name, rest) = file_name.strip_prefix('.')?.rsplit_once(".tmp-")?;
    let pid = rest.split_once('-').map_or(rest, |(pid, _random)| pid);
    (name.starts_with(prefix) && !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit())).then_some(pid)
}

/// Removes the temporary files that writes of files named `prefix*` in
/// `dir` left behind when their process was killed: every such file but
/// those this process is writing now (use only on a directory that one
/// process writes). Returns how many were removed.
pub fn remove_stale_temps(dir: &Path, prefix: &str) -> usize {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| temp_pid(&e.file_name().to_string_lossy(), prefix).is_some() && !InFlight::contains(&e.path()))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> tempfile::TempDir {
        tempfile::Builder::new().prefix(name).tempdir().unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_whole_file_or_nothing() {
        let d = scratch("vfl-fs-");
        let p = d.path().join("f.bin");
        write_atomic(&p, |w| w.write_all(b"first")).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let err = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk full"))
        });
        assert_eq!(err.unwrap_err().to_string(), "disk full");
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(names(d.path()), ["f.bin"]);
    }

    /// Private files are 0600; shared ones 0666 less the umask (as any
    /// new file), so never more than 0666 and always readable by the owner.
    #[cfg(unix)]
    #[test]
    fn private_files_are_0600_and_shared_ones_follow_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = scratch("vfl-fs-mode-");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let (k, s) = (d.path().join("k"), d.path().join("s"));
        write_bytes(&k, b"x", Access::Private).unwrap();
        write_bytes(&s, b"x", Access::Shared).unwrap();
        assert_eq!(mode(&k), 0o600);
        let plain = d.path().join("plain");
        File::create(&plain).unwrap();
        assert_eq!(mode(&s), mode(&plain), "a shared file gets what File::create gives");
    }

    /// A symlink planted at the target is replaced, not followed: the file
    /// it points to keeps its contents.
    #[cfg(unix)]
    #[test]
    fn a_symlink_at_the_target_is_replaced_not_followed() {
        let d = scratch("vfl-fs-link-");
        let victim = d.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        let p = d.path().join("out");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        write_bytes(&p, b"new", Access::Shared).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert!(!fs::symlink_metadata(&p).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }

    #[test]
    fn the_parent_directory_is_created() {
        let d = scratch("vfl-fs-dir-");
        let p = d.path().join("a/b/c.json");
        write_bytes(&p, b"{}", Access::Shared).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{}");
    }

    /// Leftovers of killed writes are removed, also those carrying our own
    /// pid (a container's every run may be pid 1) and the earlier name
    /// form; other files stay.
    #[test]
    fn stale_temps_are_removed_other_files_kept() {
        let d = scratch("vfl-fs-stale-");
        let dead = d.path().join(".ckpt-1.bin.tmp-4294967295-abcdefgh");
        let same_pid = d
            .path()
            .join(format!(".ckpt-2.bin.tmp-{}-abcdefgh", std::process::id()));
        let old_form = d.path().join(".ckpt-4.bin.tmp-17");
        let other_kind = d.path().join(".model.bin.tmp-4294967295-abcdefgh");
        let not_a_pid = d.path().join(".ckpt-3.bin.tmp-x1-abcdefgh");
        let target = d.path().join("ckpt-1.bin");
        for p in [&dead, &same_pid, &old_form, &other_kind, &not_a_pid, &target] {
            fs::write(p, b"x").unwrap();
        }
        assert_eq!(remove_stale_temps(d.path(), "ckpt-"), 3);
        assert!(!dead.exists() && !same_pid.exists() && !old_form.exists());
        assert!(other_kind.exists() && not_a_pid.exists() && target.exists());
    }

    /// A write in progress is not taken for a leftover.
    #[test]
    fn a_write_in_progress_is_kept() {
        let d = scratch("vfl-fs-busy-");
        let p = d.path().join("ckpt-9.bin");
        write_atomic(&p, |w| {
            assert_eq!(remove_stale_temps(d.path(), "ckpt-"), 0);
            w.write_all(b"x")
        })
        .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"x");
    }

    /// What a killed write leaves is what the cleanup recognises.
    #[test]
    fn temporary_names_are_recognised() {
        let d = scratch("vfl-fs-names-");
        let p = d.path().join("ckpt-7.bin");
        write_atomic(&p, |w| {
            let tmp = names(d.path())
                .into_iter()
                .find(|n| n.starts_with(".ckpt-7.bin.tmp-"))
                .unwrap();
            assert_eq!(temp_pid(&tmp, "ckpt-"), Some(std::process::id().to_string().as_str()));
            w.write_all(b"x")
        })
        .unwrap();
    }
}
