//! Request bodies of the OpenAI API (the fields this server reads; others are ignored,
//! as OpenAI-compatible servers do).

use serde::Deserialize;

use super::error::ApiError;
use crate::text::ChatMessage;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// Message content: a string or a list of parts (only text parts are accepted).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields common to both endpoints.
#[derive(Debug, Deserialize)]
pub(crate) struct Sampling {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany<String>>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<i64>,
    /// vLLM's per-tenant cache isolation.
    pub cache_salt: Option<String>,
    /// vLLM's extension: keep generating past end-of-sequence.
    #[serde(default)]
    pub ignore_eos: bool,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl ChatRequest {
    pub(crate) fn chat_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::param("messages", "`messages` must not be empty"));
        }
        self.messages
            .iter()
            .map(|m| {
                if !matches!(
                    m.role.as_str(),
                    "system" | "user" | "assistant" | "developer" | "tool"
                ) {
                    return Err(ApiError::param(
                        "messages",
                        format!("unknown role `{}`", m.role),
                    ));
                }
                let content = match &m.content {
                    None => String::new(),
                    Some(Content::Text(t)) => t.clone(),
                    Some(Content::Parts(parts)) => {
                        let mut s = String::new();
                        for p in parts {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => s.push_str(t),
                                (kind, _) => {
                                    return Err(ApiError::param(
                                        "messages",
                                        format!(
                                            "content part `{kind}` is not supported (text only)"
                                        ),
                                    ));
                                }
                            }
                        }
                        s
                    }
                };
                let role = if m.role == "developer" {
                    "system".into()
                } else {
                    m.role.clone()
                };
                Ok(ChatMessage { role, content })
            })
            .collect()
    }
}

/// Whether `body` parses and checks as an OpenAI chat (`chat`) or completion request,
/// as the API does before it tokenizes anything: the fuzz targets' entry point.
#[doc(hidden)]
pub fn request_body_is_valid(body: &[u8], chat: bool) -> bool {
    if chat {
        serde_json::from_slice::<ChatRequest>(body).is_ok_and(|req| req.chat_messages().is_ok())
    } else {
        serde_json::from_slice::<CompletionRequest>(body).is_ok()
    }
}
