//! The object tier against a real S3-compatible server (moto) behind a fault proxy
//! that answers 503, resets connections or stalls. Every fault must end in an error
//! within the configured time (no hang), a retried fault must succeed, a read is the
//! right bytes or an error (never wrong bytes), and what was stored before a fault
//! reads back after it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{S3Server, payload};
use tierkv_tiers::{BlockKey, ObjectBackend, ObjectTier, ObjectTierConfig, Tier};

/// What the proxy does to each new connection.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Pass,
    /// Reads the request head and answers `503 Slow Down`, for the next `n`
    /// connections (then passes).
    Unavailable(u32),
    /// Resets the connection as soon as it is accepted.
    Reset,
    /// Accepts and never answers.
    Stall,
}

/// A TCP proxy in front of moto. Changing the mode cuts every open connection, so
/// pooled keep-alive connections meet the new mode too.
struct FaultProxy {
    addr: String,
    mode: Arc<Mutex<Mode>>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl FaultProxy {
    fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (m, o) = (Arc::clone(&mode), Arc::clone(&open));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                let now = {
                    let mut m = m.lock().unwrap();
                    let now = *m;
                    if let Mode::Unavailable(n) = *m {
                        *m = if n > 1 {
                            Mode::Unavailable(n - 1)
                        } else {
                            Mode::Pass
                        };
                    }
                    now
                };
                if let Ok(c) = client.try_clone() {
                    o.lock().unwrap().push(c);
                }
                std::thread::spawn(move || serve(client, now, upstream));
            }
        });
        FaultProxy { addr, mode, open }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
        for c in self.open.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn serve(mut client: TcpStream, mode: Mode, upstream: u16) {
    match mode {
        Mode::Reset => {
            // Linger 0: closing sends RST instead of FIN.
            use std::os::fd::AsRawFd;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: the descriptor is open (owned by `client`, dropped after this
            // call) and the value is a `linger` of the size passed.
            unsafe {
                libc::setsockopt(
                    client.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
        }
        Mode::Stall => {
            let mut sink = [0u8; 4096];
            while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
        }
        Mode::Unavailable(_) => {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && matches!(client.read(&mut byte), Ok(1)) {
                head.push(byte[0]);
            }
            let _ = client.write_all(
                b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        Mode::Pass => {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let mut server = server;
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut server);
                let _ = server.shutdown(Shutdown::Write);
            });
            let _ = std::io::copy(&mut s2, &mut client);
            let _ = client.shutdown(Shutdown::Both);
            let _ = up.join();
        }
    }
}

const SLOT: usize = 64 << 10;

fn key(i: u128) -> BlockKey {
    BlockKey::new(3, i)
}

async fn open_tier(endpoint: &str) -> ObjectTier {
    ObjectTier::open(ObjectTierConfig {
        backend: ObjectBackend::S3 {
            bucket: "faults".into(),
            region: "us-east-1".into(),
            endpoint: Some(endpoint.to_string()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            allow_http: true,
            virtual_hosted_style: false,
        },
        capacity_bytes: 256 * SLOT as u64,
        slot_bytes: SLOT,
        max_concurrency: 4,
        max_retries: 2,
        request_timeout: Duration::from_secs(1),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Runs `op` and checks that it ended within `limit` (with 503s and resets retried
/// with backoff, and stalls timed out, per request).
async fn bounded<T>(limit: Duration, op: impl std::future::Future<Output = T>) -> T {
    let start = Instant::now();
    let out = tokio::time::timeout(limit, op)
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?}: the tier hung"));
    assert!(start.elapsed() <= limit);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_faults_are_bounded_errors_retries_succeed_and_no_wrong_bytes() {
    let moto = S3Server::start();
    moto.create_bucket("faults");
    let port: u16 = moto.endpoint.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = FaultProxy::start(port);
    let tier = open_tier(&proxy.addr).await;
    let limit = Duration::from_secs(20);
    for i in 0..4 {
        tier.put(key(i), payload(i as u64, SLOT)).await.unwrap();
    }
    let mut refused = Vec::new();
    for (n, mode) in [Mode::Unavailable(1000), Mode::Reset, Mode::Stall]
        .into_iter()
        .enumerate()
    {
        proxy.set(mode);
        let i = 100 + n as u128;
        let put = bounded(limit, tier.put(key(i), payload(i as u64, SLOT))).await;
        assert!(
            put.is_err(),
            "{mode:?}: a put through a broken store succeeded"
        );
        refused.push(i);
        let got = bounded(limit, tier.get(key(0))).await;
        assert!(
            got.is_err(),
            "{mode:?}: {:?}",
            got.map(|b| b.map(|b| b.len()))
        );
    }
    // Two 503s in a row are retried through (max_retries = 2).
    proxy.set(Mode::Unavailable(2));
    bounded(limit, tier.put(key(200), payload(200, SLOT)))
        .await
        .expect("a put retried past two 503s");
    proxy.set(Mode::Pass);
    for i in (0..4).chain([200]) {
        assert_eq!(
            tier.get(key(i)).await.unwrap(),
            Some(payload(i as u64, SLOT)),
            "block {i} after the faults"
        );
    }
    for i in refused {
        assert_eq!(tier.get(key(i)).await.unwrap(), None, "refused block {i}");
    }
    // A tier reopened over the same bucket sees exactly what was acknowledged.
    let again = open_tier(&proxy.addr).await;
    assert_eq!(again.len(), 5);
}
