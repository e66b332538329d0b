//! etcd discovery over etcd's v3 gRPC API: workers put `{prefix}{name}` = their
//! [`WorkerSpec`] as JSON under a lease they keep alive; the frontend reads the prefix
//! and then watches it from the next revision.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tierkv_proto::etcd::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    RangeRequest, WatchCreateRequest, WatchRequest, event::EventType, kv_client::KvClient,
    lease_client::LeaseClient, watch_client::WatchClient, watch_request::RequestUnion,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

use super::{Change, Discovery, WorkerSpec};
use crate::{Result, ServingError};

/// Where etcd is and where tierkv keeps its workers there.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs, e.g. `["http://127.0.0.1:2379"]`. Default: that one.
    pub endpoints: Vec<String>,
    /// Key prefix of worker registrations. Default `/tierkv/workers/`.
    pub prefix: String,
    /// Lease time-to-live of a registration, in seconds: a worker that stops renewing
    /// disappears after this long. Default 10.
    pub lease_ttl_s: i64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/tierkv/workers/".into(),
            lease_ttl_s: 10,
        }
    }
}

fn err(what: &str) -> impl Fn(tonic::Status) -> ServingError + '_ {
    move |s| ServingError::Discovery(format!("etcd {what}: {}", s.message()))
}

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// A connection to etcd. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EtcdClient {
    channel: Channel,
}

impl EtcdClient {
    /// Connects to the first endpoint that answers.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdClient> {
        let mut last = String::from("no endpoints configured");
        for e in endpoints {
            let uri = if e.contains("://") {
                e.clone()
            } else {
                format!("http://{e}")
            };
            let endpoint = match Endpoint::from_shared(uri) {
                Ok(ep) => ep.connect_timeout(Duration::from_secs(3)).tcp_nodelay(true),
                Err(x) => {
                    last = format!("{e}: {x}");
                    continue;
                }
            };
            match endpoint.connect().await {
                Ok(channel) => return Ok(EtcdClient { channel }),
                Err(x) => last = format!("{e}: {x}"),
            }
        }
        Err(ServingError::Discovery(format!(
            "cannot reach etcd ({last})"
        )))
    }

    /// Sets `key` to `value` under lease `lease` (0: none).
    pub async fn put(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<()> {
        KvClient::new(self.channel.clone())
            .put(PutRequest {
                key: key.as_bytes().to_vec(),
                value,
                lease,
            })
            .await
            .map_err(err("put"))?;
        Ok(())
    }

    /// Deletes `key` (no error if absent).
    pub async fn delete(&self, key: &str) -> Result<()> {
        KvClient::new(self.channel.clone())
            .delete_range(DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                range_end: Vec::new(),
            })
            .await
            .map_err(err("delete"))?;
        Ok(())
    }

    /// Every key under `prefix` with its value, and the store's revision.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<(String, Vec<u8>)>, i64)> {
        let r = KvClient::new(self.channel.clone())
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: prefix_end(prefix.as_bytes()),
                limit: 0,
                revision: 0,
            })
            .await
            .map_err(err("range"))?
            .into_inner();
        let revision = r.header.map_or(0, |h| h.revision);
        let kvs = r
            .kvs
            .into_iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.value))
            .collect();
        Ok((kvs, revision))
    }

    /// Registers `spec` under `prefix` with a lease of `ttl_s` seconds and keeps it
    /// alive (re-registering after etcd forgot it) until [`Registration::revoke`].
    pub async fn register(&self, config: &EtcdConfig, spec: &WorkerSpec) -> Result<Registration> {
        let key = format!("{}{}", config.prefix, spec.name);
        let value = serde_json::to_vec(spec)
            .map_err(|e| ServingError::Discovery(format!("encoding the registration: {e}")))?;
        let ttl = config.lease_ttl_s.max(2);
        let lease = self.grant_and_put(&key, &value, ttl).await?;
        let (client, key2) = (self.clone(), key.clone());
        let (lease_tx, mut lease_rx) = tokio::sync::watch::channel(lease);
        let keepalive = tokio::spawn(async move {
            let mut lease = lease;
            loop {
                if let Err(e) = client.keep_alive(lease, ttl).await {
                    tracing::warn!(error = %e, "etcd lease lost; registering again");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                match client.grant_and_put(&key2, &value, ttl).await {
                    Ok(l) => {
                        lease = l;
                        let _ = lease_tx.send(l);
                    }
                    Err(e) => tracing::warn!(error = %e, "etcd registration failed; retrying"),
                }
            }
        });
        lease_rx.mark_unchanged();
        Ok(Registration {
            client: self.clone(),
            key,
            lease: lease_rx,
            keepalive,
        })
    }

    async fn grant_and_put(&self, key: &str, value: &[u8], ttl: i64) -> Result<i64> {
        let lease = LeaseClient::new(self.channel.clone())
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await
            .map_err(err("lease grant"))?
            .into_inner();
        if !lease.error.is_empty() {
            return Err(ServingError::Discovery(format!(
                "etcd lease grant: {}",
                lease.error
            )));
        }
        self.put(key, value.to_vec(), lease.id).await?;
        Ok(lease.id)
    }

    /// Renews `lease` every third of its time-to-live; returns when etcd no longer
    /// knows it or the stream breaks.
    async fn keep_alive(&self, lease: i64, ttl: i64) -> Result<()> {
        let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
        let requests = futures::stream::unfold((), move |()| async move {
            tokio::time::sleep(period).await;
            Some((LeaseKeepAliveRequest { id: lease }, ()))
        });
        let first = futures::stream::iter([LeaseKeepAliveRequest { id: lease }]);
        let mut replies = LeaseClient::new(self.channel.clone())
            .lease_keep_alive(first.chain(requests))
            .await
            .map_err(err("keep-alive"))?
            .into_inner();
        while let Some(r) = replies.next().await {
            let r = r.map_err(err("keep-alive"))?;
            if r.ttl <= 0 {
                return Err(ServingError::Discovery("etcd lease expired".into()));
            }
        }
        Err(ServingError::Discovery(
            "etcd keep-alive stream ended".into(),
        ))
    }
}

/// A live registration; [`Registration::revoke`] removes it at once (otherwise it
/// disappears when its lease runs out).
#[derive(Debug)]
pub struct Registration {
    client: EtcdClient,
    key: String,
    lease: tokio::sync::watch::Receiver<i64>,
    keepalive: JoinHandle<()>,
}

impl Registration {
    /// Revokes the lease, which deletes the registration now.
    pub async fn revoke(self) -> Result<()> {
        self.keepalive.abort();
        let lease = *self.lease.borrow();
        LeaseClient::new(self.client.channel.clone())
            .lease_revoke(LeaseRevokeRequest { id: lease })
            .await
            .map_err(err("lease revoke"))?;
        // Revoking deletes the key; deleting it again covers a lease that was re-granted.
        self.client.delete(&self.key).await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keepalive.abort();
    }
}

/// Watches the workers registered under a prefix.
#[derive(Debug)]
pub struct EtcdDiscovery {
    client: EtcdClient,
    prefix: String,
}

impl EtcdDiscovery {
    /// Discovery of the workers registered under `prefix`.
    pub fn new(client: EtcdClient, prefix: String) -> EtcdDiscovery {
        EtcdDiscovery { client, prefix }
    }

    fn name_of(&self, key: &str) -> String {
        key.strip_prefix(&self.prefix).unwrap_or(key).to_string()
    }

    fn parse(&self, key: &str, value: &[u8]) -> Option<WorkerSpec> {
        match serde_json::from_slice::<WorkerSpec>(value) {
            Ok(spec) => Some(spec),
            Err(e) => {
                tracing::warn!(key, error = %e, "ignoring a malformed worker registration");
                None
            }
        }
    }

    /// Lists the prefix (reporting workers that vanished meanwhile) and then follows
    /// it; returns when the watch breaks.
    async fn sync_and_follow(
        &self,
        known: &mut HashSet<String>,
        tx: &mpsc::Sender<Change>,
    ) -> Result<()> {
        let (kvs, revision) = self.client.list(&self.prefix).await?;
        let mut now = HashSet::new();
        for (key, value) in kvs {
            if let Some(spec) = self.parse(&key, &value) {
                now.insert(spec.name.clone());
                if tx.send(Change::Up(spec)).await.is_err() {
                    return Ok(());
                }
            }
        }
        for gone in known.difference(&now) {
            if tx.send(Change::Down(gone.clone())).await.is_err() {
                return Ok(());
            }
        }
        *known = now;
        let create = WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: self.prefix.as_bytes().to_vec(),
                range_end: prefix_end(self.prefix.as_bytes()),
                start_revision: revision + 1,
            })),
        };
        // Keep the request stream open: closing it would end the watch.
        let requests = futures::stream::iter([create]).chain(futures::stream::pending());
        let mut events = WatchClient::new(self.client.channel.clone())
            .watch(requests)
            .await
            .map_err(err("watch"))?
            .into_inner();
        while let Some(r) = events.next().await {
            let r = r.map_err(err("watch"))?;
            if r.canceled {
                return Err(ServingError::Discovery(format!(
                    "etcd cancelled the watch: {}",
                    r.cancel_reason
                )));
            }
            for ev in r.events {
                let Some(kv) = ev.kv else { continue };
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                let change = if ev.r#type == EventType::Delete as i32 {
                    let name = self.name_of(&key);
                    known.remove(&name);
                    Change::Down(name)
                } else {
                    match self.parse(&key, &kv.value) {
                        Some(spec) => {
                            known.insert(spec.name.clone());
                            Change::Up(spec)
                        }
                        None => continue,
                    }
                };
                if tx.send(change).await.is_err() {
                    return Ok(());
                }
            }
        }
        Err(ServingError::Discovery("etcd watch stream ended".into()))
    }
}

impl Discovery for EtcdDiscovery {
    fn watch(self: Box<Self>) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut known = HashSet::new();
            while !tx.is_closed() {
                if let Err(e) = self.sync_and_follow(&mut known, &tx).await {
                    tracing::warn!(error = %e, "etcd watch broke; resynchronising");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        rx
    }
}
