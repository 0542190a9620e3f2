//! Snapshots as files of their own: `DATA_DIR/snapshots/TERM-INDEX.snap`.
//!
//! A file is a 16-byte header (the magic `ATOLSNAP`, the file format, zero padding) and then
//! the snapshot exactly as it travels to a follower (`atoll_state::snapshot::encode_state`:
//! a marker byte, then each part after its length; or, from a leader of an earlier release,
//! one record holding the whole state). A snapshot is written part by part to a temporary
//! file beside the others (synced every few MiB as it grows, so that it never holds hundreds
//! of MiB of dirty pages for the Raft log's fsyncs to queue behind), synced, renamed into
//! place and the directory synced; only then
//! does redb's meta name it, and only after that commit is the previous file deleted. A
//! crash at any step thus leaves the previous snapshot in force and at most a stray file,
//! which the next start removes.
//!
//! [`SnapshotFile`] is openraft's snapshot data: the leader reads a follower's chunks from
//! the file (the header hidden, so the bytes sent are what earlier releases sent), and a
//! follower writes the chunks it receives into a temporary file. Neither holds the whole
//! snapshot in memory.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use atoll_state::snapshot::{decode_state, decode_state_parts, STATE_IN_PARTS};
use atoll_state::State;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use crate::storage::{StorageFailure, DAMAGED_ADVICE};

/// The directory of snapshot files inside the data dir.
pub(crate) const SNAPSHOT_DIR: &str = "snapshots";
/// First bytes of every snapshot file.
const MAGIC: &[u8; 8] = b"ATOLSNAP";
/// Format of the file around the snapshot's bytes (the header). The bytes after it carry
/// their own format marker.
const FILE_FORMAT: u8 = 1;
/// Bytes before the snapshot's own bytes.
pub(crate) const HEADER_LEN: u64 = 16;
/// Suffix of files being written; never the snapshot in force.
const TEMPORARY: &str = ".tmp";
/// Suffix of complete snapshot files.
const COMPLETE: &str = ".snap";
/// Write buffer of the snapshot writer: parts are a few hundred KiB to a few MiB.
const WRITE_BUFFER: usize = 1 << 20;
/// Bytes a snapshot writer leaves unsynced at most. Hundreds of MiB of dirty pages written
/// back at once make the Raft log's own fsyncs wait behind them (a write path stalled for a
/// tenth of a second and more); synced every few MiB, the log's syncs interleave with the
/// snapshot's.
const SYNC_EVERY: u64 = 8 << 20;

fn header() -> [u8; HEADER_LEN as usize] {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..MAGIC.len()].copy_from_slice(MAGIC);
    header[MAGIC.len()] = FILE_FORMAT;
    header
}

/// The directory of snapshot files of the data dir `data_dir`.
pub(crate) fn directory(data_dir: &Path) -> PathBuf {
    data_dir.join(SNAPSHOT_DIR)
}

/// The name of the snapshot file ending at log id (`term`, `index`).
pub(crate) fn file_name(term: u64, index: u64) -> String {
    format!("{term}-{index}{COMPLETE}")
}

fn io_failure(what: &str, path: &Path, e: std::io::Error) -> StorageFailure {
    StorageFailure(format!("cannot {what} {}: {e}", path.display()))
}

fn temporary_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.{:016x}{TEMPORARY}", rand::random::<u64>()))
}

/// Syncs a directory, so that a rename or a new file in it is durable.
fn sync_dir(dir: &Path) -> Result<(), StorageFailure> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_failure("sync", dir, e))
}

/// A new file, open for writing and reading back.
fn create_read_write(path: &Path) -> Result<std::fs::File, StorageFailure> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io_failure("create", path, e))
}

fn create_dir(dir: &Path) -> Result<(), StorageFailure> {
    std::fs::create_dir_all(dir).map_err(|e| io_failure("create", dir, e))
}

/// A snapshot file being written, part by part. Dropped before [`PendingFile::finish`], it
/// removes what it wrote; a process killed meanwhile leaves a `.tmp` file that
/// [`remove_stray`] deletes on the next start.
pub(crate) struct PendingFile {
    dir: PathBuf,
    name: String,
    path: PathBuf,
    out: Option<BufWriter<std::fs::File>>,
    bytes: u64,
    /// `bytes` when the file was last synced.
    synced: u64,
    parts: u64,
}

impl PendingFile {
    /// Starts the file `name` in `dir` (a temporary file until [`PendingFile::finish`]).
    pub(crate) fn begin(dir: &Path, name: &str) -> Result<Self, StorageFailure> {
        create_dir(dir)?;
        let path = temporary_path(dir, name);
        let file = create_read_write(&path)?;
        let mut pending = PendingFile {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            out: Some(BufWriter::with_capacity(WRITE_BUFFER, file)),
            path,
            bytes: 0,
            synced: 0,
            parts: 0,
        };
        pending.write(&header())?;
        pending.write(&[STATE_IN_PARTS])?;
        Ok(pending)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageFailure> {
        let Some(out) = self.out.as_mut() else {
            return Err(StorageFailure("snapshot file already finished".into()));
        };
        out.write_all(bytes)
            .map_err(|e| io_failure("write", &self.path, e))?;
        self.bytes += bytes.len() as u64;
        if self.bytes - self.synced >= SYNC_EVERY {
            out.flush()
                .and_then(|()| out.get_ref().sync_data())
                .map_err(|e| io_failure("sync", &self.path, e))?;
            self.synced = self.bytes;
        }
        Ok(())
    }

    /// Appends one part (a record of `atoll_state::snapshot::state_parts`) after its length.
    pub(crate) fn append_part(&mut self, part: &[u8]) -> Result<(), StorageFailure> {
        let size = u32::try_from(part.len())
            .map_err(|_| StorageFailure("a snapshot part exceeds 4 GiB".into()))?;
        self.write(&size.to_le_bytes())?;
        self.write(part)?;
        self.parts += 1;
        Ok(())
    }

    /// Parts written so far.
    pub(crate) fn parts(&self) -> u64 {
        self.parts
    }

    /// Syncs the file, renames it to its name and syncs the directory: from here on the file
    /// is complete and durable. Returns its path and size, and the file opened for reading
    /// (open before any other writer could replace and delete it).
    pub(crate) fn finish(mut self) -> Result<(PathBuf, u64, SnapshotFile), StorageFailure> {
        let Some(out) = self.out.take() else {
            return Err(StorageFailure("snapshot file already finished".into()));
        };
        let file = out
            .into_inner()
            .map_err(|e| io_failure("write", &self.path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| io_failure("sync", &self.path, e))?;
        let done = self.dir.join(&self.name);
        std::fs::rename(&self.path, &done).map_err(|e| io_failure("rename", &self.path, e))?;
        // Renamed: the temporary path no longer exists, so dropping `self` removes nothing.
        self.path = done.clone();
        sync_dir(&self.dir)?;
        let opened = SnapshotFile::reading(file, &done)?;
        Ok((done, self.bytes, opened))
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        if self.out.is_some() {
            // Not finished: an error or a cancelled snapshot. The previous one stays in force.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes a whole snapshot file from its parts (see [`PendingFile`]).
pub(crate) fn write_snapshot(
    dir: &Path,
    name: &str,
    parts: impl Iterator<Item = Result<Vec<u8>, StorageFailure>>,
) -> Result<Written, StorageFailure> {
    let mut pending = PendingFile::begin(dir, name)?;
    for part in parts {
        pending.append_part(&part?)?;
    }
    let parts = pending.parts();
    let (_, bytes, opened) = pending.finish()?;
    Ok(Written {
        bytes,
        parts,
        opened,
    })
}

/// A snapshot file written and synced.
pub(crate) struct Written {
    pub(crate) bytes: u64,
    pub(crate) parts: u64,
    /// The file, opened for reading.
    pub(crate) opened: SnapshotFile,
}

/// Deletes every file in `dir` but `keep`: temporary files of a write that a crash
/// interrupted, and snapshots no longer in force. Run when no snapshot is being written.
pub(crate) fn remove_stray(dir: &Path, keep: Option<&str>) -> Result<(), StorageFailure> {
    remove_matching(dir, |name| Some(name) != keep)
}

/// Deletes the complete snapshot files in `dir` but `keep` (a write in progress elsewhere
/// keeps its temporary file).
pub(crate) fn remove_replaced(dir: &Path, keep: &str) -> Result<(), StorageFailure> {
    remove_matching(dir, |name| name != keep && name.ends_with(COMPLETE))
}

fn remove_matching(dir: &Path, remove: impl Fn(&str) -> bool) -> Result<(), StorageFailure> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_failure("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| io_failure("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if remove(name) {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_failure("remove", &path, e)),
            }
        }
    }
    Ok(())
}

/// Bytes of every file in `dir` (0 when it does not exist).
pub(crate) fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|entry| entry.ok()?.metadata().ok())
        .filter(|meta| meta.is_file())
        .map(|meta| meta.len())
        .sum()
}

/// A snapshot file that cannot be read: names it and says what to do.
fn damaged(path: &Path, what: impl std::fmt::Display) -> StorageFailure {
    StorageFailure(format!(
        "{} is damaged ({what}); {DAMAGED_ADVICE}",
        path.display()
    ))
}

/// Reads and checks the header of the file at `path`, leaving `file` at the snapshot's bytes.
fn read_header(file: &mut std::fs::File, path: &Path) -> Result<(), StorageFailure> {
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut header)
        .map_err(|e| damaged(path, format!("its header cannot be read: {e}")))?;
    if &header[..MAGIC.len()] != MAGIC {
        return Err(damaged(path, "it is not an atoll snapshot"));
    }
    match header[MAGIC.len()] {
        FILE_FORMAT => Ok(()),
        newer => Err(StorageFailure(format!(
            "{} was written by a newer atoll (snapshot file format {newer})",
            path.display()
        ))),
    }
}

/// Decodes the state held in the snapshot file at `path`, reading one part at a time.
pub(crate) fn read_state(path: &Path) -> Result<State, StorageFailure> {
    let mut file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            damaged(path, "the snapshot the Raft meta names is missing")
        } else {
            io_failure("open", path, e)
        }
    })?;
    let size = file
        .metadata()
        .map_err(|e| io_failure("read", path, e))?
        .len();
    read_header(&mut file, path)?;
    let mut reader = std::io::BufReader::with_capacity(WRITE_BUFFER, file);
    let mut marker = [0u8; 1];
    reader
        .read_exact(&mut marker)
        .map_err(|e| damaged(path, format!("the snapshot cannot be read: {e}")))?;
    if marker[0] != STATE_IN_PARTS {
        // One record holding the whole state, as a leader of an earlier release sends it.
        let mut whole = marker.to_vec();
        reader
            .read_to_end(&mut whole)
            .map_err(|e| io_failure("read", path, e))?;
        return decode_state(&whole).map_err(|e| damaged(path, e));
    }
    let mut left = size.saturating_sub(HEADER_LEN + 1);
    let mut failure = None;
    let parts = std::iter::from_fn(|| {
        if left == 0 || failure.is_some() {
            return None;
        }
        let part = read_part(&mut reader, &mut left);
        match part {
            Ok(part) => Some(part),
            Err(e) => {
                failure = Some(e);
                None
            }
        }
    });
    let decoded = decode_state_parts(parts);
    if let Some(e) = failure {
        return Err(damaged(path, e));
    }
    decoded.map_err(|e| damaged(path, e))
}

/// Reads one part after its length, never allocating more than the file still holds.
fn read_part(reader: &mut impl Read, left: &mut u64) -> Result<Vec<u8>, String> {
    let mut size = [0u8; 4];
    reader
        .read_exact(&mut size)
        .map_err(|e| format!("the snapshot is cut inside a part's length: {e}"))?;
    let size = u64::from(u32::from_le_bytes(size));
    *left = left.saturating_sub(4);
    if size > *left {
        return Err("the snapshot is cut inside a part".to_string());
    }
    let mut part = vec![0u8; size as usize];
    reader
        .read_exact(&mut part)
        .map_err(|e| format!("the snapshot cannot be read: {e}"))?;
    *left -= size;
    Ok(part)
}

/// openraft's snapshot data: a snapshot file seen without its header. The leader opens the
/// snapshot in force to send it in chunks; a follower receives chunks into a temporary file,
/// removed when dropped unless installed ([`SnapshotFile::install`]).
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
    temporary: bool,
}

impl SnapshotFile {
    /// Opens the complete snapshot file at `path` for reading.
    pub(crate) fn open(path: &Path) -> Result<Self, StorageFailure> {
        let mut file = std::fs::File::open(path).map_err(|e| io_failure("open", path, e))?;
        read_header(&mut file, path)?;
        Ok(SnapshotFile {
            file: tokio::fs::File::from_std(file),
            path: path.to_path_buf(),
            temporary: false,
        })
    }

    /// The complete snapshot file at `path`, open as `file`, for reading.
    fn reading(mut file: std::fs::File, path: &Path) -> Result<Self, StorageFailure> {
        file.seek(SeekFrom::Start(HEADER_LEN))
            .map_err(|e| io_failure("read", path, e))?;
        Ok(SnapshotFile {
            file: tokio::fs::File::from_std(file),
            path: path.to_path_buf(),
            temporary: false,
        })
    }

    /// A temporary file in `dir` for a snapshot received from the leader.
    pub(crate) fn receive(dir: &Path) -> Result<Self, StorageFailure> {
        create_dir(dir)?;
        let path = temporary_path(dir, "received");
        let mut file = create_read_write(&path)?;
        let written = file.write_all(&header());
        let received = SnapshotFile {
            file: tokio::fs::File::from_std(file),
            path,
            temporary: true,
        };
        written.map_err(|e| io_failure("write", &received.path, e))?;
        Ok(received)
    }

    /// A temporary file holding a snapshot stored in redb by an earlier release, to be sent
    /// to a follower the way a snapshot file is.
    pub(crate) fn temporary_from(
        dir: &Path,
        blob_parts: impl Iterator<Item = Result<Vec<u8>, StorageFailure>>,
    ) -> Result<Self, StorageFailure> {
        let mut pending = PendingFile::begin(dir, "previous-format")?;
        for part in blob_parts {
            pending.append_part(&part?)?;
        }
        let Some(out) = pending.out.take() else {
            return Err(StorageFailure("snapshot file already finished".into()));
        };
        let mut file = out
            .into_inner()
            .map_err(|e| io_failure("write", &pending.path, e.into_error()))?;
        file.seek(SeekFrom::Start(HEADER_LEN))
            .map_err(|e| io_failure("read", &pending.path, e))?;
        Ok(SnapshotFile {
            file: tokio::fs::File::from_std(file),
            path: pending.path.clone(),
            temporary: true,
        })
    }

    /// Whether this is a file received into `dir` (not yet installed).
    pub(crate) fn is_received_in(&self, dir: &Path) -> bool {
        self.temporary && self.path.parent() == Some(dir)
    }

    /// A synced copy of this snapshot file, received into `dir`: for snapshot data that came
    /// from elsewhere than [`SnapshotFile::receive`] (another node's file, in tests).
    pub(crate) fn copy_into(&self, dir: &Path) -> Result<SnapshotFile, StorageFailure> {
        create_dir(dir)?;
        let path = temporary_path(dir, "received");
        let copy = SnapshotFile {
            file: tokio::fs::File::from_std(create_read_write(&path)?),
            path,
            temporary: true,
        };
        std::fs::copy(&self.path, &copy.path).map_err(|e| io_failure("copy", &self.path, e))?;
        std::fs::File::open(&copy.path)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_failure("sync", &copy.path, e))?;
        Ok(copy)
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes out and syncs what a received snapshot holds.
    pub(crate) async fn sync(&mut self) -> Result<(), StorageFailure> {
        use tokio::io::AsyncWriteExt;
        self.file
            .flush()
            .await
            .map_err(|e| io_failure("write", &self.path, e))?;
        self.file
            .sync_all()
            .await
            .map_err(|e| io_failure("sync", &self.path, e))
    }

    /// Renames a synced received snapshot to `name` in its directory and syncs the
    /// directory: from here on it is a complete snapshot file, kept when dropped. Returns
    /// its size.
    pub(crate) fn persist(&mut self, name: &str) -> Result<u64, StorageFailure> {
        let dir = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let done = dir.join(name);
        std::fs::rename(&self.path, &done).map_err(|e| io_failure("rename", &self.path, e))?;
        self.path = done;
        self.temporary = false;
        sync_dir(&dir)?;
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(|e| io_failure("read", &self.path, e))
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

/// Positions count from the end of the header: offset 0 is the snapshot's first byte.
impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: SeekFrom) -> std::io::Result<()> {
        let position = match position {
            SeekFrom::Start(offset) => SeekFrom::Start(offset.saturating_add(HEADER_LEN)),
            relative => relative,
        };
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<u64>> {
        // Also asked before a seek starts (for a pending one), when tokio's position may be
        // that of a file just opened: 0, before the header.
        match Pin::new(&mut self.file).poll_complete(cx) {
            Poll::Ready(Ok(position)) => Poll::Ready(Ok(position.saturating_sub(HEADER_LEN))),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_larger_than_the_sync_step_is_synced_as_it_grows_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let part: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
        let mut pending = PendingFile::begin(dir.path(), "1-1.snap").unwrap();
        for _ in 0..6 {
            pending.append_part(&part).unwrap();
        }
        assert!(
            pending.synced >= 2 * SYNC_EVERY,
            "synced {}",
            pending.synced
        );
        assert!(pending.bytes - pending.synced < SYNC_EVERY);
        let (path, bytes, _) = pending.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes);

        let mut file = std::fs::File::open(&path).unwrap();
        read_header(&mut file, &path).unwrap();
        let mut reader = std::io::BufReader::new(file);
        let mut marker = [0u8; 1];
        reader.read_exact(&mut marker).unwrap();
        assert_eq!(marker[0], STATE_IN_PARTS);
        let mut left = bytes - HEADER_LEN - 1;
        for _ in 0..6 {
            assert_eq!(read_part(&mut reader, &mut left).unwrap(), part);
        }
        assert_eq!(left, 0);
    }
}
