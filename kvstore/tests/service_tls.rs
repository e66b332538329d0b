//! The block service over TLS (rustls), with a CA and server certificate made by the
//! `openssl` command line for this test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use tierkv_kvstore::metrics::Metrics;
use tierkv_kvstore::service::{
    BlockClient, BlockClientConfig, ClientTls, ServiceConfig, TlsConfig, serve,
};
use tierkv_kvstore::{StoreConfig, TieredStore};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is needed for the TLS test (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `{name}.key` and `{name}.pem` for `cn`, signed by `{ca}.pem`; a server certificate
/// names localhost and 127.0.0.1.
fn sign(dir: &Path, ca: &str, name: &str, cn: &str) {
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    let subj = format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subj,
        ],
    );
    let ext = format!("{name}.cnf");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &ext,
        ],
    );
}

/// `{name}.pem` / `{name}.key`: a self-signed CA.
fn make_ca(dir: &Path, name: &str) {
    let (key, pem, subj) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &pem,
            "-days", "1", "-subj", &subj,
        ],
    );
}

/// ca.pem, and server.pem / server.key for localhost signed by it.
fn make_certs(dir: &Path) {
    make_ca(dir, "ca");
    sign(dir, "ca", "server", "localhost");
}

/// A block service on 127.0.0.1 with `service`'s TLS; its port and a stop handle.
async fn start(
    dir: &Path,
    service: ServiceConfig,
) -> (
    u16,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<tierkv_kvstore::Result<()>>,
) {
    let mut config = StoreConfig::from_toml(&format!(
        "data_dir = \"{}\"\nslot_bytes = \"1MiB\"\n[[tier]]\nkind = \"host\"\ncapacity = \"8MiB\"\n",
        dir.display()
    ))
    .unwrap();
    config.service = service;
    let store = TieredStore::open(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let svc = config.service.clone();
    let server = tokio::spawn(async move {
        serve(store, &svc, listener, Arc::new(Metrics::new()), async {
            let _ = stopped.await;
        })
        .await
    });
    (port, stop, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_fetch_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let (port, stop, server) = start(
        dir.path(),
        ServiceConfig {
            tls: Some(TlsConfig {
                cert: dir.path().join("server.pem"),
                key: dir.path().join("server.key"),
                client_ca: None,
            }),
            ..Default::default()
        },
    )
    .await;

    let mut cc = BlockClientConfig::new(format!("https://localhost:{port}"));
    cc.tls_ca = Some(dir.path().join("ca.pem"));
    cc.retries = 0;
    let client = BlockClient::new(cc).unwrap();
    let data = Bytes::from(vec![42u8; 300_000]);
    assert_eq!(
        client
            .publish("tls", &[(5, data.clone())])
            .await
            .unwrap()
            .stored,
        1
    );
    assert_eq!(client.fetch("tls", &[5]).await.unwrap(), vec![Some(data)]);

    // A plain-text client cannot talk to the TLS service.
    let mut plain = BlockClientConfig::new(format!("http://127.0.0.1:{port}"));
    plain.retries = 0;
    plain.timeout = std::time::Duration::from_secs(3);
    assert!(BlockClient::new(plain).unwrap().stats().await.is_err());

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// Mutual TLS between workers: with `tls.client_ca`, only a client presenting a
/// certificate of the cluster CA gets past the handshake; a client with no certificate
/// or one of another CA is refused before any call. A worker built as an engine builds
/// its peers' clients (`ClientTls::cluster_member`) gets through, and so does a remote
/// tier configured in TOML.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_certificates_of_the_cluster_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    sign(d, "ca", "worker", "decode-0");
    make_ca(d, "rogue-ca");
    sign(d, "rogue-ca", "rogue", "decode-0");
    let server_tls = TlsConfig {
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        client_ca: Some(d.join("ca.pem")),
    };
    let (port, stop, server) = start(
        d,
        ServiceConfig {
            tls: Some(server_tls.clone()),
            ..Default::default()
        },
    )
    .await;
    let client = |cert: Option<&str>| {
        // No scheme: a client with a CA speaks https.
        let mut cc = BlockClientConfig::new(format!("localhost:{port}"));
        cc.tls_ca = Some(d.join("ca.pem"));
        cc.tls_cert = cert.map(|c| d.join(format!("{c}.pem")));
        cc.tls_key = cert.map(|c| d.join(format!("{c}.key")));
        cc.retries = 0;
        cc.timeout = std::time::Duration::from_secs(5);
        BlockClient::new(cc).unwrap()
    };

    let data = Bytes::from(vec![7u8; 100_000]);
    let worker = client(Some("worker"));
    assert_eq!(
        worker
            .publish("mtls", &[(9, data.clone())])
            .await
            .unwrap()
            .stored,
        1
    );
    assert_eq!(
        worker.fetch("mtls", &[9]).await.unwrap(),
        vec![Some(data.clone())]
    );

    for (who, c) in [("no certificate", None), ("another CA", Some("rogue"))] {
        let refused = client(c).fetch("mtls", &[9]).await;
        assert!(refused.is_err(), "a client with {who} was served");
        let refused = client(c).publish("mtls", &[(10, data.clone())]).await;
        assert!(refused.is_err(), "a client with {who} published");
    }
    assert_eq!(
        worker.fetch("mtls", &[10]).await.unwrap(),
        vec![None],
        "nothing got in"
    );

    // A peer worker with the same kind of [service.tls] (its own certificate, the
    // cluster CA) reaches this one the way an engine does.
    let peer_tls = TlsConfig {
        cert: d.join("worker.pem"),
        key: d.join("worker.key"),
        client_ca: Some(d.join("ca.pem")),
    };
    let member = ClientTls::cluster_member(&peer_tls).expect("client_ca set");
    let mut cc = BlockClientConfig::new(format!("localhost:{port}"));
    member.apply(&mut cc);
    assert_eq!(
        BlockClient::new(cc)
            .unwrap()
            .fetch("mtls", &[9])
            .await
            .unwrap(),
        vec![Some(data.clone())]
    );
    assert!(
        ClientTls::cluster_member(&TlsConfig {
            client_ca: None,
            ..peer_tls
        })
        .is_none()
    );

    // A remote tier in TOML with the worker's certificate.
    let toml = format!(
        "data_dir = \"{d}\"\n[[tier]]\nkind = \"host\"\ncapacity = \"8MiB\"\n[[tier]]\nkind = \"remote\"\naddr = \"localhost:{port}\"\ntls_ca = \"{d}/ca.pem\"\ntls_cert = \"{d}/worker.pem\"\ntls_key = \"{d}/worker.key\"\n",
        d = d.display()
    );
    let config = StoreConfig::from_toml(&toml).unwrap();
    let tierkv_kvstore::TierConfig::Remote(section) = &config.tiers[1] else {
        panic!("second tier is remote")
    };
    let remote = config.remote_config(section);
    assert_eq!(
        BlockClient::new(remote.client)
            .unwrap()
            .fetch("mtls", &[9])
            .await
            .unwrap(),
        vec![Some(data)]
    );

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
