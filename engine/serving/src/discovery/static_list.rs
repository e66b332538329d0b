//! Workers listed in the frontend's configuration.

use tokio::sync::mpsc;

use super::{Change, Discovery, WorkerSpec};

/// A fixed list of workers: each is announced once, none ever leaves.
#[derive(Debug)]
pub struct StaticDiscovery {
    workers: Vec<WorkerSpec>,
}

impl StaticDiscovery {
    /// Discovery of exactly `workers`.
    pub fn new(workers: Vec<WorkerSpec>) -> StaticDiscovery {
        StaticDiscovery { workers }
    }
}

impl Discovery for StaticDiscovery {
    fn watch(self: Box<Self>) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(self.workers.len().max(1));
        tokio::spawn(async move {
            for w in self.workers {
                if tx.send(Change::Up(w)).await.is_err() {
                    return;
                }
            }
            // A static list never changes: hold the channel open until the watcher goes.
            tx.closed().await;
        });
        rx
    }
}
