//! The data directory: private, and used by one process at a time.
//!
//! [`DataDir::open`] creates the directory with mode 0700 (tightening an existing one and the
//! files in it to 0700/0600, and saying so), then takes an exclusive `flock` on a lock file in
//! it *before* anything else touches the directory. A second process gets
//! [`DataDirError::Busy`] naming the lock file and the holder's pid, and changes nothing: it
//! must not mark the first one's running work as interrupted, nor free what it holds.

use std::{
    fs::{File, OpenOptions},
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "{dir} is in use by another {owner} process{holder}: its lock {lock} is held; stop that \
         process first, or give this one another data directory",
        dir = .dir.display(),
        lock = .lock.display(),
        holder = .holder.map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Busy {
        dir: PathBuf,
        lock: PathBuf,
        owner: String,
        holder: Option<u32>,
    },
    #[error("cannot prepare the data directory {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A locked, private data directory. The lock is released when this is dropped (or the process
/// ends, however it ends).
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
    tightened: Vec<PathBuf>,
}

impl DataDir {
    /// Creates or tightens `path`, then locks it through `lock_name`. `owner` names the kind of
    /// process in the busy message (e.g. `powerautomation`).
    pub fn open(path: &Path, lock_name: &str, owner: &str) -> Result<DataDir, DataDirError> {
        let mut tightened = Vec::new();
        match std::fs::metadata(path) {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(io(path))?;
            }
            Err(error) => return Err(io(path)(error)),
        }
        if make_private(path, 0o700).map_err(io(path))? {
            tightened.push(path.to_path_buf());
        }
        let lock_path = path.join(lock_name);
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = lock.read_to_string(&mut text);
                return Err(DataDirError::Busy {
                    dir: path.to_path_buf(),
                    lock: lock_path,
                    owner: owner.to_owned(),
                    holder: text.trim().parse().ok(),
                });
            }
            Err(std::fs::TryLockError::Error(error)) => return Err(io(&lock_path)(error)),
        }
        // Only informative (for the busy message); the lock is what counts.
        let _ = lock
            .set_len(0)
            .and_then(|()| lock.seek(SeekFrom::Start(0)))
            .and_then(|_| write!(lock, "{}", std::process::id()))
            .and_then(|()| lock.flush());
        tighten_tree(path, &mut tightened, 2).map_err(io(path))?;
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
            tightened,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Paths whose permissions were wider than private and were tightened at open; callers
    /// warn about them.
    pub fn tightened(&self) -> &[PathBuf] {
        &self.tightened
    }

    /// Creates (0700) or tightens a subdirectory.
    pub fn private_subdir(&self, name: &str) -> Result<PathBuf, DataDirError> {
        let dir = self.path.join(name);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        make_private(&dir, 0o700).map_err(io(&dir))?;
        Ok(dir)
    }
}

/// Sets `mode` on `path` when group or others have any access; true when it changed.
fn make_private(path: &Path, mode: u32) -> std::io::Result<bool> {
    let current = std::fs::symlink_metadata(path)?.permissions().mode();
    if current & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(true)
}

/// Tightens files (0600) and directories (0700) below `dir`, `depth` levels deep. Symbolic
/// links are left alone: they may point outside.
fn tighten_tree(dir: &Path, tightened: &mut Vec<PathBuf>, depth: usize) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let path = entry.path();
        if kind.is_dir() {
            if make_private(&path, 0o700)? {
                tightened.push(path.clone());
            }
            if depth > 1 {
                tighten_tree(&path, tightened, depth - 1)?;
            }
        } else if kind.is_file() && make_private(&path, 0o600)? {
            tightened.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    }

    #[test]
    fn created_private_locked_once_and_tightened() -> Result<(), DataDirError> {
        let base = std::env::temp_dir().join(format!("record-store-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("data");
        {
            let first = DataDir::open(&dir, "test.lock", "test")?;
            assert_eq!(mode(&dir), 0o700);
            assert!(first.tightened().is_empty());
            let second = DataDir::open(&dir, "test.lock", "test").err();
            match second {
                Some(DataDirError::Busy { holder, .. }) => {
                    assert_eq!(holder, Some(std::process::id()))
                }
                other => panic!("expected busy, got {other:?}"),
            }
            let message = DataDir::open(&dir, "test.lock", "test")
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default();
            assert!(
                message.contains("test.lock") && message.contains("pid"),
                "{message}"
            );
        }
        // An existing directory and file with open permissions are tightened on the next open.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(io(&dir))?;
        let file = dir.join("records.db");
        std::fs::write(&file, "x").map_err(io(&file))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))
            .map_err(io(&file))?;
        let reopened = DataDir::open(&dir, "test.lock", "test")?;
        assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));
        assert!(
            reopened.tightened().contains(&file),
            "{:?}",
            reopened.tightened()
        );
        let _ = std::fs::remove_dir_all(&base);
        Ok(())
    }
}
