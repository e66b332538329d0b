//! The text side of a GGUF file as `tierkv-serving` reads it (our metadata reader and
//! tokenizer builder, which the frontend and the engine share) against independent
//! readers of the same file: candle's GGUF reader and tokenizer builder (what the
//! engine used before), and the Hugging Face tokenizer that `transformers` converted
//! from the same GGUF (`scripts/fetch-model --hf`, present once the vLLM tests' set-up
//! ran). Token ids and decoded text must agree exactly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::Tokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;

use common::model_path;

const TEXTS: &[&str] = &[
    "Hello, world!",
    "The year 2024 had 366 days; 3.14159 is pi, 1,000,000 is a million.",
    "  leading spaces, trailing spaces   ",
    "tabs\tand\nnewlines\n\n\nand \r\n windows ends",
    "héllo wörld — naïve café, 日本語のテキスト, emoji 🙂🚀, Ελληνικά, русский",
    "fn main() { let x: Vec<u32> = (0..10).map(|i| i * 2).collect(); }",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "don't won't I'm you're they've we'll it'd",
    "!!!???...,,,;;;::: ((([[[{{{}}}]]])))",
    "",
    " ",
    "a",
];

/// What the engine built before: candle's GGUF tokenizer with llama.cpp's split for
/// SmolLM2's `smollm` pre-tokenizer.
fn candle_tokenizer(path: &std::path::Path) -> Tokenizer {
    let mut f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let content = Content::read(&mut f).unwrap();
    let mut t = Tokenizer::from_gguf(&content).unwrap();
    t.with_pre_tokenizer(Some(Sequence::new(vec![
        Digits::new(true).into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    t
}

fn long_text() -> String {
    // Every byte class a prompt may hold, repeated with variations.
    (0..200)
        .map(|i| format!("{i} x{} ü{}\t{}\n", i * 7, i % 13, "ab".repeat(i % 5)))
        .collect()
}

#[test]
fn our_gguf_tokenizer_tokenizes_as_candles_and_as_transformers() {
    let path = model_path();
    let meta = tierkv_serving::text::read_gguf(&path).unwrap();
    let ours = tierkv_serving::text::tokenizer_from_gguf(&meta).unwrap();
    let theirs = candle_tokenizer(&path);
    let hf_dir = path.with_file_name("SmolLM2-135M-Instruct-hf");
    let hf = Tokenizer::from_file(hf_dir.join("tokenizer.json")).ok();
    let long = long_text();
    let mut checked = 0;
    for text in TEXTS.iter().copied().chain([long.as_str()]) {
        for special in [false, true] {
            let a = ours.encode(text, special).unwrap();
            let b = theirs.encode(text, special).unwrap();
            assert_eq!(a.get_ids(), b.get_ids(), "{text:?} (special {special})");
            for skip in [false, true] {
                assert_eq!(
                    ours.decode(a.get_ids(), skip).unwrap(),
                    theirs.decode(b.get_ids(), skip).unwrap(),
                    "decoding {text:?}"
                );
            }
            if let Some(hf) = &hf {
                let c = hf.encode(text, special).unwrap();
                assert_eq!(a.get_ids(), c.get_ids(), "transformers' {text:?}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * (TEXTS.len() + 1));
    assert_eq!(ours.get_vocab_size(true), theirs.get_vocab_size(true));
    if hf.is_none() {
        eprintln!(
            "{} is absent: compared with candle only (scripts/fetch-model --hf fetches it)",
            hf_dir.display()
        );
    }
}

#[test]
fn the_shape_read_from_metadata_is_the_shape_the_model_runs() {
    let path = model_path();
    let text = tierkv_serving::text::load_text(&path).unwrap();
    let model = tierkv_engine::model::load(&path).unwrap();
    assert_eq!(&text.config, model.model.config());
    assert_eq!(text.id, model.id);
    assert_eq!(text.config.num_layers, 30, "SmolLM2-135M has 30 layers");
    assert_eq!(text.config.num_kv_heads, 3);
    let prompt = "The capital of France is";
    assert_eq!(
        text.codec.encode(prompt).unwrap(),
        model.codec.encode(prompt).unwrap()
    );
}
