//! The block service over TLS (rustls), with a CA and server certificate made by the
//! `openssl` command line for this test.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use tierkv_kvstore::metrics::Metrics;
use tierkv_kvstore::service::{BlockClient, BlockClientConfig, ServiceConfig, TlsConfig, serve};
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

/// ca.pem, and server.pem / server.key for localhost signed by it.
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=tierkv-test-ca",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_fetch_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let mut config = StoreConfig::from_toml(&format!(
        "data_dir = \"{}\"\nslot_bytes = \"1MiB\"\n[[tier]]\nkind = \"host\"\ncapacity = \"8MiB\"\n",
        dir.path().display()
    ))
    .unwrap();
    config.service = ServiceConfig {
        tls: Some(TlsConfig {
            cert: dir.path().join("server.pem"),
            key: dir.path().join("server.key"),
        }),
        ..Default::default()
    };
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
