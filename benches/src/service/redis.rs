//! The service baseline: a `redis-server` started on a free loopback port, and a
//! minimal RESP client (SET / GET of binary values on one connection).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A redis-server child process, stopped on drop.
pub(super) struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts redis-server with persistence off; `Err` with the reason when it is not
    /// installed or does not come up.
    pub(super) fn start() -> anyhow::Result<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args([
                "--protected-mode",
                "no",
                "--proto-max-bulk-len",
                "1gb",
                "--client-query-buffer-limit",
                "1gb",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("redis-server is not installed (apt-get install redis-server)")?;
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("redis-server did not start on port {port}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }
}

impl RedisServer {
    /// The server's process id (its CPU time is read from /proc).
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One RESP connection.
pub(super) struct RedisConn {
    stream: BufReader<TcpStream>,
}

impl RedisConn {
    pub(super) async fn connect(port: u16) -> anyhow::Result<RedisConn> {
        let s = TcpStream::connect(("127.0.0.1", port)).await?;
        s.set_nodelay(true)?;
        Ok(RedisConn {
            stream: BufReader::with_capacity(1 << 20, s),
        })
    }

    async fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        if line.is_empty() {
            bail!("redis closed the connection");
        }
        Ok(line.trim_end().to_string())
    }

    pub(super) async fn set(&mut self, key: &str, value: &Bytes) -> anyhow::Result<()> {
        let head = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            value.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(value).await?;
        s.write_all(b"\r\n").await?;
        let reply = self.line().await?;
        if reply != "+OK" {
            bail!("SET: {reply}");
        }
        Ok(())
    }

    pub(super) async fn get(&mut self, key: &str) -> anyhow::Result<Option<Bytes>> {
        let cmd = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
        self.stream.get_mut().write_all(cmd.as_bytes()).await?;
        let head = self.line().await?;
        let Some(len) = head.strip_prefix('$') else {
            bail!("GET: {head}");
        };
        let len: i64 = len.parse().context("GET length")?;
        if len < 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; len as usize + 2];
        self.stream.read_exact(&mut buf).await?;
        buf.truncate(len as usize);
        Ok(Some(Bytes::from(buf)))
    }
}
