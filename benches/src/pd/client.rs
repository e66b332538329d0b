//! One streaming completion request, timed token by token.

use std::time::Instant;

use anyhow::{Context, bail};
use futures::StreamExt;

pub(super) struct Timing {
    pub ttft_ms: f64,
    /// Gaps between consecutive tokens.
    pub itl_ms: Vec<f64>,
    pub tokens: usize,
}

pub(super) async fn stream(
    http: &reqwest::Client,
    base: &str,
    model: &str,
    prompt: &[u32],
    max_tokens: usize,
) -> anyhow::Result<Timing> {
    let body = serde_json::json!({
        "model": model, "prompt": prompt, "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": true, "stream": true,
    });
    let started = Instant::now();
    let resp = http
        .post(format!("{base}/v1/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .context("sending")?;
    if !resp.status().is_success() {
        bail!(
            "{}: {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    let mut chunks = resp.bytes_stream();
    let (mut buf, mut arrivals) = (Vec::<u8>::new(), Vec::new());
    while let Some(c) = chunks.next().await {
        let now = Instant::now();
        buf.extend_from_slice(&c.context("reading the stream")?);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let Some(data) = text.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let v: serde_json::Value = serde_json::from_str(data).context("bad event")?;
            if v.get("error").is_some() {
                bail!("error event: {data}");
            }
            if v["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty())
            {
                arrivals.push(now);
            }
        }
    }
    let Some(first) = arrivals.first() else {
        bail!("no tokens");
    };
    Ok(Timing {
        ttft_ms: first.duration_since(started).as_secs_f64() * 1e3,
        itl_ms: arrivals
            .windows(2)
            .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1e3)
            .collect(),
        tokens: arrivals.len(),
    })
}
