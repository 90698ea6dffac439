//! Pod IP address management: hands out addresses from the node's pod CIDR, the way CNI's
//! `host-local` IPAM plugin does, so that the bridge/veth code only has to ask for "an address
//! for pod X" and can trust that no other pod holds it, even across agent restarts.
//!
//! The state lives in one directory, one small file per fact, so that it survives restarts and
//! can be inspected (and repaired) with `ls` and `cat`:
//!
//! - `cidr`: the pool's CIDR; a directory is never reused for another range, since addresses
//!   already handed out would then be meaningless or overlap;
//! - `<address>` (e.g. `10.88.0.7`): one file per allocated address, holding its owner (the
//!   pod UID) and a newline. The file's existence *is* the allocation, and it only ever comes
//!   into being through `link(2)`, which fails with `EEXIST` exactly like `O_EXCL`, so two
//!   threads or processes can never both claim one address;
//! - `last_reserved_ip`: the last address handed out, so that allocation goes round-robin and
//!   a just-freed address (whose old pod may still have packets or conntrack entries in
//!   flight) is not reused at once;
//! - `lock`: `flock(2)`ed around every change, so that "is this owner already here?" and
//!   "claim the next address" are one step (allocation is idempotent per owner even under
//!   concurrency). The lock only serialises; correctness against double allocation rests on the
//!   exclusive link, so a process that skipped the lock still could not steal an address.
//!
//! Every address file is first written completely to a temporary file and fsynced, then
//! linked into place and the directory fsynced, so a crash never leaves a half-written file
//! behind (`last_reserved_ip`, a hint, is renamed into place without fsyncs). A file that
//! still cannot be read as an owner (edited by hand, a disk error) is counted as allocated and
//! listed with an empty owner, never silently freed: handing its address out again could give
//! two pods one IP.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::Ipv4Net;
use nix::fcntl::Flock;

use crate::error::{Error, Result};
use crate::fsutil;

/// The longest owner accepted, in bytes: that of a Kubernetes name (DNS subdomain), ample for
/// a pod UID (36) or a CNI container ID (64), and small enough to read owner files bounded.
pub const MAX_OWNER_LEN: usize = 253;

/// The longest prefix a pool accepts: a /30 leaves one address once the network, broadcast
/// and gateway addresses are set aside; a /31 or /32 leaves none.
pub const MAX_PREFIX_LEN: u8 = 30;

const CIDR_FILE: &str = "cidr";
const LAST_RESERVED_FILE: &str = "last_reserved_ip";
const LOCK_FILE: &str = "lock";
/// Temporary files start with a dot so they can never parse as an address file.
const TEMP_PREFIX: &str = ".tmp-";

/// Distinguishes the temporary files of one process (the pid tells processes apart).
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file-backed allocator of pod IPs from one IPv4 CIDR. Cheap to share between threads
/// (`&self` everywhere); several `Pool`s, in one process or many, may use one directory at once.
#[derive(Debug, Clone)]
pub struct Pool {
    dir: PathBuf,
    cidr: Ipv4Net,
    gateway: Ipv4Addr,
    /// First and last address that may be handed out, as integers for round-robin arithmetic.
    first: u32,
    last: u32,
}

/// One address file as found on disk.
#[derive(Debug)]
struct Entry {
    addr: Ipv4Addr,
    /// `None` when the file cannot be read as an owner; the address still counts as taken.
    owner: Option<String>,
}

impl Pool {
    /// Opens (creating if missing) the pool whose state lives in `dir`, for `cidr`.
    ///
    /// A CIDR written with host bits set (`10.88.0.5/24`) means its network (`10.88.0.0/24`),
    /// as Kubernetes reads a node's `podCIDR`. The first host address is the gateway (the
    /// bridge's address) and is never handed out, nor are the network and broadcast
    /// addresses. Fails with [`Error::Config`] for a prefix longer than /30 and with
    /// [`Error::State`] if `dir` already holds a pool for another CIDR.
    pub fn open(dir: &Path, cidr: Ipv4Net) -> Result<Pool> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > MAX_PREFIX_LEN {
            return Err(Error::Config {
                field: "pod CIDR".into(),
                reason: format!(
                    "{cidr} leaves no address for pods once the gateway is set aside \
                     (the prefix must be /{MAX_PREFIX_LEN} or shorter)"
                ),
            });
        }
        let network = u32::from(cidr.network());
        let broadcast = u32::from(cidr.broadcast());
        // prefix <= 30 makes broadcast >= network + 3, so none of these can overflow.
        let pool = Pool {
            dir: dir.to_path_buf(),
            cidr,
            gateway: Ipv4Addr::from(network + 1),
            first: network + 2,
            last: broadcast - 1,
        };
        fs::create_dir_all(dir).map_err(Error::io("creating the IPAM state directory", dir))?;
        let _lock = pool.lock()?;
        // Temporary files are only ever made while holding the lock, so any present now was
        // left by a process that died mid-write (its lock died with it).
        pool.remove_stale_temps()?;
        pool.check_or_write_cidr()?;
        tracing::debug!(dir = %dir.display(), %cidr, "opened pod IP pool");
        Ok(pool)
    }

    /// The pool's CIDR (its network address, host bits cleared).
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The gateway: the first host address, kept for the bridge and never handed out.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// Hands `owner` (a pod UID) an address, or the one it already holds.
    ///
    /// Goes round-robin from the last address handed out, so a freed address comes back only
    /// after the rest of the range has been tried. Fails with [`Error::Config`] for an invalid
    /// owner and [`Error::Exhausted`] when every address is taken.
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr> {
        validate_owner(owner)?;
        let _lock = self.lock()?;
        let entries = self.scan()?;
        if let Some(held) = entries
            .iter()
            .find(|entry| entry.owner.as_deref() == Some(owner))
        {
            tracing::debug!(owner, addr = %held.addr, "pod already holds an address");
            return Ok(held.addr);
        }
        let taken: HashSet<u32> = entries.iter().map(|entry| u32::from(entry.addr)).collect();
        let contents = format!("{owner}\n");
        let temp = self.write_temp(contents.as_bytes())?;
        let Some(addr) = self.claim_round_robin(&temp.0, &taken)? else {
            return Err(Error::Exhausted {
                what: "pod IP".into(),
                pool: self.cidr.to_string(),
            });
        };
        drop(temp);
        // The claim must be on disk before anyone acts on it; should this fail, asking again
        // finds the claim and returns the same address, so nothing leaks.
        self.sync_dir()?;
        // Only a hint for round-robin: losing it makes the next allocation start from the
        // range's beginning, which is still correct, so it must not fail the allocation.
        if let Err(err) = self.write_last_reserved(addr) {
            tracing::warn!(%addr, error = %err, "could not record the last reserved pod IP");
        }
        tracing::info!(owner, %addr, pool = %self.cidr, "allocated pod IP");
        Ok(addr)
    }

    /// Frees the address `owner` holds and returns it; `None` if it held none, so releasing
    /// twice is harmless (like a CNI `DEL`). A file that cannot be read is never freed here.
    pub fn release(&self, owner: &str) -> Result<Option<Ipv4Addr>> {
        validate_owner(owner)?;
        let _lock = self.lock()?;
        let held: Vec<Ipv4Addr> = self
            .scan()?
            .into_iter()
            .filter(|entry| entry.owner.as_deref() == Some(owner))
            .map(|entry| entry.addr)
            .collect();
        if held.len() > 1 {
            // Cannot come from this allocator (it is idempotent under the lock); free them all
            // so the owner does not keep addresses it does not know about.
            tracing::warn!(owner, addresses = ?held, "owner held several pod IPs; freeing all");
        }
        for addr in &held {
            let path = self.dir.join(addr.to_string());
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => return Err(Error::io("freeing a pod IP", path)(err)),
            }
        }
        let Some(first) = held.first().copied() else {
            return Ok(None);
        };
        self.sync_dir()?;
        tracing::info!(owner, addr = %first, pool = %self.cidr, "released pod IP");
        Ok(Some(first))
    }

    /// Hands `addr`, held by `from`, to `to`: how a warm sandbox's address becomes its pod's.
    /// Fails with [`Error::State`] unless `from` holds `addr`. `to` should hold nothing yet;
    /// this is not checked, since that would read every address file, and [`Pool::release`]
    /// frees all of an owner's addresses anyway.
    ///
    /// One file is replaced by rename, so a reader sees the old owner or the new one, never
    /// neither. Not fsynced: a pod IP means something only while its pod's network namespace
    /// lives, and that dies with the machine. An agent crash keeps the page cache (the rename
    /// is seen); a power loss that drops it leaves the warm owner, whose address the next
    /// start frees, which is right, since the pod is gone too.
    pub fn reassign(&self, addr: Ipv4Addr, from: &str, to: &str) -> Result<()> {
        validate_owner(from)?;
        validate_owner(to)?;
        let _lock = self.lock()?;
        let path = self.dir.join(addr.to_string());
        let held = read_owner(&path).map_err(Error::io("reading a pod IP's owner", &path))?;
        if held.as_deref() != Some(from) {
            return Err(Error::State {
                path,
                reason: format!("expected owner {from:?}, found {held:?}"),
            });
        }
        self.replace_unsynced(&path, &format!("{to}\n"), "handing over a pod IP")?;
        tracing::debug!(%addr, from, to, "reassigned pod IP");
        Ok(())
    }

    /// The address `owner` holds, if any.
    pub fn get(&self, owner: &str) -> Result<Option<Ipv4Addr>> {
        validate_owner(owner)?;
        Ok(self
            .scan()?
            .into_iter()
            .find(|entry| entry.owner.as_deref() == Some(owner))
            .map(|entry| entry.addr))
    }

    /// Every allocated address with its owner, in address order. An address whose file cannot
    /// be read as an owner is listed with an empty owner (no valid owner is empty): it stays
    /// allocated until someone looks at it.
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        Ok(self
            .scan()?
            .into_iter()
            .map(|entry| (entry.addr, entry.owner.unwrap_or_default()))
            .collect())
    }

    /// Takes the pool's exclusive lock until the returned guard drops.
    fn lock(&self) -> Result<Flock<File>> {
        fsutil::lock_exclusive(&self.dir.join(LOCK_FILE), "IPAM state")
    }

    /// Tries each free address once, starting after the last one handed out and wrapping
    /// around; returns the first one claimed, or `None` if none could be.
    fn claim_round_robin(&self, temp: &Path, taken: &HashSet<u32>) -> Result<Option<Ipv4Addr>> {
        let count = u64::from(self.last - self.first) + 1;
        let start = match self.read_last_reserved() {
            Some(last) if (self.first..=self.last).contains(&u32::from(last)) => {
                u64::from(u32::from(last) - self.first) + 1
            }
            _ => 0,
        };
        for step in 0..count {
            let offset = (start + step) % count;
            // offset < count <= 2^32 - 3, and first + offset <= last, so this always fits.
            let Ok(offset) = u32::try_from(offset) else {
                continue;
            };
            let candidate = self.first + offset;
            if taken.contains(&candidate) {
                continue;
            }
            let addr = Ipv4Addr::from(candidate);
            if claim(temp, &self.dir.join(addr.to_string()))? {
                return Ok(Some(addr));
            }
        }
        Ok(None)
    }

    /// Reads every address file, in address order. Files that are not address files (the
    /// pool's own bookkeeping, temporaries, strays) are skipped.
    fn scan(&self) -> Result<Vec<Entry>> {
        let read_dir = fs::read_dir(&self.dir)
            .map_err(Error::io("listing the IPAM state directory", &self.dir))?;
        let mut entries = Vec::new();
        for dirent in read_dir {
            let dirent =
                dirent.map_err(Error::io("listing the IPAM state directory", &self.dir))?;
            let name = dirent.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let Ok(addr) = name.parse::<Ipv4Addr>() else {
                continue;
            };
            // The canonical spelling only: `010.88.0.2` is not a file this pool writes.
            if addr.to_string() != name {
                continue;
            }
            if !(self.first..=self.last).contains(&u32::from(addr)) {
                tracing::warn!(%addr, pool = %self.cidr, "ignoring an address file outside the range this pool hands out");
                continue;
            }
            let path = dirent.path();
            match read_owner(&path) {
                Ok(Some(owner)) => entries.push(Entry {
                    addr,
                    owner: Some(owner),
                }),
                Ok(None) => {
                    tracing::warn!(path = %path.display(), "address file does not hold an owner; keeping the address allocated");
                    entries.push(Entry { addr, owner: None });
                }
                // Released between listing and reading: it is simply free now.
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(path = %path.display(), error = %err, "cannot read address file; keeping the address allocated");
                    entries.push(Entry { addr, owner: None });
                }
            }
        }
        entries.sort_by_key(|entry| entry.addr);
        Ok(entries)
    }

    /// Verifies the directory's recorded CIDR, or records ours if there is none yet.
    fn check_or_write_cidr(&self) -> Result<()> {
        let path = self.dir.join(CIDR_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => self.check_cidr(&path, &text),
            Err(err) if err.kind() == ErrorKind::NotFound => {
                let contents = format!("{}\n", self.cidr);
                let temp = self.write_temp(contents.as_bytes())?;
                if claim(&temp.0, &path)? {
                    drop(temp);
                    self.sync_dir()
                } else {
                    // Someone else recorded one after all: theirs stands, if it agrees.
                    let text = fs::read_to_string(&path)
                        .map_err(Error::io("reading the pool's CIDR", &path))?;
                    self.check_cidr(&path, &text)
                }
            }
            Err(err) => Err(Error::io("reading the pool's CIDR", path)(err)),
        }
    }

    fn check_cidr(&self, path: &Path, text: &str) -> Result<()> {
        let recorded: Ipv4Net = text
            .strip_suffix('\n')
            .and_then(|line| line.parse().ok())
            .ok_or_else(|| Error::State {
                path: path.to_path_buf(),
                reason: format!("does not hold a CIDR (found {:?})", truncate(text)),
            })?;
        if recorded != self.cidr {
            return Err(Error::State {
                path: path.to_path_buf(),
                reason: format!(
                    "this pod IP pool was created for {recorded}; refusing to reopen it for \
                     {} (addresses already handed out would be lost or overlap; move the \
                     directory away to start a new pool)",
                    self.cidr
                ),
            });
        }
        Ok(())
    }

    /// The last address handed out, if recorded and readable. A garbled record only costs the
    /// round-robin order, so it is logged and ignored rather than failing allocation.
    fn read_last_reserved(&self) -> Option<Ipv4Addr> {
        let path = self.dir.join(LAST_RESERVED_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let parsed = text.strip_suffix('\n').and_then(|line| line.parse().ok());
                if parsed.is_none() {
                    tracing::warn!(path = %path.display(), "ignoring an unreadable last reserved IP");
                }
                parsed
            }
            Err(err) if err.kind() == ErrorKind::NotFound => None,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read the last reserved IP");
                None
            }
        }
    }

    /// Not fsynced, unlike every other file here: the record is a hint (see
    /// `read_last_reserved`), so a crash that loses or empties it only restarts the round,
    /// and its two fsyncs were a tenth of a pod's sandbox time. The rename still keeps a
    /// reader from seeing half a line.
    fn write_last_reserved(&self, addr: Ipv4Addr) -> Result<()> {
        let path = self.dir.join(LAST_RESERVED_FILE);
        self.replace_unsynced(
            &path,
            &format!("{addr}\n"),
            "recording the last reserved IP",
        )
    }

    /// Replaces `path` with `contents` through a temporary file and a rename, without
    /// fsyncs: a reader sees the old contents or the new, never part of either.
    fn replace_unsynced(&self, path: &Path, contents: &str, what: &'static str) -> Result<()> {
        let temp = self.temp_path();
        fs::write(&temp.0, contents).map_err(Error::io(what, &temp.0))?;
        fs::rename(&temp.0, path).map_err(Error::io(what, path))
    }

    /// Writes `contents` to a new temporary file in the state directory and fsyncs it; the
    /// guard removes the file unless it has been renamed away.
    fn write_temp(&self, contents: &[u8]) -> Result<TempFile> {
        let guard = self.temp_path();
        fsutil::write_new_synced(&guard.0, contents, "an IPAM temporary file")?;
        Ok(guard)
    }

    /// A fresh temporary name in the state directory, removed when the guard drops.
    fn temp_path(&self) -> TempFile {
        let name = format!(
            "{TEMP_PREFIX}{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        TempFile(self.dir.join(name))
    }

    fn remove_stale_temps(&self) -> Result<()> {
        let read_dir = fs::read_dir(&self.dir)
            .map_err(Error::io("listing the IPAM state directory", &self.dir))?;
        for dirent in read_dir {
            let dirent =
                dirent.map_err(Error::io("listing the IPAM state directory", &self.dir))?;
            let is_temp = dirent
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(TEMP_PREFIX));
            if is_temp {
                let path = dirent.path();
                tracing::debug!(path = %path.display(), "removing a temporary file left by a crash");
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == ErrorKind::NotFound => {}
                    Err(err) => {
                        return Err(Error::io("removing a stale IPAM temporary file", path)(err));
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes the directory's entries (new links, renames, removals) durable.
    fn sync_dir(&self) -> Result<()> {
        fsutil::sync_dir(&self.dir, "IPAM state")
    }
}

/// Checks that `owner` can be stored and read back unambiguously in an address file.
pub fn validate_owner(owner: &str) -> Result<()> {
    let reason = if owner.is_empty() {
        "must not be empty".to_string()
    } else if owner.len() > MAX_OWNER_LEN {
        format!("is {} bytes long, more than {MAX_OWNER_LEN}", owner.len())
    } else if owner.contains('/') {
        "must not contain '/'".to_string()
    } else if owner.chars().any(char::is_control) {
        // Covers NUL and newlines (the file's terminator) and every other control character.
        "must not contain NUL, newlines or other control characters".to_string()
    } else {
        return Ok(());
    };
    Err(Error::Config {
        field: "pod IP owner".into(),
        reason: format!("{:?} {reason}", truncate(owner)),
    })
}

/// Links the fully written `temp` to `target`. `link(2)` never replaces an existing file, so
/// `Ok(false)` (target exists) means someone else holds it, just as `O_EXCL` would say.
fn claim(temp: &Path, target: &Path) -> Result<bool> {
    match fs::hard_link(temp, target) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(Error::io("claiming an IPAM state file", target)(err)),
    }
}

/// Reads an address file's owner: `Ok(None)` if the file is not `<valid owner>\n`.
fn read_owner(path: &Path) -> std::io::Result<Option<String>> {
    let mut bytes = Vec::new();
    // Bounded: a valid file is at most the longest owner plus its newline.
    let limit = u64::try_from(MAX_OWNER_LEN).unwrap_or(u64::MAX) + 2;
    File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(parse_owner(&bytes))
}

fn parse_owner(bytes: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(bytes.strip_suffix(b"\n")?).ok()?;
    validate_owner(line).ok()?;
    Some(line.to_string())
}

/// Shortens text quoted in error messages so a garbage file cannot flood a pod's status.
fn truncate(text: &str) -> &str {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// A temporary file removed on drop (after a rename the removal finds nothing, which is fine).
#[derive(Debug)]
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        match fs::remove_file(&self.0) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %self.0.display(), error = %err, "cannot remove an IPAM temporary file");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn net(text: &str) -> Ipv4Net {
        text.parse().unwrap()
    }

    fn addr(text: &str) -> Ipv4Addr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_set_aside_network_gateway_and_broadcast() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path(), net("10.88.0.0/24")).unwrap();
        assert_eq!(pool.gateway(), addr("10.88.0.1"));
        assert_eq!(Ipv4Addr::from(pool.first), addr("10.88.0.2"));
        assert_eq!(Ipv4Addr::from(pool.last), addr("10.88.0.254"));

        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path(), net("192.168.5.8/30")).unwrap();
        assert_eq!(pool.gateway(), addr("192.168.5.9"));
        assert_eq!(pool.first, pool.last);
        assert_eq!(Ipv4Addr::from(pool.first), addr("192.168.5.10"));
    }

    #[test]
    fn host_bits_in_the_cidr_mean_its_network() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path(), net("10.88.0.77/24")).unwrap();
        assert_eq!(pool.cidr(), net("10.88.0.0/24"));
        assert_eq!(pool.gateway(), addr("10.88.0.1"));
        // Reopening with the canonical spelling is the same pool.
        Pool::open(dir.path(), net("10.88.0.0/24")).unwrap();
        let recorded = fs::read_to_string(dir.path().join(CIDR_FILE)).unwrap();
        assert_eq!(recorded, "10.88.0.0/24\n");
    }

    #[test]
    fn prefixes_longer_than_30_are_refused() {
        for cidr in ["10.0.0.0/31", "10.0.0.1/32"] {
            let dir = tempfile::tempdir().unwrap();
            let err = Pool::open(dir.path(), net(cidr)).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{cidr}: {err}");
        }
    }

    #[test]
    fn owners_are_validated() {
        let long = "x".repeat(MAX_OWNER_LEN + 1);
        for bad in ["", "a/b", "a\0b", "a\nb", "a\rb", long.as_str()] {
            let err = validate_owner(bad).unwrap_err();
            assert!(matches!(err, Error::Config { .. }), "{bad:?}: {err}");
        }
        let longest = "x".repeat(MAX_OWNER_LEN);
        for good in [
            "6c6a5b0e-8f1a-4c39-9d2e-3b5e4f1a2c7d",
            "pod with spaces",
            longest.as_str(),
        ] {
            validate_owner(good).unwrap();
        }
    }

    #[test]
    fn invalid_owners_are_refused_by_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path(), net("10.88.0.0/29")).unwrap();
        assert!(matches!(pool.allocate("a\nb"), Err(Error::Config { .. })));
        assert!(matches!(pool.release(""), Err(Error::Config { .. })));
        assert!(matches!(pool.get("x/y"), Err(Error::Config { .. })));
        assert!(pool.list().unwrap().is_empty());
    }

    #[test]
    fn owner_files_parse_only_when_complete() {
        assert_eq!(parse_owner(b"pod-a\n").as_deref(), Some("pod-a"));
        // Torn writes or hand edits: no terminator, empty, extra lines, invalid UTF-8.
        for bad in [&b"pod-a"[..], b"", b"\n", b"pod-a\npod-b\n", b"\xff\xfe\n"] {
            assert_eq!(parse_owner(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_exclusive_link_lets_exactly_one_racer_win() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Arc::new(Pool::open(dir.path(), net("10.88.0.0/24")).unwrap());
        let target = dir.path().join("10.88.0.9");
        let racers = 8;
        let barrier = Arc::new(Barrier::new(racers));
        let handles: Vec<_> = (0..racers)
            .map(|i| {
                let (pool, barrier, target) = (pool.clone(), barrier.clone(), target.clone());
                std::thread::spawn(move || {
                    let temp = pool.write_temp(format!("racer-{i}\n").as_bytes()).unwrap();
                    barrier.wait();
                    claim(&temp.0, &target).unwrap()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .filter(|won| *won)
            .count();
        assert_eq!(wins, 1);
        let owner = read_owner(&target).unwrap().unwrap();
        assert!(owner.starts_with("racer-"), "{owner}");
    }

    #[test]
    fn stale_temporary_files_are_removed_on_open_and_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        Pool::open(dir.path(), net("10.88.0.0/29")).unwrap();
        let stale = dir.path().join(format!("{TEMP_PREFIX}1-1"));
        fs::write(&stale, "crashed-pod\n").unwrap();
        let pool = Pool::open(dir.path(), net("10.88.0.0/29")).unwrap();
        assert!(!stale.exists());
        // And allocation leaves none behind.
        pool.allocate("pod-a").unwrap();
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with(TEMP_PREFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn reassign_hands_an_address_to_a_new_owner_only_from_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path(), net("10.88.0.0/29")).unwrap();
        let ip = pool.allocate("warm-1-0").unwrap();
        let other = pool.allocate("pod-b").unwrap();
        // Only the holder's address can be handed over.
        let err = pool.reassign(other, "warm-1-0", "pod-a").unwrap_err();
        assert!(matches!(err, Error::State { .. }), "{err}");
        let err = pool.reassign(ip, "warm-9-9", "pod-a").unwrap_err();
        assert!(matches!(err, Error::State { .. }), "{err}");
        assert!(pool.reassign(ip, "warm-1-0", "bad/owner").is_err());

        pool.reassign(ip, "warm-1-0", "pod-a").unwrap();
        assert_eq!(pool.get("pod-a").unwrap(), Some(ip));
        assert_eq!(pool.get("warm-1-0").unwrap(), None);
        // The new owner's address is freed like any other; nothing else moved.
        assert_eq!(pool.release("warm-1-0").unwrap(), None);
        assert_eq!(pool.release("pod-a").unwrap(), Some(ip));
        assert_eq!(pool.list().unwrap(), vec![(other, "pod-b".to_owned())]);
        // No temporary file is left behind.
        let temps = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .count();
        assert_eq!(temps, 0);
    }

    #[test]
    fn a_garbled_last_reserved_record_only_restarts_the_round() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path(), net("10.88.0.0/29")).unwrap();
        for owner in ["pod-a", "pod-b", "pod-c"] {
            pool.allocate(owner).unwrap();
        }
        assert_eq!(pool.release("pod-a").unwrap(), Some(addr("10.88.0.2")));
        // With the record intact the next address would be .5; garbled, the round restarts
        // at the range's beginning, where .2 is free.
        fs::write(dir.path().join(LAST_RESERVED_FILE), "garbage").unwrap();
        assert_eq!(pool.allocate("pod-d").unwrap(), addr("10.88.0.2"));
        assert_eq!(
            fs::read_to_string(dir.path().join(LAST_RESERVED_FILE)).unwrap(),
            "10.88.0.2\n"
        );
        // An out-of-range record (a hand edit) is ignored the same way: .2 again, not .3.
        assert_eq!(pool.release("pod-d").unwrap(), Some(addr("10.88.0.2")));
        assert_eq!(pool.release("pod-b").unwrap(), Some(addr("10.88.0.3")));
        fs::write(dir.path().join(LAST_RESERVED_FILE), "192.168.0.1\n").unwrap();
        assert_eq!(pool.allocate("pod-e").unwrap(), addr("10.88.0.2"));
    }

    #[test]
    fn a_garbled_cidr_record_is_a_state_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CIDR_FILE), "not a cidr\n").unwrap();
        let err = Pool::open(dir.path(), net("10.88.0.0/24")).unwrap_err();
        assert!(matches!(err, Error::State { .. }), "{err}");
    }

    #[test]
    fn stray_and_non_canonical_files_are_not_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::open(dir.path(), net("10.88.0.0/29")).unwrap();
        fs::write(dir.path().join("010.88.0.2"), "pod-x\n").unwrap();
        fs::write(dir.path().join("10.88.1.2"), "pod-y\n").unwrap();
        fs::write(dir.path().join("notes.txt"), "hello\n").unwrap();
        assert!(pool.list().unwrap().is_empty());
        assert_eq!(pool.allocate("pod-a").unwrap(), addr("10.88.0.2"));
    }
}
