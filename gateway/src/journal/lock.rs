//! One gateway per journal: an OS file lock on `<journal>.lock`, held for the life of the
//! process (the kernel drops it when the process ends, however it ends). A second gateway, or
//! any command that writes the journal, refuses to start while it is held, naming the file and
//! the holder's pid.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "journal {journal} is in use by another gateway (pid {holder}, lock {lock}): stop it first, or give this one a journal of its own"
    )]
    Held {
        journal: PathBuf,
        lock: PathBuf,
        /// The holder's pid as it wrote it, or `unknown`.
        holder: String,
    },
    #[error("cannot lock the journal through {lock}: {source}")]
    Io { lock: PathBuf, source: std::io::Error },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct JournalLock {
    _file: File,
    path: PathBuf,
}

/// The lock file of a journal.
pub fn lock_path(journal: &Path) -> PathBuf {
    let mut name = journal.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".lock");
    journal.with_file_name(name)
}

impl JournalLock {
    /// Takes the lock of `journal` without waiting, and writes this process's pid into it.
    pub fn acquire(journal: &Path) -> Result<JournalLock, LockError> {
        let path = lock_path(journal);
        let io = |source| LockError::Io {
            lock: path.clone(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = text.trim();
                return Err(LockError::Held {
                    journal: journal.to_owned(),
                    lock: path.clone(),
                    holder: if holder.is_empty() {
                        "unknown".to_owned()
                    } else {
                        holder.to_owned()
                    },
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(JournalLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid_and_the_lock_frees_on_drop() {
        let dir = tempfile::TempDir::new().expect("temp dir");
        let journal = dir.path().join("journal.db");
        let first = JournalLock::acquire(&journal).expect("first");
        assert_eq!(first.path(), dir.path().join("journal.db.lock"));
        // A second open file description of the same file: as another process would see it.
        let err = JournalLock::acquire(&journal).expect_err("held");
        let text = err.to_string();
        assert!(text.contains("journal.db is in use by another gateway"), "{text}");
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        drop(first);
        JournalLock::acquire(&journal).expect("free again");
    }
}
