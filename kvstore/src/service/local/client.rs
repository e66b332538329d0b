//! The same-host channel's client side: one Unix connection per client (requests are
//! tiny; the bytes move through the mapping, outside the connection's lock), the
//! server's slab mapped once, leased blocks handed out as [`Bytes`] that read the
//! mapping in place and release their lease when the last clone drops.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::Status;

use super::fd::recv_with_fd;
use super::{
    COMMIT_ENTRY, HELLO_REPLY, LEASE_ENTRY, MAGIC, OP_COMMIT, OP_LEASE, OP_RELEASE, OP_STAGE,
    TAG_MISSING, TAG_NOT_SHARED, TAG_OK, TAG_SUMMARY, VERSION, be_u128, le_u32, le_u64,
};
use crate::service::PublishSummary;
use crate::service::data::TAG_ERROR;
use crate::service::data::client::DataError;
use crate::service::data::{crc_ok, read_error};

/// The server's slab, mapped into this process.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; which bytes may be read or written is
// governed by leases and staged slots granted by the server.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(fd: &OwnedFd, len: usize) -> std::io::Result<Mapping> {
        // SAFETY: a new shared mapping of the received memfd with no address hint; the
        // result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        NonNull::new(ptr.cast::<u8>())
            .map(|ptr| Mapping { ptr, len })
            .ok_or_else(|| std::io::Error::other("mmap returned null"))
    }

    /// The bytes at `offset..offset+len`, if they lie inside the mapping.
    fn range(&self, offset: u64, len: u64) -> Option<*mut u8> {
        let end = offset.checked_add(len)?;
        (end <= self.len as u64).then(|| {
            // SAFETY: `offset + len <= self.len`, so the pointer stays in the mapping.
            unsafe { self.ptr.as_ptr().add(offset as usize) }
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `map`; no lease outlives it (each holds
        // an `Arc` of the channel that owns it).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

struct Conn {
    stream: UnixStream,
}

/// A connection to the server's same-host socket.
pub(crate) struct LocalChannel {
    conn: tokio::sync::Mutex<Conn>,
    map: Mapping,
    slot_bytes: usize,
    /// Leases whose blocks were dropped, to be released with the next message.
    released: Mutex<Vec<u64>>,
    flush_scheduled: AtomicBool,
}

impl std::fmt::Debug for LocalChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalChannel")
            .field("slab_bytes", &self.map.len)
            .finish()
    }
}

/// What a lease of one block gave.
pub(crate) enum Leased {
    Block(Bytes),
    Missing,
    /// Not in shared memory (a lower tier and no free slot to copy it into): fetch it
    /// over the network.
    Elsewhere,
}

fn protocol(what: &str) -> DataError {
    DataError::Status(Status::internal(format!("same-host channel: {what}")))
}

impl LocalChannel {
    /// Connects to `path` and maps the slab; `Ok(None)` when the server there is not
    /// `instance` (another machine's path, or a restarted server).
    pub(crate) async fn connect(
        path: &Path,
        token: Option<&str>,
        instance: u128,
    ) -> Result<Option<LocalChannel>, DataError> {
        let mut stream = UnixStream::connect(path).await?;
        let token = token.unwrap_or("").as_bytes();
        let mut hello = Vec::with_capacity(8 + token.len());
        hello.extend_from_slice(&MAGIC);
        hello.extend_from_slice(&VERSION.to_le_bytes());
        hello.extend_from_slice(&(token.len() as u16).to_le_bytes());
        hello.extend_from_slice(token);
        stream.write_all(&hello).await?;
        let mut reply = [0u8; HELLO_REPLY];
        let (n, fd) = recv_with_fd(&stream, &mut reply).await?;
        if n == 0 {
            return Err(DataError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if reply[0] == TAG_ERROR {
            // The error frame's rest may have come with the first read.
            let mut rest = std::io::Cursor::new(reply[1..n].to_vec()).chain(&mut stream);
            return Err(DataError::Status(read_error(&mut rest).await?));
        }
        if reply[0] != 0 {
            return Err(protocol("bad hello reply"));
        }
        if n < HELLO_REPLY {
            stream.read_exact(&mut reply[n..]).await?;
        }
        let fd = fd.ok_or_else(|| protocol("no slab descriptor in the hello reply"))?;
        let server_instance = le_u128(&reply[1..17]);
        if server_instance != instance {
            return Ok(None);
        }
        let slab_len = le_u64(&reply, 17) as usize;
        let slot_bytes = le_u64(&reply, 33) as usize;
        let map = Mapping::map(&fd, slab_len)?;
        Ok(Some(LocalChannel {
            conn: tokio::sync::Mutex::new(Conn { stream }),
            map,
            slot_bytes,
            released: Mutex::new(Vec::new()),
            flush_scheduled: AtomicBool::new(false),
        }))
    }

    /// A RELEASE message for the leases dropped so far (empty when none).
    fn take_releases(&self) -> Vec<u8> {
        let ids = std::mem::take(&mut *tierkv_tiers::sync::lock(&self.released));
        if ids.is_empty() {
            return Vec::new();
        }
        let mut m = Vec::with_capacity(5 + ids.len() * 8);
        m.push(OP_RELEASE);
        m.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids {
            m.extend_from_slice(&id.to_le_bytes());
        }
        m
    }

    fn lease_dropped(self: &Arc<Self>, id: u64) {
        tierkv_tiers::sync::lock(&self.released).push(id);
        // Release promptly even if this client sends nothing else for a while.
        if !self.flush_scheduled.swap(true, Ordering::AcqRel)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let me = Arc::clone(self);
            rt.spawn(async move {
                // Taken under the connection's lock, so a request that follows on this
                // connection is read by the server after these releases.
                let mut c = me.conn.lock().await;
                me.flush_scheduled.store(false, Ordering::Release);
                let msg = me.take_releases();
                if !msg.is_empty() {
                    let _ = c.stream.write_all(&msg).await;
                }
            });
        }
    }

    /// Leases `hashes` of `namespace` and reads them in place; a block that fails its
    /// crc32c check is released and reported missing.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        namespace: &str,
        hashes: &[u128],
    ) -> Result<Vec<Leased>, DataError> {
        let count = u32::try_from(hashes.len()).map_err(|_| protocol("too many hashes"))?;
        let mut msg = Vec::new();
        let entries = {
            let mut c = self.conn.lock().await;
            msg.extend_from_slice(&self.take_releases());
            msg.extend_from_slice(&crate::service::data::request_header(
                OP_LEASE, namespace, count,
            ));
            for h in hashes {
                msg.extend_from_slice(&h.to_be_bytes());
            }
            c.stream.write_all(&msg).await?;
            let mut entries = vec![0u8; hashes.len() * LEASE_ENTRY];
            let mut got = 0;
            while got < entries.len() {
                let n = c.stream.read(&mut entries[got..]).await?;
                if n == 0 {
                    return Err(DataError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                if got == 0 && entries[0] == TAG_ERROR {
                    let mut rest =
                        std::io::Cursor::new(entries[1..n].to_vec()).chain(&mut c.stream);
                    return Err(DataError::Status(read_error(&mut rest).await?));
                }
                got += n;
            }
            entries
        };
        let mut out = Vec::with_capacity(hashes.len());
        for (i, e) in entries.chunks_exact(LEASE_ENTRY).enumerate() {
            let (id, offset, len, crc) = (le_u64(e, 1), le_u64(e, 9), le_u64(e, 17), le_u32(e, 25));
            match e[0] {
                TAG_MISSING => out.push(Leased::Missing),
                TAG_NOT_SHARED => out.push(Leased::Elsewhere),
                TAG_OK => {
                    let Some(ptr) = self.map.range(offset, len).filter(|_| len > 0) else {
                        self.lease_dropped(id);
                        return Err(protocol("lease outside the slab"));
                    };
                    let block = Bytes::from_owner(Lease {
                        channel: Arc::clone(self),
                        id,
                        ptr,
                        len: len as usize,
                    });
                    out.push(match crc_ok(&block, crc, i, "leased") {
                        true => Leased::Block(block),
                        false => Leased::Missing,
                    });
                }
                _ => return Err(protocol("unexpected lease tag")),
            }
        }
        Ok(out)
    }

    /// Publishes blocks by staging slots, copying each block in once and committing.
    /// `Err(Status(ResourceExhausted))` when the server has no free slot: publish over
    /// the network then.
    pub(crate) async fn publish(
        &self,
        namespace: &str,
        blocks: &[(u128, Bytes)],
    ) -> Result<PublishSummary, DataError> {
        let count = u32::try_from(blocks.len()).map_err(|_| protocol("too many blocks"))?;
        if let Some((_, big)) = blocks
            .iter()
            .find(|(_, d)| d.len() > self.slot_bytes || d.is_empty())
        {
            return Err(DataError::Status(Status::resource_exhausted(format!(
                "block of {} bytes does not fit a slot of {}",
                big.len(),
                self.slot_bytes
            ))));
        }
        let staged = {
            let mut c = self.conn.lock().await;
            let mut msg = self.take_releases();
            msg.push(OP_STAGE);
            msg.extend_from_slice(&count.to_le_bytes());
            c.stream.write_all(&msg).await?;
            match c.stream.read_u8().await? {
                TAG_OK => {}
                TAG_ERROR => return Err(DataError::Status(read_error(&mut c.stream).await?)),
                _ => return Err(protocol("unexpected stage reply")),
            }
            let mut raw = vec![0u8; blocks.len() * 16];
            c.stream.read_exact(&mut raw).await?;
            raw
        };
        let mut commit = crate::service::data::request_header(OP_COMMIT, namespace, count);
        for (i, (hash, data)) in blocks.iter().enumerate() {
            let (id, offset) = (le_u64(&staged, i * 16), le_u64(&staged, i * 16 + 8));
            let Some(dst) = self.map.range(offset, data.len() as u64) else {
                return Err(protocol("staged slot outside the slab"));
            };
            // SAFETY: the server staged this slot for this connection alone; it lies in
            // the mapping (checked), holds at least `slot_bytes >= data.len()` bytes,
            // and nobody else writes or reads it until the commit below.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
            let mut entry = [0u8; COMMIT_ENTRY];
            entry[..8].copy_from_slice(&id.to_le_bytes());
            entry[8..24].copy_from_slice(&hash.to_be_bytes());
            entry[24..32].copy_from_slice(&(data.len() as u64).to_le_bytes());
            commit.extend_from_slice(&entry);
        }
        let mut c = self.conn.lock().await;
        c.stream.write_all(&commit).await?;
        match c.stream.read_u8().await? {
            TAG_SUMMARY => {}
            TAG_ERROR => return Err(DataError::Status(read_error(&mut c.stream).await?)),
            _ => return Err(protocol("unexpected commit reply")),
        }
        let stored = c.stream.read_u64_le().await?;
        let already_present = c.stream.read_u64_le().await?;
        let n = c.stream.read_u32_le().await? as usize;
        if n > blocks.len() {
            return Err(protocol("more rejected blocks than published"));
        }
        let mut raw = vec![0u8; n * 16];
        c.stream.read_exact(&mut raw).await?;
        Ok(PublishSummary {
            stored,
            already_present,
            rejected: (0..n).map(|i| be_u128(&raw, i * 16)).collect(),
        })
    }
}

fn le_u128(b: &[u8]) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    u128::from_le_bytes(a)
}

/// A leased block: reads the mapping in place; its lease is released on drop.
struct Lease {
    channel: Arc<LocalChannel>,
    id: u64,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the leased bytes are read-only for this process and not recycled by the
// server while the lease lives.
unsafe impl Send for Lease {}
// SAFETY: as above.
unsafe impl Sync for Lease {}

impl AsRef<[u8]> for Lease {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies in the mapping (checked when the lease was made),
        // the mapping lives as long as `channel`, and the server neither recycles nor
        // writes a leased slot until the lease is released (after this view is gone).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.channel.lease_dropped(self.id);
    }
}
