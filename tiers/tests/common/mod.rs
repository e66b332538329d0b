//! Test helpers: payload generation and a real S3-compatible server (moto) on 127.0.0.1.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) use tierkv_tiers::testing::payload;

/// A moto S3 server on a free loopback port, killed on drop.
pub(crate) struct S3Server {
    child: Child,
    pub endpoint: String,
    port: u16,
}

impl S3Server {
    /// Starts `moto_server` and waits until it answers. Panics (this is a test) with
    /// the command to install it when it is missing.
    pub(crate) fn start() -> S3Server {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        let args = ["-H", "127.0.0.1", "-p", &port.to_string()];
        // The console script, or the module where pip put no script on PATH.
        let child = Command::new("moto_server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .or_else(|_| {
                Command::new("python3")
                    .args(["-m", "moto.server"])
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .expect(
                "moto (a real S3-compatible server) is needed: \
                 run scripts/test, or pip install 'moto[server]'",
            );
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not start in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Creates a bucket with a plain (unsigned) `PUT /bucket`, which moto accepts.
    pub(crate) fn create_bucket(&self, bucket: &str) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .expect("send create-bucket");
        let mut reply = String::new();
        s.read_to_string(&mut reply)
            .expect("read create-bucket reply");
        assert!(reply.starts_with("HTTP/1.1 200"), "create bucket: {reply}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
