//! A `tokenizers` tokenizer built from GGUF metadata (`tokenizer.ggml.*`), as llama.cpp
//! tokenizes: byte-level BPE (`gpt2` models) with the pre-tokenizer `tokenizer.ggml.pre`
//! names, the beginning/end tokens the file asks for, and its control tokens special.
//! The engine and the frontend both tokenize through this, so that a prompt's blocks
//! hash the same on both.

use std::collections::BTreeSet;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel as ByteLevelPre;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::processors::sequence::Sequence as ProcessorSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::tokenizer::SplitDelimiterBehavior;
use tokenizers::{AddedToken, Tokenizer};

use super::gguf::GgufMetadata;
use crate::{Result, ServingError};

fn tok_err(e: impl std::fmt::Display) -> ServingError {
    ServingError::Tokenizer(format!("tokenizer from GGUF metadata: {e}"))
}

const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split_then_bytes(regex: &str, bytes: ByteLevelPre) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(regex.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    Ok(Sequence::new(vec![split.into(), bytes.into()]).into())
}

/// Sets normalizer, pre-tokenizer and decoder for llama.cpp's pre-tokenizer `pre`;
/// returns the byte-level post-processor that goes with it.
fn apply_pre(tokenizer: &mut Tokenizer, pre: &str) -> Result<PostProcessorWrapper> {
    let (pre_tokenizer, decoder, post) = match pre {
        "qwen2" => {
            tokenizer.with_normalizer(Some(NFC)).map_err(tok_err)?;
            (
                split_then_bytes(REGEX_QWEN2, ByteLevelPre::new(false, false, false))?,
                ByteLevelDecoder::new(false, false, false),
                ByteLevelProcessor::new(false, false, false),
            )
        }
        "smaug-bpe" | "lfm2" | "llama3" => (
            split_then_bytes(REGEX_LLAMA3, ByteLevelPre::new(false, true, false))?,
            ByteLevelDecoder::new(true, true, true),
            ByteLevelProcessor::new(true, false, true),
        ),
        // llama.cpp's split for these: single digits, then GPT-2's byte-level regex,
        // no space added in front of the text.
        "smollm" | "starcoder" | "refact" | "gpt2" | "" => (
            Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevelPre::new(false, true, true).into(),
            ])
            .into(),
            ByteLevelDecoder::default(),
            ByteLevelProcessor::default(),
        ),
        _ => (
            ByteLevelPre::default().into(),
            ByteLevelDecoder::default(),
            ByteLevelProcessor::default(),
        ),
    };
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(decoder));
    Ok(post.into())
}

/// The template that adds the beginning and end tokens the file asks for.
fn bos_eos_template(
    tokens: &[&str],
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
) -> Result<Option<TemplateProcessing>> {
    let token = |id: Option<u32>, what: &str| -> Result<(String, u32)> {
        let id = id.ok_or_else(|| tok_err(format!("it asks for a {what} token but names none")))?;
        let text = tokens
            .get(id as usize)
            .ok_or_else(|| tok_err(format!("its {what} token {id} is not in the vocabulary")))?;
        Ok((text.to_string(), id))
    };
    let mut specials = Vec::new();
    let (mut single, mut pair_a, mut pair_b) = (Vec::new(), Vec::new(), Vec::new());
    if add_bos {
        let (t, id) = token(bos, "beginning")?;
        single.push(t.clone());
        pair_a.push(format!("{t}:0"));
        pair_b.push(format!("{t}:1"));
        specials.push((t, id));
    }
    single.push("$0".to_string());
    pair_a.push("$A:0".to_string());
    pair_b.push("$B:1".to_string());
    if add_eos {
        let (t, id) = token(eos, "end")?;
        single.push(t.clone());
        pair_a.push(format!("{t}:0"));
        pair_b.push(format!("{t}:1"));
        specials.push((t, id));
    }
    if specials.is_empty() {
        return Ok(None);
    }
    pair_a.extend(pair_b);
    let template = TemplateProcessing::builder()
        .try_single(single)
        .map_err(tok_err)?
        .try_pair(pair_a)
        .map_err(tok_err)?
        .special_tokens(specials)
        .build()
        .map_err(tok_err)?;
    Ok(Some(template))
}

/// The tokenizer a GGUF file describes (`tokenizer.ggml.model = gpt2`: byte-level BPE,
/// the only kind llama.cpp's Llama-family files of this engine use).
pub fn tokenizer_from_gguf(meta: &GgufMetadata) -> Result<Tokenizer> {
    let model = meta
        .str("tokenizer.ggml.model")
        .ok_or_else(|| tok_err("no `tokenizer.ggml.model`"))?
        .to_lowercase();
    if model != "gpt2" {
        return Err(tok_err(format!(
            "tokenizer model `{model}` is not supported (byte-level BPE, `gpt2`, only)"
        )));
    }
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges = meta
        .strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| tok_err(format!("merge `{m}` is not two tokens")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut bpe = BPE::builder().vocab_and_merges(vocab, merges);
    let unk = meta.u32("tokenizer.ggml.unk_token_id");
    if let Some(t) = unk.and_then(|id| tokens.get(id as usize)) {
        bpe = bpe.unk_token(t.to_string());
    }
    if let Some(b) = meta.bool("tokenizer.ggml.byte_fallback") {
        bpe = bpe.byte_fallback(b);
    }
    if let Some(b) = meta.bool("tokenizer.ggml.ignore_merges") {
        bpe = bpe.ignore_merges(b);
    }
    let mut tokenizer = Tokenizer::new(bpe.build().map_err(tok_err)?);

    let pre = meta.str("tokenizer.ggml.pre").unwrap_or("gpt2");
    let byte_level = apply_pre(&mut tokenizer, pre)?;
    let (bos, eos) = (
        meta.u32("tokenizer.ggml.bos_token_id"),
        meta.u32("tokenizer.ggml.eos_token_id"),
    );
    let add_bos = meta.bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
    let add_eos = meta.bool("tokenizer.ggml.add_eos_token").unwrap_or(false);
    let post = match bos_eos_template(&tokens, bos, eos, add_bos, add_eos)? {
        Some(t) => ProcessorSequence::new(vec![byte_level, t.into()]).into(),
        None => byte_level,
    };
    tokenizer.with_post_processor(Some::<PostProcessorWrapper>(post));

    // Control, user-defined, unused and unknown tokens (llama.cpp's token types 2..=5)
    // are special: never split out of text, skipped when decoding with skip.
    let mut special: BTreeSet<u32> = BTreeSet::new();
    if let Some(types) = meta
        .entries
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
    {
        for (id, ty) in types.iter().enumerate() {
            if ty.as_u64().is_some_and(|t| (2..=5).contains(&t)) {
                special.insert(id as u32);
            }
        }
    }
    for key in ["bos", "eos", "pad", "sep", "unk"] {
        if let Some(id) = meta.u32(&format!("tokenizer.ggml.{key}_token_id")) {
            special.insert(id);
        }
    }
    let added: Vec<AddedToken> = special
        .into_iter()
        .filter_map(|id| tokens.get(id as usize))
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    if !added.is_empty() {
        tokenizer.add_special_tokens(added).map_err(tok_err)?;
    }
    Ok(tokenizer)
}
