//! The engine as a [`Backend`] of the OpenAI routes.

use std::sync::Arc;

use tierkv_serving::api::{Backend, Routed};
use tierkv_serving::request::GenerateRequest;
use tierkv_serving::text::{ModelConfig, TextCodec};

use crate::Engine;

impl Backend for Engine {
    fn codec(&self) -> &Arc<TextCodec> {
        Engine::codec(self)
    }
    fn model_id(&self) -> &str {
        Engine::model_id(self)
    }
    fn model_config(&self) -> &ModelConfig {
        Engine::model_config(self)
    }
    fn max_context(&self) -> usize {
        Engine::max_context(self)
    }
    fn default_max_tokens(&self, prompt_len: usize) -> usize {
        Engine::default_max_tokens(self, prompt_len)
    }
    async fn generate(&self, req: GenerateRequest) -> tierkv_serving::Result<Routed> {
        Ok(Routed {
            events: Engine::generate(self, req).await?,
            worker: None,
        })
    }
    fn render_metrics(&self) -> String {
        let mut text = self.metrics().render();
        text.push_str(&tierkv_kvstore::metrics::render_store(self.store()));
        text
    }
}
