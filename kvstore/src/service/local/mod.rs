//! The same-host channel: `tierkv serve` shares its host slab (a memfd) with clients
//! on the machine over a Unix socket. A reader leases blocks and reads them in place in
//! its own mapping of the slab; a writer stages slots, copies its blocks in once, and
//! commits them, which the store adopts without another copy. Tokens and namespaces are
//! checked as on gRPC; checksums are verified by whoever receives the bytes (the client
//! on a lease); a committed block's crc32c is computed once by the server, as it enters
//! the store (its bytes crossed no wire).
//!
//! A leased slot is never recycled while the lease lives; leases and staged slots
//! belong to the connection, so a client that dies (its socket closes) releases them
//! all. A block found only in a lower tier is copied once into a staged slot and leased
//! from there; when no slot is free the client is told to use the network path.
//!
//! The server advertises the socket path and a random instance id in `StatsReply`; a
//! client that can open the path and gets the same id back is on the same machine.
//!
//! Wire format (little-endian; hashes 16 bytes big-endian):
//!
//! ```text
//! hello    C->S  "TKVL" | version u16 | token_len u16 | token
//!          S->C  0 | instance u128 | slab_len u64 | slot_stride u64 | slot_bytes u64
//!                + the memfd (SCM_RIGHTS)          or an error frame, then close
//! lease    C->S  1 | ns_len u16 | ns | count u32 | count x hash
//!          S->C  per hash: tag u8 | lease u64 | offset u64 | len u64 | crc32c u32
//!                (tag 1 leased, 0 missing, 4 not in shared memory)   or an error frame
//! release  C->S  2 | count u32 | count x lease u64                   (no reply)
//! stage    C->S  3 | count u32
//!          S->C  1 | count x (stage u64 | offset u64)                or an error frame
//! commit   C->S  4 | ns_len u16 | ns | count u32 | count x (stage u64 | hash | len u64)
//!          S->C  2 | stored u64 | already_present u64 | n u32 | n x rejected hash
//!                                                                    or an error frame
//! ```
//! Error frames are those of the data channel (`tag 3 | code u8 | msg_len u16 | msg`).

pub(crate) mod client;
mod fd;
pub(crate) mod server;

pub(crate) const MAGIC: [u8; 4] = *b"TKVL";
pub(crate) const VERSION: u16 = 1;
pub(crate) const OP_LEASE: u8 = 1;
pub(crate) const OP_RELEASE: u8 = 2;
pub(crate) const OP_STAGE: u8 = 3;
pub(crate) const OP_COMMIT: u8 = 4;
pub(crate) const TAG_MISSING: u8 = 0;
pub(crate) const TAG_OK: u8 = 1;
pub(crate) const TAG_SUMMARY: u8 = 2;
pub(crate) const TAG_NOT_SHARED: u8 = 4;
/// hello reply: tag, instance, slab length, slot stride, slot bytes.
pub(crate) const HELLO_REPLY: usize = 1 + 16 + 8 + 8 + 8;
/// One lease reply entry.
pub(crate) const LEASE_ENTRY: usize = 1 + 8 + 8 + 8 + 4;
/// One commit entry.
pub(crate) const COMMIT_ENTRY: usize = 8 + 16 + 8;
/// Leases one connection may hold at once.
pub(crate) const MAX_LEASES: usize = 1 << 16;
/// Slots one connection may hold staged at once.
pub(crate) const MAX_STAGED: usize = 4096;

pub(crate) fn lease_entry(
    tag: u8,
    lease: u64,
    offset: u64,
    len: u64,
    crc: u32,
) -> [u8; LEASE_ENTRY] {
    let mut e = [0u8; LEASE_ENTRY];
    e[0] = tag;
    e[1..9].copy_from_slice(&lease.to_le_bytes());
    e[9..17].copy_from_slice(&offset.to_le_bytes());
    e[17..25].copy_from_slice(&len.to_le_bytes());
    e[25..29].copy_from_slice(&crc.to_le_bytes());
    e
}

/// Little-endian integer at `at` of a fixed-size record.
pub(crate) fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn be_u128(b: &[u8], at: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    u128::from_be_bytes(a)
}
