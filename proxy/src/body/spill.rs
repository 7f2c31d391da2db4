//! Spill files: where a request body too large for memory is kept for replay. Each file is
//! created owner-only (0600, `O_EXCL`) in the spill directory (kept 0700) and unlinked at once,
//! so only its open descriptors keep it: it is gone when the request's last reader closes,
//! however the request ends, and even if the process dies. Named files can only be left by a
//! crash between create and unlink; [`clear_stale`] removes those (and only those) at start.

use super::request::{Budget, Permit};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Every spill file's name starts with this and ends with [`SUFFIX`]; nothing else in the
/// directory is ever touched.
pub const PREFIX: &str = "keyrelay-spill-";
pub const SUFFIX: &str = ".tmp";

/// Names unique within this process; the PID makes them unique across processes.
static SEQ: AtomicU64 = AtomicU64::new(0);

fn fresh_name() -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{n}{SUFFIX}", std::process::id())
}

/// The spill directory and the spill space (`max_spill_bytes`) shared by every request.
#[derive(Debug)]
pub struct SpillDir {
    path: PathBuf,
    space: Arc<Budget>,
}

impl SpillDir {
    pub fn new(path: PathBuf, space: Arc<Budget>) -> SpillDir {
        SpillDir { path, space }
    }

    /// Reserve `bytes` of spill space; `None` when the space has no room.
    pub fn reserve(&self, bytes: usize) -> Option<Permit> {
        let mut permit = Permit::empty(&self.space);
        permit.grow_to(bytes).then_some(permit)
    }

    /// A new, already unlinked spill file holding `permit` until it is closed. Blocking.
    pub fn create(&self, permit: Permit) -> io::Result<SpillFile> {
        let path = self.path.join(fresh_name());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        match std::fs::remove_file(&path) {
            // A start clearing stale files may have unlinked it first: as good.
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(SpillFile {
            file,
            permit: Mutex::new(permit),
        })
    }
}

/// One request's spill file, written once front to back and read by each attempt at its own
/// offset (positional I/O, so readers share the descriptor without sharing a cursor).
#[derive(Debug)]
pub struct SpillFile {
    file: File,
    permit: Mutex<Permit>,
}

impl SpillFile {
    /// Blocking.
    pub fn write_at(&self, data: &[u8], at: u64) -> io::Result<()> {
        self.file.write_all_at(data, at)
    }

    /// Fill `buf` from `at`. Blocking.
    pub fn read_at(&self, at: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, at)
    }

    /// The body is complete at `len` bytes: give back the spill space reserved beyond it.
    pub fn shrink_to(&self, len: usize) {
        self.permit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shrink_to(len);
    }

    #[cfg(test)]
    pub fn mode(&self) -> u32 {
        self.file.metadata().map_or(0, |m| m.mode() & 0o777)
    }
}

/// Make sure `dir` can hold spill files: created (0700) when missing, its parent only when
/// that exists (a mistyped path does not grow a tree), owned by this user and writable by no
/// one else, and writable by us (a probe file is created and removed). The problem as text
/// when not.
pub fn prepare_dir(dir: &Path) -> Result<(), String> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
            return Err(format!("cannot create {}: {e}", dir.display()));
        }
        _ => {}
    }
    let meta = std::fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let probe = dir.join(fresh_name());
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    let mine = file.metadata().map(|m| m.uid());
    let _ = std::fs::remove_file(&probe);
    if mine.ok() != Some(meta.uid()) {
        return Err(format!("{} is not owned by keyrelay's user", dir.display()));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (chmod 700 it)",
            dir.display()
        ));
    }
    Ok(())
}

/// Remove spill files a crashed keyrelay left named in `dir` (only names keyrelay gives its
/// own files); how many were removed.
pub fn clear_stale(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let ours = name
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX));
        let file = entry.file_type().is_ok_and(|t| t.is_file());
        if ours && file && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("keyrelay-spill-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn files_are_private_unlinked_and_hold_their_space_until_closed() {
        let dir = scratch("files");
        prepare_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let spill = SpillDir::new(dir.clone(), Budget::new(100));
        let file = spill.create(spill.reserve(80).unwrap()).unwrap();
        assert!(spill.reserve(30).is_none(), "the space is held");
        assert_eq!(file.mode(), 0o600);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "unlinked at once"
        );
        file.write_at(b"hello world", 0).unwrap();
        let mut word = [0u8; 5];
        file.read_at(6, &mut word).unwrap();
        assert_eq!(&word, b"world");
        file.shrink_to(11);
        assert!(
            spill.reserve(80).is_some(),
            "what the body did not need is given back"
        );
        drop(file);
        assert!(spill.reserve(100).is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_keyrelay_names_are_cleared_and_loose_directories_refused() {
        let dir = scratch("stale");
        prepare_dir(&dir).unwrap();
        std::fs::write(dir.join("keyrelay-spill-1-2.tmp"), b"x").unwrap();
        std::fs::write(dir.join("notes.txt"), b"x").unwrap();
        assert_eq!(clear_stale(&dir), 1);
        assert!(dir.join("notes.txt").exists());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(prepare_dir(&dir)
            .unwrap_err()
            .contains("writable by group or others"));
        std::fs::remove_dir_all(&dir).unwrap();
        let not_dir = scratch("plain");
        std::fs::write(&not_dir, b"x").unwrap();
        assert!(prepare_dir(&not_dir).is_err());
        std::fs::remove_file(&not_dir).unwrap();
    }
}
