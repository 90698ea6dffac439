//! File-system steps the node's on-disk stores (the IP pool, the image store) share: an
//! exclusive lock on a lock file, making a directory's entries durable, and writing a new
//! file whose contents are on disk before it is linked or renamed into place.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// Takes an exclusive `flock` on `path` (created if missing) until the guard drops. `flock`
/// is per open file, so each call opens the file anew and threads of one process exclude
/// each other too. `what` names the store in errors.
pub(crate) fn lock_exclusive(path: &Path, what: &str) -> Result<Flock<File>> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(Error::io(format!("opening the {what} lock"), path))?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(lock) => return Ok(lock),
            // A signal interrupted the wait; nothing was locked, so wait again.
            Err((back, Errno::EINTR)) => file = back,
            Err((_, errno)) => {
                return Err(Error::Io {
                    context: format!("locking the {what}"),
                    path: path.to_path_buf(),
                    source: errno.into(),
                });
            }
        }
    }
}

/// Makes a directory's entries (new links, renames, removals) durable.
pub(crate) fn sync_dir(dir: &Path, what: &str) -> Result<()> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(Error::io(format!("syncing the {what} directory"), dir))
}

/// Creates `path`, which must not exist, with `contents`, synced to disk, so that linking or
/// renaming it into place can never expose a half-written file.
pub(crate) fn write_new_synced(path: &Path, contents: &[u8], what: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(Error::io(format!("creating {what}"), path))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(Error::io(format!("writing {what}"), path))
}
