//! The workers the frontend knows: for each, what it said about itself, an index of
//! the blocks its store holds (built from its block service's `WatchEvents` stream,
//! every tier included) and its queue (polled from `/internal/load`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use tierkv_kvstore::service::{BlockClient, ServiceEvent};
use tierkv_kvstore::{BlockHash, Namespace, StoreEventKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::worker_client::{self, InfoPoll};
use crate::discovery::{Change, WorkerSpec};
use crate::metrics::FrontendMetrics;
use crate::pd::{Role, WorkerInfo, WorkerLoad};

/// A worker the frontend routes to: how to reach it, what it serves, what its block
/// services hold (from their events) and how loaded it is.
pub struct Worker {
    /// How discovery announced it.
    pub spec: WorkerSpec,
    /// What it said of itself when it joined.
    pub info: WorkerInfo,
    /// Block hash -> number of its tiers holding it.
    index: Mutex<HashMap<u128, u32>>,
    load: Mutex<WorkerLoad>,
    /// Requests this frontend has routed to it and not yet seen finish.
    pub in_flight: AtomicUsize,
    /// Whether its last `/internal/load` answered.
    reachable: AtomicBool,
    /// Prefill workers: requests this frontend pointed here whose first token has not
    /// come back yet.
    prefill_pending: AtomicUsize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Worker {
    /// Leading blocks of `hashes` this worker holds.
    pub fn overlap(&self, hashes: &[BlockHash]) -> usize {
        let index = tierkv_kvstore::sync::lock(&self.index);
        hashes
            .iter()
            .take_while(|h| index.contains_key(&h.0))
            .count()
    }

    pub fn load(&self) -> WorkerLoad {
        *tierkv_kvstore::sync::lock(&self.load)
    }

    /// Requests queued or running there, as far as the frontend knows.
    pub fn active(&self) -> usize {
        let l = self.load();
        self.in_flight
            .load(Ordering::Relaxed)
            .max(l.running + l.waiting)
    }

    /// Counts a request against this worker until the reservation drops: taken when
    /// the router decides, so that requests routed at the same moment see each other.
    pub fn reserve(self: &Arc<Self>, metrics: &Arc<FrontendMetrics>) -> Reservation {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        metrics.in_flight.inc();
        Reservation {
            worker: Arc::clone(self),
            metrics: Arc::clone(metrics),
        }
    }

    /// A prefill worker's queue: what it last reported, or what this frontend has
    /// sent its way since, whichever is longer.
    pub fn prefill_queue(&self) -> usize {
        let l = self.load();
        (l.running + l.waiting + l.prefilling).max(self.prefill_pending.load(Ordering::Relaxed))
    }

    /// Counts a prompt pointed at this prefill worker until the guard drops.
    pub fn reserve_prefill(self: &Arc<Self>) -> PrefillReservation {
        self.prefill_pending.fetch_add(1, Ordering::Relaxed);
        PrefillReservation(Arc::clone(self))
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn indexed(&self) -> usize {
        tierkv_kvstore::sync::lock(&self.index).len()
    }

    fn apply(&self, event: &ServiceEvent) {
        let mut index = tierkv_kvstore::sync::lock(&self.index);
        for &key in &event.hashes {
            match event.kind {
                StoreEventKind::Stored => *index.entry(key).or_insert(0) += 1,
                StoreEventKind::Removed => {
                    if let Some(n) = index.get_mut(&key) {
                        *n -= 1;
                        if *n == 0 {
                            index.remove(&key);
                        }
                    }
                }
            }
        }
    }
}

/// A request counted against a worker (see [`Worker::reserve`]).
#[derive(Debug)]
pub struct Reservation {
    /// The worker.
    pub worker: Arc<Worker>,
    metrics: Arc<FrontendMetrics>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.worker.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.in_flight.dec();
    }
}

/// A prompt pointed at a prefill worker (see [`Worker::reserve_prefill`]).
#[derive(Debug)]
pub struct PrefillReservation(Arc<Worker>);

impl Drop for PrefillReservation {
    fn drop(&mut self) {
        self.0.prefill_pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.spec.name)
            .field("role", &self.spec.role)
            .field("http", &self.spec.http)
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        for t in tierkv_kvstore::sync::lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

/// The cluster's workers as the frontend knows them, by name.
pub struct Registry {
    workers: RwLock<BTreeMap<String, Arc<Worker>>>,
    /// The namespace every worker must share (model id + KV layout), from the first.
    namespace: RwLock<Option<Namespace>>,
    model_id: String,
    http: reqwest::Client,
    metrics: Arc<FrontendMetrics>,
    load_poll: Duration,
    start_timeout: Duration,
    /// Token and TLS for the workers' block services, if they ask for them.
    credentials: crate::pd::PeerCredentials,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let workers: Vec<String> = tierkv_kvstore::sync::read(&self.workers)
            .keys()
            .cloned()
            .collect();
        f.debug_struct("Registry")
            .field("model_id", &self.model_id)
            .field("workers", &workers)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry of workers serving `model_id`; each joins through
    /// discovery, is polled for load every `load_poll` and must answer within
    /// `start_timeout` when it joins.
    pub fn new(
        model_id: String,
        http: reqwest::Client,
        metrics: Arc<FrontendMetrics>,
        load_poll: Duration,
        start_timeout: Duration,
        credentials: crate::pd::PeerCredentials,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            workers: RwLock::new(BTreeMap::new()),
            namespace: RwLock::new(None),
            model_id,
            http,
            metrics,
            load_poll,
            start_timeout,
            credentials,
        })
    }

    /// The namespace the workers share, once the first one joined.
    pub fn namespace(&self) -> Option<Namespace> {
        tierkv_kvstore::sync::read(&self.namespace).clone()
    }

    /// Workers that joined.
    pub fn count(&self) -> usize {
        tierkv_kvstore::sync::read(&self.workers).len()
    }

    /// Workers in a role.
    pub fn workers(&self, roles: &[Role]) -> Vec<Arc<Worker>> {
        tierkv_kvstore::sync::read(&self.workers)
            .values()
            .filter(|w| roles.contains(&w.info.role))
            .cloned()
            .collect()
    }

    /// The smallest context length among the workers.
    pub fn max_context(&self) -> Option<usize> {
        tierkv_kvstore::sync::read(&self.workers)
            .values()
            .map(|w| w.info.max_context)
            .min()
    }

    /// Applies discovery's changes until its channel closes.
    pub fn follow(self: &Arc<Self>, mut changes: mpsc::Receiver<Change>) -> JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                match change {
                    Change::Up(spec) => {
                        let me = Arc::clone(&me);
                        tokio::spawn(async move { me.add(spec).await });
                    }
                    Change::Down(name) => me.remove(&name),
                }
            }
        })
    }

    fn remove(&self, name: &str) {
        let gone = tierkv_kvstore::sync::write(&self.workers).remove(name);
        if gone.is_some() {
            tracing::info!(worker = name, "worker left");
            self.metrics.index_blocks.with_label_values(&[name]).set(0);
            self.update_gauges();
        }
    }

    fn update_gauges(&self) {
        let workers = tierkv_kvstore::sync::read(&self.workers);
        for role in [Role::Aggregated, Role::Prefill, Role::Decode] {
            let n = workers.values().filter(|w| w.info.role == role).count();
            self.metrics
                .workers
                .with_label_values(&[role.as_str()])
                .set(n as i64);
        }
    }

    /// Asks a joining worker who it is (waiting for it to start), checks that it
    /// serves this model with the same KV layout as the others, and starts following
    /// its blocks and its queue.
    async fn add(self: Arc<Self>, spec: WorkerSpec) {
        let (info, ns) = match self.info(&spec).await {
            Ok(i) => i,
            Err(why) => {
                tracing::warn!(worker = %spec.name, http = %spec.http, engine = spec.engine.as_str(), "{why}; ignored");
                return;
            }
        };
        if info.model_id != self.model_id {
            tracing::warn!(worker = %spec.name, model = %info.model_id, expected = %self.model_id, "worker serves another model; ignored");
            return;
        }
        {
            let mut current = tierkv_kvstore::sync::write(&self.namespace);
            match &*current {
                Some(c) if c.name() != ns.name() => {
                    tracing::warn!(worker = %spec.name, namespace = %ns.name(), expected = %c.name(), "worker's KV namespace differs from the cluster's; ignored");
                    return;
                }
                Some(_) => {}
                None => *current = Some(ns),
            }
        }
        let worker = Arc::new(Worker {
            spec: spec.clone(),
            info,
            index: Mutex::new(HashMap::new()),
            load: Mutex::new(WorkerLoad::default()),
            in_flight: AtomicUsize::new(0),
            reachable: AtomicBool::new(true),
            prefill_pending: AtomicUsize::new(0),
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = vec![self.poll_load(Arc::downgrade(&worker))];
        if let Some(addr) = spec.blocks.clone() {
            tasks.push(self.watch_blocks(Arc::downgrade(&worker), addr));
        }
        *tierkv_kvstore::sync::lock(&worker.tasks) = tasks;
        tracing::info!(worker = %spec.name, role = %worker.info.role, http = %spec.http, "worker joined");
        tierkv_kvstore::sync::write(&self.workers).insert(spec.name.clone(), worker);
        self.update_gauges();
    }

    /// Asks a joining worker who it is until it answers or the start timeout passes.
    async fn info(&self, spec: &WorkerSpec) -> Result<(WorkerInfo, Namespace), String> {
        let deadline = Instant::now() + self.start_timeout;
        while Instant::now() < deadline {
            match worker_client::info(&self.http, spec).await {
                InfoPoll::Ready(found) => return Ok(*found),
                InfoPoll::Refused(why) => return Err(why),
                InfoPoll::NotYet => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        Err(format!(
            "worker did not answer within {:?}",
            self.start_timeout
        ))
    }

    fn poll_load(&self, worker: std::sync::Weak<Worker>) -> JoinHandle<()> {
        let (http, period) = (self.http.clone(), self.load_poll);
        tokio::spawn(async move {
            loop {
                let Some(w) = worker.upgrade() else { return };
                let spec = w.spec.clone();
                drop(w);
                let load = worker_client::load(&http, &spec, period * 5).await;
                let Some(w) = worker.upgrade() else { return };
                w.reachable.store(load.is_some(), Ordering::Relaxed);
                if let Some(load) = load {
                    *tierkv_kvstore::sync::lock(&w.load) = load;
                }
                tokio::time::sleep(period).await;
            }
        })
    }

    fn watch_blocks(&self, worker: std::sync::Weak<Worker>, addr: String) -> JoinHandle<()> {
        let metrics = Arc::clone(&self.metrics);
        let config = self.credentials.block_client(addr.clone());
        tokio::spawn(async move {
            let client = match BlockClient::new(config) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(addr, error = %e, "cannot watch a worker's blocks");
                    return;
                }
            };
            loop {
                match client.watch(&[]).await {
                    Ok(mut events) => {
                        while let Some(ev) = events.next().await {
                            let Ok(ev) = ev else { break };
                            let Some(w) = worker.upgrade() else { return };
                            w.apply(&ev);
                            metrics
                                .index_blocks
                                .with_label_values(&[&w.spec.name])
                                .set(w.indexed() as i64);
                        }
                    }
                    Err(e) => tracing::debug!(addr, error = %e, "block watch failed; retrying"),
                }
                if worker.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}
