//! Text <-> token ids and chat templates: [`TextCodec`] wraps a `tokenizers`
//! tokenizer (built from GGUF metadata or read from `tokenizer.json`) and the model's
//! Jinja chat template.

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::{Result, ServingError};

/// One chat message, as the OpenAI API sends it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message's text.
    pub content: String,
}

/// A model's tokenizer, chat template and special tokens: text to token ids and back.
pub struct TextCodec {
    tokenizer: Tokenizer,
    chat: Option<minijinja::Environment<'static>>,
    bos_token: String,
    eos_token: String,
    /// The most bytes of text one token can stand for (see [`TextCodec::max_token_bytes`]).
    max_token_bytes: usize,
}

fn tok_err(e: impl std::fmt::Display) -> ServingError {
    ServingError::Tokenizer(e.to_string())
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec")
            .field("vocab_size", &self.vocab_size())
            .field("chat_template", &self.chat.is_some())
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl TextCodec {
    /// A codec over `tokenizer`; `chat_template` is a Jinja template as in Hugging
    /// Face's `tokenizer_config.json` (none: chat requests are refused). Fails if the
    /// template does not compile.
    pub fn new(
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        bos_token: String,
        eos_token: String,
    ) -> Result<TextCodec> {
        let chat = match chat_template {
            Some(src) => {
                let mut env = minijinja::Environment::new();
                env.set_unknown_method_callback(
                    minijinja_contrib::pycompat::unknown_method_callback,
                );
                env.add_function(
                    "raise_exception",
                    |msg: String| -> std::result::Result<String, minijinja::Error> {
                        Err(minijinja::Error::new(
                            minijinja::ErrorKind::InvalidOperation,
                            msg,
                        ))
                    },
                );
                env.add_template_owned("chat", src)
                    .map_err(|e| tok_err(format!("chat template does not parse: {e}")))?;
                Some(env)
            }
            None => None,
        };
        // A token's spelling in the vocabulary is at least as long as the text it
        // stands for: byte-level BPE spells each byte as one char of 1-2 bytes,
        // SentencePiece spells a space as `▁` (3 bytes) and a fallback byte as `<0x41>`.
        let max_token_bytes = tokenizer
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(TextCodec {
            tokenizer,
            chat,
            bos_token,
            eos_token,
            max_token_bytes,
        })
    }

    /// The most bytes of text one token stands for: a text longer than
    /// `n * max_token_bytes` bytes has more than `n` tokens, so it can be refused
    /// without tokenizing it.
    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    /// Token ids of `text`; special tokens written in the text (`<|im_start|>`) are
    /// recognised as such.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(tok_err)
    }

    /// Tokens in the vocabulary, special ones included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The id of a token spelled exactly `token`, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// Renders the chat template with `add_generation_prompt`, as Hugging Face does.
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        let env = self.chat.as_ref().ok_or_else(|| {
            ServingError::InvalidRequest(
                "this model has no chat template; use /v1/completions".into(),
            )
        })?;
        let tmpl = env.get_template("chat").map_err(tok_err)?;
        let msgs: Vec<minijinja::Value> = messages
            .iter()
            .map(|m| minijinja::context! { role => &m.role, content => &m.content })
            .collect();
        tmpl.render(minijinja::context! {
            messages => msgs,
            add_generation_prompt => true,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| ServingError::InvalidRequest(format!("chat template: {e}")))
    }
}

/// Turns a stream of token ids into text pieces, holding back bytes of a character
/// that is not complete yet.
#[derive(Default, Debug)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// Adds `id`; returns the text it completes (possibly empty).
    pub fn push(&mut self, codec: &TextCodec, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = codec.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = codec.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.starts_with(&prefix) {
            let piece = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }
}
