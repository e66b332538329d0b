//! A `vllm serve` worker with TierkvConnector. vLLM cannot choose a prefill worker
//! itself, so the frontend runs the flow of vLLM's disaggregated serving: for a
//! prompt worth shipping ([`crate::pd::decide`]) it asks the prefill worker for one
//! output token with `kv_transfer_params: {do_remote_decode: true}` (the connector
//! stores the prompt's full blocks and answers where they are), then hands those
//! params to the decode worker, whose connector fetches the blocks and computes the
//! rest. Anything failing on the prefill side leaves the decode worker to compute the
//! whole prompt: the tokens are the same either way.
//!
//! Prompts go as token ids and tokens come back as ids (`return_token_ids`), so the
//! frontend detokenizes exactly as it does for tierkv workers. Load comes from vLLM's
//! `/metrics` (`vllm:num_requests_running`, `vllm:num_requests_waiting`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tierkv_kvstore::Namespace;
use tokio::sync::mpsc;

use super::{Context, InfoPoll, LineDecoder, StartError, forward, refusal};
use crate::discovery::WorkerSpec;
use crate::frontend::registry::{PrefillReservation, Reservation};
use crate::pd::{PrefillCandidate, PrefillDecision, WireRequest, WorkerInfo, WorkerLoad, decide};
use crate::request::{FinishReason, GenEvent, Usage};

pub(super) async fn start(
    cx: &Context<'_>,
    reservation: Reservation,
    prefill: Option<PrefillReservation>,
    req: &WireRequest,
    cached_tokens: usize,
) -> Result<mpsc::UnboundedReceiver<GenEvent>, StartError> {
    let model = reservation.worker.info.model_id.clone();
    let params = match decide(
        &cx.prefill.policy(),
        req.prompt.len(),
        cached_tokens,
        &req.prefill_candidates,
    ) {
        PrefillDecision::Remote(target) => remote_prefill(cx, target, req, &model).await,
        PrefillDecision::Local(why) => {
            decided(cx, why.as_str());
            None
        }
    };
    // The prompt is prefilled (or will be computed by the decode worker) by now.
    drop(prefill);
    let mut body = completion_body(req, &model, req.max_tokens);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    if let Some(p) = params {
        body["kv_transfer_params"] = p;
    }
    let resp = cx
        .http
        .post(format!("{}/v1/completions", reservation.worker.spec.http))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| StartError::Failed(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(refusal(resp).await);
    }
    let admitted = Usage {
        prompt_tokens: req.prompt.len(),
        ..Usage::default()
    };
    Ok(forward(
        resp,
        SseLines::new(admitted),
        reservation,
        None,
        cx.metrics.clone(),
    ))
}

fn decided(cx: &Context<'_>, decision: &str) {
    cx.metrics
        .prefill_decisions
        .with_label_values(&[decision])
        .inc();
}

/// The request as a vLLM `/v1/completions` body (token-id prompt, token ids back).
fn completion_body(req: &WireRequest, model: &str, max_tokens: usize) -> Value {
    let mut body = json!({
        "model": model,
        "prompt": req.prompt,
        "max_tokens": max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "stop_token_ids": req.stop_token_ids,
        "ignore_eos": req.ignore_eos,
        "return_token_ids": true,
    });
    if let Some(seed) = req.seed {
        body["seed"] = json!(seed);
    }
    if let Some(salt) = &req.cache_salt {
        body["cache_salt"] = json!(salt);
    }
    body
}

/// Asks `target` to compute the prompt (one output token) and store its blocks; the
/// `kv_transfer_params` it answers with, or `None` (then the decode worker computes).
async fn remote_prefill(
    cx: &Context<'_>,
    target: &PrefillCandidate,
    req: &WireRequest,
    model: &str,
) -> Option<Value> {
    let mut body = completion_body(req, model, 1);
    body["kv_transfer_params"] = json!({"do_remote_decode": true});
    let started = Instant::now();
    let timeout = Duration::from_millis(cx.prefill.prefill_timeout_ms);
    let call = async {
        let resp = cx
            .http
            .post(format!("{}/v1/completions", target.http))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {text}"));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        Ok(v.get("kv_transfer_params")
            .filter(|p| !p.is_null())
            .cloned())
    };
    match call.await {
        Ok(Some(params)) => {
            cx.metrics
                .remote_prefill_seconds
                .observe(started.elapsed().as_secs_f64());
            decided(cx, "remote");
            Some(params)
        }
        Ok(None) => {
            tracing::debug!(worker = %target.name, "prefill worker stored nothing; the decode worker computes");
            decided(cx, "fallback");
            None
        }
        Err(e) => {
            tracing::warn!(worker = %target.name, error = %e, "remote prefill failed; the decode worker computes");
            decided(cx, "fallback");
            None
        }
    }
}

/// vLLM's server-sent events: `data: {chunk}` lines, then `data: [DONE]`.
struct SseLines {
    admitted: Option<Usage>,
    reason: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
}

impl SseLines {
    fn new(admitted: Usage) -> SseLines {
        SseLines {
            admitted: Some(admitted),
            reason: None,
            usage: None,
            done: false,
        }
    }
}

impl LineDecoder for SseLines {
    fn line(&mut self, line: &[u8]) -> Result<Vec<GenEvent>, String> {
        let line = std::str::from_utf8(line).map_err(|e| e.to_string())?.trim();
        let Some(data) = line.strip_prefix("data:").map(str::trim) else {
            return Ok(Vec::new()); // blank lines and comments between events
        };
        let mut events: Vec<GenEvent> = self
            .admitted
            .take()
            .map(GenEvent::Admitted)
            .into_iter()
            .collect();
        if data == "[DONE]" {
            self.done = true;
            let Some(reason) = self.reason.take() else {
                return Err("[DONE] before a finish reason".into());
            };
            let mut usage = self.usage.take().unwrap_or_default();
            if usage.cached_tokens > 0 {
                usage.cached_by_source = vec![("vllm".into(), usage.cached_tokens)];
            }
            events.push(GenEvent::Finished { reason, usage });
            return Ok(events);
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
        if let Some(err) = chunk.get("error") {
            self.done = true;
            let message = err["message"].as_str().unwrap_or("vLLM reported an error");
            events.push(GenEvent::Error(message.to_string()));
            return Ok(events);
        }
        if let Some(choice) = chunk["choices"].get(0) {
            if let Some(ids) = choice["token_ids"].as_array() {
                for id in ids {
                    let id = id
                        .as_u64()
                        .and_then(|i| u32::try_from(i).ok())
                        .ok_or_else(|| format!("token id {id} is not a u32"))?;
                    events.push(GenEvent::Token(id));
                }
            } else if choice["text"].as_str().is_some_and(|t| !t.is_empty()) {
                return Err("text without token_ids (is return_token_ids supported?)".into());
            }
            match choice["finish_reason"].as_str() {
                None => {}
                Some("stop") => self.reason = Some(FinishReason::Stop),
                Some("length") => self.reason = Some(FinishReason::Length),
                Some(other) => return Err(format!("finish reason {other:?}")),
            }
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            let n = |v: &Value| v.as_u64().unwrap_or(0) as usize;
            self.usage = Some(Usage {
                prompt_tokens: n(&u["prompt_tokens"]),
                completion_tokens: n(&u["completion_tokens"]),
                cached_tokens: n(&u["prompt_tokens_details"]["cached_tokens"]),
                cached_by_source: Vec::new(),
            });
        }
        Ok(events)
    }
    fn ended(&self) -> bool {
        self.done
    }
}

/// vLLM's `/v1/models` for the served name and context length; the KV namespace
/// from the registration (the connector's, so that prompts hash the same).
pub(super) async fn info(http: &reqwest::Client, spec: &WorkerSpec) -> InfoPoll {
    let Some(name) = &spec.namespace else {
        return InfoPoll::Refused(
            "a vLLM worker's registration must name its TierkvConnector namespace".into(),
        );
    };
    let ns = match Namespace::from_name(name) {
        Ok(ns) => ns,
        Err(e) => return InfoPoll::Refused(e.to_string()),
    };
    let got = http
        .get(format!("{}/v1/models", spec.http))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    let Ok(r) = got else { return InfoPoll::NotYet };
    if !r.status().is_success() {
        return InfoPoll::NotYet;
    }
    let Ok(bytes) = r.bytes().await else {
        return InfoPoll::NotYet;
    };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return InfoPoll::Refused(format!("/v1/models: {e}")),
    };
    let Some(model) = v["data"].get(0) else {
        return InfoPoll::Refused("/v1/models lists no model".into());
    };
    let (Some(id), Some(max_context)) = (model["id"].as_str(), model["max_model_len"].as_u64())
    else {
        return InfoPoll::Refused(format!("/v1/models: unexpected entry {model}"));
    };
    let info = WorkerInfo {
        name: spec.name.clone(),
        role: spec.role,
        model_id: id.to_string(),
        layout: *ns.layout(),
        max_context: max_context as usize,
        blocks: spec.blocks.clone(),
    };
    InfoPoll::Ready(Box::new((info, ns)))
}

pub(super) async fn load(
    http: &reqwest::Client,
    spec: &WorkerSpec,
    timeout: Duration,
) -> Option<WorkerLoad> {
    let r = http
        .get(format!("{}/metrics", spec.http))
        .timeout(timeout)
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let text = r.text().await.ok()?;
    Some(WorkerLoad {
        running: gauge(&text, "vllm:num_requests_running"),
        waiting: gauge(&text, "vllm:num_requests_waiting"),
        prefilling: 0,
    })
}

/// The sum of a Prometheus gauge's samples (one per engine) in `text`.
fn gauge(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        .max(0.0) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(lines: &[&str]) -> (Vec<GenEvent>, bool) {
        let mut d = SseLines::new(Usage::default());
        let mut out = Vec::new();
        for l in lines {
            out.extend(d.line(l.as_bytes()).unwrap());
        }
        (out, d.ended())
    }

    #[test]
    fn a_stream_becomes_tokens_and_a_finish_with_usage() {
        let (ev, ended) = events(&[
            r#"data: {"choices":[{"index":0,"text":" a","token_ids":[5,6],"finish_reason":null}],"usage":null}"#,
            "",
            r#"data: {"choices":[{"index":0,"text":"b","token_ids":[7],"finish_reason":"length"}],"usage":null}"#,
            r#"data: {"choices":[],"usage":{"prompt_tokens":300,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":256}}}"#,
            "data: [DONE]",
        ]);
        assert!(ended);
        assert!(matches!(ev[0], GenEvent::Admitted(_)));
        let tokens: Vec<u32> = ev
            .iter()
            .filter_map(|e| match e {
                GenEvent::Token(t) => Some(*t),
                _ => None,
            })
            .collect();
        assert_eq!(tokens, [5, 6, 7]);
        match ev.last() {
            Some(GenEvent::Finished { reason, usage }) => {
                assert_eq!(*reason, FinishReason::Length);
                assert_eq!((usage.prompt_tokens, usage.cached_tokens), (300, 256));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_and_truncated_streams_are_not_silent() {
        let (ev, ended) = events(&[r#"data: {"error":{"message":"boom"}}"#]);
        assert!(ended && matches!(&ev[1], GenEvent::Error(m) if m == "boom"));
        let mut d = SseLines::new(Usage::default());
        assert!(d.line(b"data: [DONE]").is_err(), "no finish reason");
        let mut d = SseLines::new(Usage::default());
        d.line(br#"data: {"choices":[{"text":"x","token_ids":[1]}]}"#)
            .unwrap();
        assert!(!d.ended(), "a stream cut here is a failure");
        assert!(d.line(br#"data: {"choices":[{"text":"x"}]}"#).is_err());
        assert!(d.line(b"data: {not json").is_err());
    }

    #[test]
    fn gauges_sum_their_samples() {
        let text = "# HELP vllm:num_requests_running x\nvllm:num_requests_running{engine=\"0\",model_name=\"m\"} 2.0\nvllm:num_requests_running{engine=\"1\"} 1.0\nvllm:num_requests_running_total 9\nvllm:num_requests_waiting 3\n";
        assert_eq!(gauge(text, "vllm:num_requests_running"), 3);
        assert_eq!(gauge(text, "vllm:num_requests_waiting"), 3);
        assert_eq!(gauge(text, "vllm:other"), 0);
    }
}
