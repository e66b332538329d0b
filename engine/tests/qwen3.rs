//! Qwen3 from a Hugging Face directory, on a tiny model this test writes itself
//! (deterministic pseudo-random weights, a word-level tokenizer, a chat template):
//! the engine's greedy tokens must equal those of a naive f64 reference written here
//! (per-head Q/K RMSNorm, half-split rotary, grouped-query attention), and must not
//! change when the prompt's KV is loaded back from the host tier.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use common::*;
use tierkv_engine::model::ChatMessage;

const HIDDEN: usize = 64;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 96;
const EPS: f64 = 1e-6;
const THETA: f64 = 10_000.0;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
    }
}

fn words() -> Vec<String> {
    let mut v: Vec<String> = [
        "<unk>",
        "<|im_start|>",
        "<|im_end|>",
        "user",
        "assistant",
        "system",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for i in 0..58 {
        v.push(format!("w{i}"));
    }
    v
}

/// Writes the model; returns its weights (name -> row-major values, shape).
fn write_model(dir: &Path) -> HashMap<String, (Vec<f32>, Vec<usize>)> {
    let vocab = words().len();
    let mut rng = Rng(42);
    let mut w = HashMap::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32, one: bool| {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n)
            .map(|_| {
                if one {
                    1.0 + 0.1 * rng.next()
                } else {
                    scale * rng.next()
                }
            })
            .collect();
        w.insert(name, (vals, shape));
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![vocab, HIDDEN],
        1.0,
        false,
    );
    add("lm_head.weight".into(), vec![vocab, HIDDEN], 0.3, false);
    add("model.norm.weight".into(), vec![HIDDEN], 0.0, true);
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        add(p("input_layernorm"), vec![HIDDEN], 0.0, true);
        add(p("post_attention_layernorm"), vec![HIDDEN], 0.0, true);
        add(
            p("self_attn.q_proj"),
            vec![HEADS * HEAD_DIM, HIDDEN],
            0.3,
            false,
        );
        add(
            p("self_attn.k_proj"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            0.3,
            false,
        );
        add(
            p("self_attn.v_proj"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            0.3,
            false,
        );
        add(
            p("self_attn.o_proj"),
            vec![HIDDEN, HEADS * HEAD_DIM],
            0.3,
            false,
        );
        add(p("self_attn.q_norm"), vec![HEAD_DIM], 0.0, true);
        add(p("self_attn.k_norm"), vec![HEAD_DIM], 0.0, true);
        add(p("mlp.gate_proj"), vec![FFN, HIDDEN], 0.3, false);
        add(p("mlp.up_proj"), vec![FFN, HIDDEN], 0.3, false);
        add(p("mlp.down_proj"), vec![HIDDEN, FFN], 0.3, false);
    }
    let tensors: HashMap<String, Tensor> = w
        .iter()
        .map(|(k, (v, s))| {
            (
                k.clone(),
                Tensor::from_vec(v.clone(), s.as_slice(), &Device::Cpu).expect("tensor"),
            )
        })
        .collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("save");
    let config = serde_json::json!({
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "intermediate_size": FFN,
        "vocab_size": vocab, "rope_theta": THETA, "rms_norm_eps": EPS,
        "max_position_embeddings": 512, "tie_word_embeddings": false, "eos_token_id": 2,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
    let vocab_map: HashMap<String, u32> = words()
        .into_iter()
        .enumerate()
        .map(|(i, w)| (w, i as u32))
        .collect();
    let tokenizer = serde_json::json!({
        "version": "1.0",
        "added_tokens": [
            {"id": 1, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab_map, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).expect("tokenizer");
    let tc = serde_json::json!({
        "chat_template": "{% for m in messages %}<|im_start|> {{ m.role }} {{ m.content }} <|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant{% endif %}",
        "eos_token": "<|im_end|>",
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).expect("tokenizer config");
    w
}

/// The naive f64 reference: full recomputation for every generated token.
fn reference_greedy(
    w: &HashMap<String, (Vec<f32>, Vec<usize>)>,
    prompt: &[u32],
    n: usize,
) -> Vec<u32> {
    let g = |name: &str| -> Vec<f64> { w[name].0.iter().map(|&x| x as f64).collect() };
    let matvec = |m: &[f64], x: &[f64], rows: usize| -> Vec<f64> {
        let cols = x.len();
        (0..rows)
            .map(|r| (0..cols).map(|c| m[r * cols + c] * x[c]).sum())
            .collect()
    };
    let rms = |x: &[f64], wt: &[f64]| -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let s = 1.0 / (ms + EPS).sqrt();
        x.iter().zip(wt).map(|(v, w)| v * s * w).collect()
    };
    let rope = |x: &mut [f64], pos: usize| {
        let h = HEAD_DIM / 2;
        for i in 0..h {
            let f = (THETA as f32).powf(-(2.0 * i as f32) / HEAD_DIM as f32) as f64;
            let (c, s) = ((pos as f64 * f).cos(), (pos as f64 * f).sin());
            let (a, b) = (x[i], x[i + h]);
            x[i] = a * c - b * s;
            x[i + h] = a * s + b * c;
        }
    };
    let vocab = words().len();
    let embed = g("model.embed_tokens.weight");
    let mut tokens = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let t_len = tokens.len();
        let mut x: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| embed[t as usize * HIDDEN..(t as usize + 1) * HIDDEN].to_vec())
            .collect();
        for l in 0..LAYERS {
            let p = |s: &str| format!("model.layers.{l}.{s}.weight");
            let (wq, wk, wv, wo) = (
                g(&p("self_attn.q_proj")),
                g(&p("self_attn.k_proj")),
                g(&p("self_attn.v_proj")),
                g(&p("self_attn.o_proj")),
            );
            let (qn, kn) = (g(&p("self_attn.q_norm")), g(&p("self_attn.k_norm")));
            let mut qs = Vec::new();
            let mut ks = Vec::new();
            let mut vs = Vec::new();
            for (pos, xt) in x.iter().enumerate() {
                let h = rms(xt, &g(&p("input_layernorm")));
                let mut q = matvec(&wq, &h, HEADS * HEAD_DIM);
                let mut k = matvec(&wk, &h, KV_HEADS * HEAD_DIM);
                for head in q.chunks_mut(HEAD_DIM) {
                    let n = rms(head, &qn);
                    head.copy_from_slice(&n);
                    rope(head, pos);
                }
                for head in k.chunks_mut(HEAD_DIM) {
                    let n = rms(head, &kn);
                    head.copy_from_slice(&n);
                    rope(head, pos);
                }
                qs.push(q);
                ks.push(k);
                vs.push(matvec(&wv, &h, KV_HEADS * HEAD_DIM));
            }
            for t in 0..t_len {
                let mut attn = vec![0.0; HEADS * HEAD_DIM];
                for head in 0..HEADS {
                    let kvh = head / (HEADS / KV_HEADS);
                    let q = &qs[t][head * HEAD_DIM..(head + 1) * HEAD_DIM];
                    let scores: Vec<f64> = (0..=t)
                        .map(|j| {
                            q.iter()
                                .zip(&ks[j][kvh * HEAD_DIM..(kvh + 1) * HEAD_DIM])
                                .map(|(a, b)| a * b)
                                .sum::<f64>()
                                / (HEAD_DIM as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (j, ej) in e.iter().enumerate() {
                        for d in 0..HEAD_DIM {
                            attn[head * HEAD_DIM + d] += ej / z * vs[j][kvh * HEAD_DIM + d];
                        }
                    }
                }
                let o = matvec(&wo, &attn, HIDDEN);
                for (a, b) in x[t].iter_mut().zip(o) {
                    *a += b;
                }
                let h = rms(&x[t], &g(&p("post_attention_layernorm")));
                let gate = matvec(&g(&p("mlp.gate_proj")), &h, FFN);
                let up = matvec(&g(&p("mlp.up_proj")), &h, FFN);
                let act: Vec<f64> = gate
                    .iter()
                    .zip(&up)
                    .map(|(a, b)| a / (1.0 + (-a).exp()) * b)
                    .collect();
                let f = matvec(&g(&p("mlp.down_proj")), &act, HIDDEN);
                for (a, b) in x[t].iter_mut().zip(f) {
                    *a += b;
                }
            }
        }
        let last = rms(&x[t_len - 1], &g("model.norm.weight"));
        let logits = matvec(&g("lm_head.weight"), &last, vocab);
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        tokens.push(best as u32);
        out.push(best as u32);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_qwen3_matches_reference_and_reuses_kv() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model_dir = dir.path().join("tiny-qwen3");
    std::fs::create_dir_all(&model_dir).expect("mkdir");
    let weights = write_model(&model_dir);
    let loaded = tierkv_engine::model::load(&model_dir).expect("load the tiny Qwen3");
    assert_eq!(loaded.id, "tiny-qwen3");
    let e = engine_from(loaded, &dir.path().join("store"), HOST, engine_config(4)).await;

    let chat = e
        .codec()
        .apply_chat_template(&[ChatMessage {
            role: "user".into(),
            content: "w1 w2 w3 w4 w5 w6 w7".into(),
        }])
        .expect("template");
    let prompt = e.codec().encode(&chat).expect("encode");
    assert_eq!(prompt.len(), 12, "{chat:?} -> {prompt:?}");
    // What a frontend reads (no weights) tokenizes and templates the same way.
    let text = tierkv_engine::model::load_text(&model_dir).expect("load_text");
    assert_eq!(&text.config, e.model_config());
    assert_eq!(text.id, "tiny-qwen3");
    let chat2 = text
        .codec
        .apply_chat_template(&[ChatMessage {
            role: "user".into(),
            content: "w1 w2 w3 w4 w5 w6 w7".into(),
        }])
        .expect("template");
    assert_eq!(text.codec.encode(&chat2).expect("encode"), prompt);
    assert_eq!(prompt[0], 1, "<|im_start|> is one special token");

    const GEN: usize = 10;
    let want = reference_greedy(&weights, &prompt, GEN);
    let (cold, usage) = greedy(&e, &prompt, GEN).await;
    assert_eq!(usage.cached_tokens, 0);
    assert_eq!(cold, want, "engine vs f64 reference");

    wait_stored(&e, &prompt, prompt.len() / 4).await;
    e.reset_prefix_cache().await.expect("reset");
    let (warm, usage) = greedy(&e, &prompt, GEN).await;
    assert_eq!(
        usage.cached_tokens, 11,
        "a 12-token prompt: three blocks, the last token computed again: {usage:?}"
    );
    assert_eq!(
        warm, cold,
        "tokens after loading the prompt's KV from the host tier"
    );

    // A longer prompt that shares the first blocks.
    let mut longer = prompt.clone();
    longer.extend(e.codec().encode("w9 w10 w11 w12 w13").expect("encode"));
    let (t, usage) = greedy(&e, &longer, GEN).await;
    assert!(usage.cached_tokens >= 8, "{usage:?}");
    assert_eq!(t, reference_greedy(&weights, &longer, GEN));
}
