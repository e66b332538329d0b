//! Passing one file descriptor beside a few bytes over a Unix stream socket
//! (`SCM_RIGHTS`), on tokio sockets.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::UnixStream;

/// Sends `bytes` (all of them, in one message) with `fd` attached.
pub(super) async fn send_with_fd(
    stream: &UnixStream,
    bytes: &[u8],
    fd: RawFd,
) -> std::io::Result<()> {
    loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            sendmsg_fd(stream.as_raw_fd(), bytes, fd)
        }) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => return Err(std::io::Error::other("short write of a descriptor message")),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Receives up to `buf.len()` bytes and the descriptor sent with them, if any.
pub(super) async fn recv_with_fd(
    stream: &UnixStream,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    loop {
        stream.readable().await?;
        match stream.try_io(Interest::READABLE, || recvmsg_fd(stream.as_raw_fd(), buf)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Room for one descriptor's control message (`CMSG_SPACE(sizeof(int))` is 24 on
/// Linux; twice that to be safe on any ABI).
const CMSG_ROOM: usize = 64;

fn sendmsg_fd(sock: RawFd, bytes: &[u8], fd: RawFd) -> std::io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let mut control = [0u8; CMSG_ROOM];
    // SAFETY: `msghdr` is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is arithmetic on a constant.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as _;
    // SAFETY: `msg_control` points at `control`, which is larger than CMSG_SPACE(int),
    // so the first header and its data lie inside it; `iov` and `control` outlive the
    // sendmsg call, which only reads them (and `bytes`).
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(std::io::Error::other("no room for a control message"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        let n = libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

fn recvmsg_fd(sock: RawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u8; CMSG_ROOM];
    // SAFETY: `msghdr` is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_ROOM as _;
    // SAFETY: `iov` covers `buf`, which the kernel may write up to its length;
    // `control` is CMSG_ROOM bytes as declared; both outlive the call. MSG_CMSG_CLOEXEC
    // keeps a received descriptor from leaking into children.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut received = None;
    // SAFETY: the kernel filled `msg`'s control area; CMSG_FIRSTHDR/NXTHDR walk only
    // inside `msg_controllen`, and a descriptor is read only from an SCM_RIGHTS header
    // long enough to hold one.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let want = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            if (*cmsg).cmsg_level == libc::SOL_SOCKET
                && (*cmsg).cmsg_type == libc::SCM_RIGHTS
                && (*cmsg).cmsg_len as usize >= want
            {
                let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
                if fd >= 0 && received.is_none() {
                    received = Some(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::other("descriptor message truncated"));
    }
    Ok((n as usize, received))
}
