//! From engine token events to text pieces: incremental detokenization and stop
//! strings (text that could still become a stop string is held back).

use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use crate::request::{GenEvent, Usage};
use crate::text::{IncrementalDecoder, TextCodec};

pub(super) enum Piece {
    Text(String),
    Done {
        finish_reason: &'static str,
        usage: Usage,
    },
    Error(String),
}

pub(super) struct TextGeneration {
    rx: Option<UnboundedReceiver<GenEvent>>,
    codec: Arc<TextCodec>,
    decoder: IncrementalDecoder,
    stops: Vec<String>,
    text: String,
    emitted: usize,
    usage: Usage,
    done: Option<Piece>,
}

impl TextGeneration {
    pub(super) fn new(
        rx: UnboundedReceiver<GenEvent>,
        codec: Arc<TextCodec>,
        stops: Vec<String>,
        prompt_tokens: usize,
    ) -> TextGeneration {
        TextGeneration {
            rx: Some(rx),
            codec,
            decoder: IncrementalDecoder::default(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            emitted: 0,
            usage: Usage {
                prompt_tokens,
                ..Usage::default()
            },
            done: None,
        }
    }

    /// The next piece of text, then one `Done` (or `Error`), then `None`.
    pub(super) async fn next(&mut self) -> Option<Piece> {
        loop {
            if let Some(done) = self.done.take() {
                self.rx = None;
                return Some(done);
            }
            let rx = self.rx.as_mut()?;
            match rx.recv().await {
                Some(GenEvent::Admitted(u)) => self.usage = u,
                Some(GenEvent::Token(t)) => {
                    self.usage.completion_tokens += 1;
                    match self.decoder.push(&self.codec, t) {
                        Ok(piece) => self.text.push_str(&piece),
                        Err(e) => return Some(self.fail(e.to_string())),
                    }
                    if let Some(at) = self.find_stop() {
                        let out = self.text[self.emitted..at].to_string();
                        self.emitted = at;
                        // Dropping the receiver cancels the request in the engine.
                        self.rx = None;
                        self.done = Some(Piece::Done {
                            finish_reason: "stop",
                            usage: self.usage.clone(),
                        });
                        if !out.is_empty() {
                            return Some(Piece::Text(out));
                        }
                        continue;
                    }
                    let safe = self.text.len() - self.holdback();
                    if safe > self.emitted {
                        let out = self.text[self.emitted..safe].to_string();
                        self.emitted = safe;
                        return Some(Piece::Text(out));
                    }
                }
                Some(GenEvent::Finished { reason, usage }) => {
                    self.usage = usage;
                    self.done = Some(Piece::Done {
                        finish_reason: reason.as_str(),
                        usage: self.usage.clone(),
                    });
                    if self.emitted < self.text.len() {
                        let out = self.text[self.emitted..].to_string();
                        self.emitted = self.text.len();
                        return Some(Piece::Text(out));
                    }
                }
                Some(GenEvent::Error(m)) => return Some(self.fail(m)),
                Some(GenEvent::Published(_)) => {}
                None => return Some(self.fail("the engine stopped".into())),
            }
        }
    }

    fn fail(&mut self, m: String) -> Piece {
        self.rx = None;
        Piece::Error(m)
    }

    /// Byte offset where the first stop string starts in the text not yet emitted.
    fn find_stop(&self) -> Option<usize> {
        let rest = &self.text[self.emitted..];
        self.stops
            .iter()
            .filter_map(|s| rest.find(s.as_str()))
            .min()
            .map(|i| self.emitted + i)
    }

    /// Bytes at the end of the text that could be the start of a stop string.
    fn holdback(&self) -> usize {
        let mut hold = 0;
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if k > hold && s.is_char_boundary(k) && self.text.ends_with(&s[..k]) {
                    hold = k;
                    break;
                }
            }
        }
        hold.min(self.text.len() - self.emitted)
    }
}
