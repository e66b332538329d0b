//! Runs `ops` operations with `concurrency` tasks and records each one's latency.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::report::Measurement;

/// Calls `op(i)` for every `i in 0..ops`, at most `concurrency` at a time; each call
/// returns the bytes it moved.
pub(crate) async fn drive<F, Fut>(
    ops: usize,
    concurrency: usize,
    op: F,
) -> anyhow::Result<Measurement>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<u64>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (op, next) = (Arc::clone(&op), Arc::clone(&next));
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut bytes = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    break;
                }
                let t = Instant::now();
                bytes += op(i).await?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok((latencies, bytes))
        }));
    }
    let mut m = Measurement::default();
    for w in workers {
        let (lat, bytes) = w.await??;
        m.latencies.extend(lat);
        m.bytes += bytes;
    }
    m.wall = start.elapsed();
    Ok(m)
}

/// Runs a synchronous `op(i)` `ops` times on this thread.
pub(crate) fn drive_sync(ops: usize, mut op: impl FnMut(usize) -> u64) -> Measurement {
    let mut m = Measurement {
        latencies: Vec::with_capacity(ops),
        ..Default::default()
    };
    let start = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        m.bytes += op(i);
        m.latencies.push(t.elapsed());
    }
    m.wall = start.elapsed().max(Duration::from_nanos(1));
    m
}

/// The measurement with the median throughput (latencies come with it).
pub(crate) fn median(mut runs: Vec<Measurement>) -> Measurement {
    runs.sort_by(|a, b| a.gbps().total_cmp(&b.gbps()));
    let mid = runs.len() / 2;
    runs.into_iter().nth(mid).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_picks_the_middle_throughput() {
        let run = |bytes| Measurement {
            latencies: vec![],
            wall: Duration::from_secs(1),
            bytes,
        };
        assert_eq!(median(vec![run(5), run(1), run(3)]).bytes, 3);
        assert_eq!(median(vec![]).bytes, 0);
    }

    #[tokio::test]
    async fn drive_runs_every_op_once() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let m = drive(50, 4, move |i| {
            let s = Arc::clone(&s);
            async move {
                s.lock().unwrap().push(i);
                Ok(10)
            }
        })
        .await
        .unwrap();
        let mut v = seen.lock().unwrap().clone();
        v.sort();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
        assert_eq!((m.bytes, m.latencies.len()), (500, 50));
    }
}
