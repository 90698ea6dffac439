//! The snapshot file: the state machine's column families dumped record by record, so a
//! snapshot of any size is written, sent and installed as a stream.
//!
//! Layout: the magic `COXSNAP1`, a big-endian u32 length and that many bytes of JSON header,
//! then records `[family u8][key len u32][key][value len u32][value]`, then a 0 byte.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::{Revision, SnapshotMeta};

const MAGIC: &[u8; 8] = b"COXSNAP1";
/// A key or value longer than this is a corrupt file, not a real record: values are capped at
/// 1.5 MiB at the API, and history records hold at most two of them.
const MAX_RECORD: u32 = 16 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub meta: SnapshotMeta,
    /// History up to this revision had been compacted away when the snapshot was taken.
    pub compacted: Revision,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Kv = 1,
    History = 2,
}

pub struct Writer {
    out: BufWriter<File>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("snapshot::Writer")
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Writer {
    pub fn create(path: &Path, header: &Header) -> Result<Self> {
        let file = File::create(path).map_err(io(path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let json = serde_json::to_vec(header).map_err(|e| Error::Corrupt {
            what: "snapshot header",
            reason: e.to_string(),
        })?;
        out.write_all(MAGIC).map_err(io(path))?;
        out.write_all(&(json.len() as u32).to_be_bytes())
            .map_err(io(path))?;
        out.write_all(&json).map_err(io(path))?;
        Ok(Writer { out })
    }

    pub fn record(&mut self, family: Family, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        self.out.write_all(&[family as u8])?;
        self.out.write_all(&(key.len() as u32).to_be_bytes())?;
        self.out.write_all(key)?;
        self.out.write_all(&(value.len() as u32).to_be_bytes())?;
        self.out.write_all(value)
    }

    /// Ends the stream and fsyncs the file.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.write_all(&[0])?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

/// One record: its family, key and value.
pub type Record = (Family, Vec<u8>, Vec<u8>);

pub struct Reader {
    input: BufReader<File>,
    pub header: Header,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("snapshot::Reader")
            .field("header", &self.header)
            .finish()
    }
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::Corrupt {
        what: "snapshot",
        reason: reason.into(),
    }
}

fn read_u32(input: &mut impl Read) -> Result<u32> {
    let mut b = [0u8; 4];
    input
        .read_exact(&mut b)
        .map_err(|e| corrupt(format!("truncated: {e}")))?;
    Ok(u32::from_be_bytes(b))
}

fn read_bytes(input: &mut impl Read, len: u32) -> Result<Vec<u8>> {
    if len > MAX_RECORD {
        return Err(corrupt(format!("record of {len} bytes")));
    }
    let mut buf = vec![0u8; len as usize];
    input
        .read_exact(&mut buf)
        .map_err(|e| corrupt(format!("truncated: {e}")))?;
    Ok(buf)
}

impl Reader {
    /// Reads the header of a file positioned at its start.
    pub fn new(file: File) -> Result<Self> {
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|e| corrupt(format!("no header: {e}")))?;
        if &magic != MAGIC {
            return Err(corrupt("not a coxswain snapshot (bad magic)"));
        }
        let len = read_u32(&mut input)?;
        let json = read_bytes(&mut input, len)?;
        let header: Header =
            serde_json::from_slice(&json).map_err(|e| corrupt(format!("header: {e}")))?;
        Ok(Reader { input, header })
    }

    pub fn open(path: &Path) -> Result<Self> {
        Self::new(File::open(path).map_err(io(path))?)
    }

    /// The next record, or `None` at the end marker.
    pub fn next_record(&mut self) -> Result<Option<Record>> {
        let mut tag = [0u8; 1];
        self.input
            .read_exact(&mut tag)
            .map_err(|e| corrupt(format!("truncated: {e}")))?;
        let family = match tag[0] {
            0 => return Ok(None),
            1 => Family::Kv,
            2 => Family::History,
            t => return Err(corrupt(format!("unknown record family {t}"))),
        };
        let klen = read_u32(&mut self.input)?;
        let key = read_bytes(&mut self.input, klen)?;
        let vlen = read_u32(&mut self.input)?;
        let value = read_bytes(&mut self.input, vlen)?;
        Ok(Some((family, key, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_truncation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let header = Header {
            meta: SnapshotMeta::default(),
            compacted: 7,
        };
        let mut w = Writer::create(&path, &header).unwrap();
        w.record(Family::Kv, b"/a", b"1").unwrap();
        w.record(Family::History, b"k2", b"").unwrap();
        w.finish().unwrap();

        let mut r = Reader::open(&path).unwrap();
        assert_eq!(r.header.compacted, 7);
        assert_eq!(
            r.next_record().unwrap(),
            Some((Family::Kv, b"/a".to_vec(), b"1".to_vec()))
        );
        assert_eq!(
            r.next_record().unwrap(),
            Some((Family::History, b"k2".to_vec(), Vec::new()))
        );
        assert_eq!(r.next_record().unwrap(), None);

        // Cut off before the end marker: must not read as a complete snapshot.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let mut r = Reader::open(&path).unwrap();
        r.next_record().unwrap();
        assert!(r.next_record().is_err());
    }
}
