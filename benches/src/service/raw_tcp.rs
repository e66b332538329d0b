//! The loopback ceiling: a raw TCP request/response of the same sizes, with buffers
//! allocated once on both sides. A `put` sends a length and the payload and waits for
//! one byte; a `get` sends a length and reads that many bytes back. The server runs
//! one blocking thread per connection, as plainly as it can be done.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw TCP server on a loopback port, serving until the process exits.
pub(super) struct RawTcpServer {
    pub port: u16,
}

impl RawTcpServer {
    pub(super) fn start(max_len: usize) -> anyhow::Result<RawTcpServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        std::thread::Builder::new()
            .name("raw-tcp-accept".into())
            .spawn(move || {
                for conn in listener.incoming().flatten() {
                    let _ = std::thread::Builder::new()
                        .name("raw-tcp".into())
                        .spawn(move || serve(conn, max_len));
                }
            })?;
        Ok(RawTcpServer { port })
    }
}

fn serve(mut conn: TcpStream, max_len: usize) {
    let _ = conn.set_nodelay(true);
    let mut buf = vec![7u8; max_len];
    let mut head = [0u8; 9];
    while conn.read_exact(&mut head).is_ok() {
        let mut l = [0u8; 8];
        l.copy_from_slice(&head[1..]);
        let len = (u64::from_le_bytes(l) as usize).min(max_len);
        let ok = match head[0] {
            b'P' => conn
                .read_exact(&mut buf[..len])
                .and_then(|_| conn.write_all(&[1])),
            _ => conn.write_all(&buf[..len]),
        };
        if ok.is_err() {
            return;
        }
    }
}

/// One client connection with its receive buffer.
pub(super) struct RawTcpConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawTcpConn {
    pub(super) async fn connect(port: u16, max_len: usize) -> anyhow::Result<RawTcpConn> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(RawTcpConn {
            stream,
            buf: vec![0u8; max_len],
        })
    }

    pub(super) async fn put(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let mut head = [b'P'; 9];
        head[1..].copy_from_slice(&(data.len() as u64).to_le_bytes());
        self.stream.write_all(&head).await?;
        self.stream.write_all(data).await?;
        let mut ack = [0u8; 1];
        self.stream.read_exact(&mut ack).await?;
        Ok(())
    }

    pub(super) async fn get(&mut self, len: usize) -> anyhow::Result<usize> {
        let mut head = [b'G'; 9];
        head[1..].copy_from_slice(&(len as u64).to_le_bytes());
        self.stream.write_all(&head).await?;
        let len = len.min(self.buf.len());
        self.stream.read_exact(&mut self.buf[..len]).await?;
        Ok(len)
    }
}

/// CPU time (user + system) a process has used, in seconds; `None` off Linux.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a constant of the C library.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}
