//! Turning a request into tokens, on the caller's thread: the chat template, the default system prompt, and
//! the checks that refuse a request before it takes a slot (too long for a conversation, a bad grammar).

use std::sync::Arc;

use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::{ChatMessage, EngineError, Prompt};

/// Shared with every request handler once the model is loaded; llama.cpp's vocabulary is read-only, so
/// tokenizing here while the worker decodes is safe (llama-server does the same).
pub struct Prompter {
    pub model: Arc<LlamaModel>,
    pub template: LlamaChatTemplate,
    pub system_prompt: Option<String>,
    /// Tokens one conversation may hold.
    pub context_size: u32,
}

impl Prompter {
    pub fn tokenize(&self, prompt: &Prompt) -> Result<Vec<LlamaToken>, EngineError> {
        let text = match prompt {
            Prompt::Chat(messages) => self.render(messages)?,
            Prompt::Text(text) => text.clone(),
        };
        // Special tokens in the text are parsed, as the chat template writes them.
        let tokens = self.model.vocab().tokenize(text.as_bytes(), true, true);
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if prompt_tokens == 0 {
            return Err(EngineError::Template("the prompt is empty".into()));
        }
        // At least one token of room must be left for the answer.
        if prompt_tokens >= self.context_size {
            return Err(EngineError::PromptTooLong { prompt_tokens, context_size: self.context_size });
        }
        Ok(tokens)
    }

    fn render(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        let system = self
            .system_prompt
            .as_ref()
            .filter(|_| messages.first().is_none_or(|m| m.role != "system"))
            .map(|content| ChatMessage { role: "system".into(), content: content.clone() });
        let chat = system
            .iter()
            .chain(messages)
            .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Template(format!("a message contains a NUL character: {e}")))?;
        self.model.apply_chat_template(&self.template, &chat, true).map_err(|e| EngineError::Template(e.to_string()))
    }

    /// Parses a grammar once, so that a bad one is a 400 and not a failure in the middle of a batch.
    pub fn check_grammar(&self, grammar: &str) -> Result<(), EngineError> {
        grammar_sampler(&self.model, grammar).map(drop)
    }
}

pub fn grammar_sampler(model: &LlamaModel, grammar: &str) -> Result<LlamaSampler, EngineError> {
    LlamaSampler::grammar(model, grammar, "root").map_err(|e| EngineError::Grammar(e.to_string()))
}

/// The model's own template when llama.cpp knows it, else ChatML (which most small chat models use).
pub fn chat_template(model: &LlamaModel) -> LlamaChatTemplate {
    let probe = [LlamaChatMessage::new("user".into(), "hi".into()).expect("no NUL")];
    if let Ok(template) = model.chat_template(None) {
        if model.apply_chat_template(&template, &probe, true).is_ok() {
            return template;
        }
        eprintln!("warning: llama.cpp does not know this model's chat template; using ChatML instead");
    }
    LlamaChatTemplate::new("chatml").expect("no NUL")
}
