//! Turning a request into tokens, on the caller's thread: the chat template (through llama.cpp's chat layer,
//! `llama::chat`), the default system prompt, what the template asks of generation (a tool-call grammar, extra
//! stops, special tokens to keep), and the checks that refuse a request before it takes a slot (too long for a
//! conversation, a template that does not render, a bad grammar).

use std::collections::HashSet;
use std::sync::Arc;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde_json::{json, Value};

use super::media::{self, Media, MediaSpan};
use super::{ChatPrompt, EngineError, Prompt, Request, ToolChoice};
use crate::llama::chat::{ApplyRequest, ChatParser, ChatTemplates, TemplateInfo};
use crate::llama::vision::Projector;

/// Where the chat template in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TemplateOrigin {
    /// The model's `tokenizer.chat_template`.
    Model,
    /// The model has none: llama.cpp's ChatML.
    Chatml,
    /// `--chat-template-file`.
    File,
    /// `pack --chat-template`, stored in the bundle.
    Bundle,
}

/// The model's chat template, ready to render, and what `info` says about it.
pub struct Template {
    templates: ChatTemplates,
    pub origin: TemplateOrigin,
    pub info: TemplateInfo,
}

impl Template {
    /// The model's own template, or `custom` (Jinja source and where it came from).
    pub fn load(model: &LlamaModel, custom: Option<(&str, TemplateOrigin)>) -> Result<Self, String> {
        let templates = ChatTemplates::new(model, custom.map(|(source, _)| source))
            .map_err(|e| format!("the chat template does not parse: {e}"))?;
        let info = templates.info().map_err(|e| format!("the chat template cannot be used: {e}"))?;
        let origin = match custom {
            Some((_, origin)) => origin,
            None if info.explicit => TemplateOrigin::Model,
            None => TemplateOrigin::Chatml,
        };
        Ok(Template { templates, origin, info })
    }
}

/// A grammar for one generation: the request's own (JSON output), or the template's for tool calls.
#[derive(Debug, Clone, PartialEq)]
pub struct GrammarSpec {
    pub text: String,
    /// Applies only once a trigger appears (the model may answer in prose instead of calling a tool).
    pub lazy: bool,
    pub trigger_patterns: Vec<String>,
    pub trigger_tokens: Vec<LlamaToken>,
    /// Tokens the template already wrote to start the answer, which a strict grammar must have seen.
    pub prefill: Vec<LlamaToken>,
}

impl GrammarSpec {
    fn plain(text: String) -> Self {
        GrammarSpec { text, lazy: false, trigger_patterns: Vec::new(), trigger_tokens: Vec::new(), prefill: Vec::new() }
    }

    /// The llama.cpp sampler; an error names what did not parse.
    fn sampler(&self, model: &LlamaModel) -> Result<LlamaSampler, EngineError> {
        let mut sampler = if self.lazy {
            LlamaSampler::grammar_lazy_patterns(model, &self.text, "root", &self.trigger_patterns, &self.trigger_tokens)
        } else {
            LlamaSampler::grammar(model, &self.text, "root")
        }
        .map_err(|e| EngineError::Grammar(grammar_error(&e)))?;
        for &token in &self.prefill {
            sampler.try_accept(token).map_err(|e| {
                EngineError::Template(format!("the tool-call grammar does not accept the template's answer start: {e}"))
            })?;
        }
        Ok(sampler)
    }
}

/// What to tell a client whose grammar llama.cpp refused. llama.cpp writes where it failed only to standard
/// error (stove's terminal) and answers a null sampler, which llama-cpp-2 reports as "Grammar call returned
/// null"; so the message names what llama.cpp checks.
fn grammar_error(error: &llama_cpp_2::GrammarError) -> String {
    match error {
        llama_cpp_2::GrammarError::NullGrammar => "llama.cpp could not parse it: check that it has a \
            `root` rule, that every rule it uses is defined, that quotes and brackets are closed and that no rule \
            starts with itself (left recursion); stove's terminal shows the place llama.cpp stopped at"
            .into(),
        other => other.to_string(),
    }
}

/// A request made ready for a slot.
pub struct Prepared {
    pub tokens: Vec<LlamaToken>,
    /// The grammar, parsed once here (a bad one is a 400 before any work) and handed to the slot as it is.
    pub grammar: Option<LlamaSampler>,
    /// The request's stop strings and the template's.
    pub stops: Vec<String>,
    /// Special tokens whose text belongs in the answer (a tool call's `<tool_call>`), for the parser to see.
    pub keep_special: HashSet<LlamaToken>,
    /// Time spent in llama.cpp's chat layer rendering the conversation (0 for raw text).
    pub template_ms: f64,
    /// The pictures in `tokens` (their stand-ins), in order (`media.rs`).
    pub media: Vec<MediaSpan>,
}

/// Shared with every request handler once the model is loaded; llama.cpp's vocabulary is read-only, so
/// tokenizing here while the worker decodes is safe (llama-server does the same).
pub struct Prompter {
    pub model: Arc<LlamaModel>,
    /// The embedding model (`--embedding-model`) and the tokens one input may hold, when there is one: inputs
    /// to embed are its tokens, not the chat model's.
    pub embedder: Option<(Arc<LlamaModel>, u32)>,
    /// The projector (`--mmproj`) that reads pictures, when there is one.
    pub projector: Option<Arc<Projector>>,
    pub template: Template,
    pub system_prompt: Option<String>,
    /// Tokens one conversation may hold.
    pub context_size: u32,
}

impl Prompter {
    /// Renders and tokenizes `request`, with the reader of its answer for a chat.
    pub fn prepare(&self, request: &Request) -> Result<(Prepared, Option<ChatParser>), EngineError> {
        let mut stops = request.stop.clone();
        let mut grammar = request.grammar.clone().map(GrammarSpec::plain);
        let mut keep_special = HashSet::new();
        let mut template_ms = 0.0;
        let (text, reader) = match &request.prompt {
            Prompt::Text(text) => (text.clone(), None),
            Prompt::Chat(chat) => {
                let started = std::time::Instant::now();
                let applied = self.render(chat)?;
                template_ms = started.elapsed().as_secs_f64() * 1000.0;
                if !applied.grammar.is_empty() {
                    let mut tool_grammar = applied.grammar;
                    if chat.tool_choice == ToolChoice::Required {
                        tool_grammar = call_at_once(&tool_grammar);
                    }
                    if chat.parallel_tool_calls == Some(false) {
                        tool_grammar = one_call(&tool_grammar);
                    }
                    if grammar.is_some() {
                        return Err(EngineError::BadRequest(
                            "a grammar or `response_format` cannot be combined with tools; leave one out".into(),
                        ));
                    }
                    grammar = Some(GrammarSpec {
                        text: tool_grammar,
                        lazy: applied.grammar_lazy,
                        trigger_patterns: applied.trigger_patterns,
                        trigger_tokens: applied.trigger_tokens.into_iter().map(LlamaToken).collect(),
                        prefill: if applied.grammar_lazy {
                            Vec::new()
                        } else {
                            self.prefill(&applied.generation_prompt)
                        },
                    });
                }
                stops.extend(applied.additional_stops);
                for special in &applied.preserved_tokens {
                    if let [token] = self.model.vocab().tokenize(special.as_bytes(), false, true)[..] {
                        keep_special.insert(token);
                    }
                }
                let mut spec = applied.parser;
                spec["reasoning_format"] = json!(chat.reasoning.format);
                let reader = ChatParser::new(&spec).map_err(|e| EngineError::Template(e.to_string()))?;
                (applied.prompt, Some(reader))
            }
        };
        let (tokens, media) = match &request.prompt {
            Prompt::Chat(chat) if !chat.media.is_empty() => self.tokenize_with_media(&text, &chat.media)?,
            _ => (self.tokenize_text(&text)?, Vec::new()),
        };
        let n_vocab = self.model.n_vocab();
        if let Some(&(token, _)) = request.sampling.logit_bias.iter().find(|(token, _)| *token >= n_vocab) {
            return Err(EngineError::BadRequest(format!(
                "`logit_bias` names token {token}, but this model's vocabulary has tokens 0 to {}",
                n_vocab - 1
            )));
        }
        let grammar = grammar.map(|grammar| grammar.sampler(&self.model)).transpose()?;
        Ok((Prepared { tokens, grammar, stops, keep_special, template_ms, media }, reader))
    }

    /// Tokenizes a prompt with pictures or sounds, each read by the projector, and checks it fits a conversation.
    fn tokenize_with_media(
        &self,
        text: &str,
        items: &[Media],
    ) -> Result<(Vec<LlamaToken>, Vec<MediaSpan>), EngineError> {
        let projector = self.projector.as_deref();
        let (sees, hears) = (projector.is_some_and(|p| p.vision), projector.is_some_and(|p| p.audio));
        let unread = items.iter().find(|item| match item {
            Media::Picture(_) => !sees,
            Media::Sound(_) => !hears,
        });
        let (Some(projector), None) = (projector, unread) else {
            let what = unread.map_or("picture", Media::kind);
            let reads = match (sees, hears) {
                (true, _) => "pictures and text only",
                (false, true) => "sound and text only",
                (false, false) => "text only",
            };
            return Err(EngineError::BadRequest(format!(
                "the conversation holds a {what}, but this model reads {reads}: start it with --mmproj (the \
                 projector made for it, one that reads a {what}), or pack one in with `stove pack --mmproj`"
            )));
        };
        let vocab = self.model.vocab();
        let (tokens, media) = media::tokenize_with_media(text, items, projector, |piece, first| {
            vocab.tokenize(piece.as_bytes(), first, true)
        })?;
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if prompt_tokens >= self.context_size {
            return Err(EngineError::PromptTooLong { prompt_tokens, context_size: self.context_size });
        }
        Ok((tokens, media))
    }

    /// The prompt text `request` renders to, as llama-server's `/apply-template` returns it.
    pub fn prompt_text(&self, request: &Request) -> Result<String, EngineError> {
        match &request.prompt {
            Prompt::Text(text) => Ok(text.clone()),
            Prompt::Chat(chat) => Ok(self.render(chat)?.prompt),
        }
    }

    /// Tokenizes a prompt (or an input to embed) and checks it fits a conversation.
    pub fn tokenize_text(&self, text: &str) -> Result<Vec<LlamaToken>, EngineError> {
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

    /// Tokenizes an input to embed, with the embedding model's vocabulary when there is one.
    pub fn tokenize_input(&self, text: &str) -> Result<Vec<LlamaToken>, EngineError> {
        let Some((embedder, context_size)) = &self.embedder else { return self.tokenize_text(text) };
        // Its own special tokens (a BERT model's [CLS] and [SEP]) are added; any in the text are plain text.
        let tokens = embedder.vocab().tokenize(text.as_bytes(), true, false);
        let prompt_tokens = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
        if prompt_tokens == 0 {
            return Err(EngineError::Template("the input is empty".into()));
        }
        if prompt_tokens > *context_size {
            return Err(EngineError::PromptTooLong { prompt_tokens, context_size: *context_size });
        }
        Ok(tokens)
    }

    /// Tokens one input to embed may hold.
    pub fn embedding_context(&self) -> u32 {
        self.embedder.as_ref().map_or(self.context_size, |(_, size)| *size)
    }

    /// The rendered prompt and what generation needs, with the default system prompt when the conversation
    /// has none.
    fn render(&self, chat: &ChatPrompt) -> Result<crate::llama::chat::Applied, EngineError> {
        let system = self
            .system_prompt
            .as_ref()
            .filter(|_| chat.messages.first().is_none_or(|m| m["role"] != "system"))
            .map(|content| json!({ "role": "system", "content": content }));
        let messages: Vec<Value> = system.into_iter().chain(chat.messages.iter().cloned()).collect();
        let mut kwargs: serde_json::Map<String, Value> =
            chat.template_kwargs.iter().map(|(k, v)| (k.clone(), json!(v.to_string()))).collect();
        // llama-server's default: templates that can keep earlier turns' reasoning do (its --reasoning-preserve).
        kwargs.entry("preserve_reasoning").or_insert_with(|| json!("true"));
        let request = ApplyRequest {
            messages: Value::Array(messages),
            tools: (!chat.tools.is_empty()).then(|| Value::Array(chat.tools.clone())),
            tool_choice: match chat.tool_choice {
                ToolChoice::Auto => "auto",
                ToolChoice::None => "none",
                ToolChoice::Required => "required",
            },
            parallel_tool_calls: chat.parallel_tool_calls,
            reasoning_format: chat.reasoning.format.clone(),
            enable_thinking: chat.reasoning.enabled.unwrap_or(self.template.info.supports_thinking),
            chat_template_kwargs: kwargs,
            add_generation_prompt: true,
        };
        let applied = self.template.templates.apply(&request).map_err(|e| EngineError::Template(e.to_string()))?;
        let offered = chat.tools.iter().filter_map(|tool| tool.pointer("/function/name")?.as_str());
        if chat.tool_choice != ToolChoice::None && offered.clone().next().is_some() {
            let told = offered.into_iter().any(|name| applied.prompt.contains(name));
            if !told {
                // The template dropped the tools: the model would answer in prose while the client waits for a
                // call. Say so instead, as Ollama does for a model without tools.
                return Err(EngineError::BadRequest(
                    "this model's chat template does not show tools to the model, so `tools` cannot be used with \
                     it; leave `tools` out, or start stove with --chat-template-file naming a template that has \
                     them (llama.cpp's models/templates folder holds many)"
                        .into(),
                ));
            }
        }
        Ok(applied)
    }

    /// The tokens of what the template wrote to open the answer, as llama.cpp's sampler feeds them to a strict
    /// tool-call grammar (`common_sampler_init`): a space some tokenizers put before the first is skipped.
    fn prefill(&self, generation_prompt: &str) -> Vec<LlamaToken> {
        let vocab = self.model.vocab();
        let tokens = vocab.tokenize(generation_prompt.as_bytes(), false, true);
        let starts_with_space = generation_prompt.starts_with(char::is_whitespace);
        tokens
            .into_iter()
            .enumerate()
            .filter(|&(i, token)| {
                let mut piece = Vec::new();
                vocab.token_to_piece_into(token, &mut piece, true, None);
                !(i == 0 && piece.first().is_some_and(u8::is_ascii_whitespace) && !starts_with_space)
            })
            .map(|(_, token)| token)
            .collect()
    }
}

/// OpenAI's `tool_choice: "required"` means the answer is the call. llama.cpp's grammar for it lets the model
/// write first — prose up to the call marker (`root ::= … until-N? tool-calls`), or for gpt-oss any number of
/// analysis and preamble messages (`root ::= (start any)* start tool-call`) — which a small model may continue
/// until its token limit without ever calling. So that run before the call is taken out of the root rule. A
/// thinking block the template writes as its own rule (`("<think>" … "</think>")?`) stays, and a grammar of
/// another shape is left as llama.cpp made it.
fn call_at_once(grammar: &str) -> String {
    let mut out = String::with_capacity(grammar.len());
    for line in grammar.split_inclusive('\n') {
        let Some(body) = line.strip_prefix("root ::= ") else {
            out.push_str(line);
            continue;
        };
        let tokens: Vec<&str> = body.split(' ').collect();
        let before_call = |i: usize| {
            let token = tokens[i];
            let prose = token
                .strip_prefix("until-")
                .and_then(|t| t.strip_suffix('?'))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
            let messages = token == "any)*" && i > 0 && tokens[i - 1] == "(start";
            let call_follows = tokens[i + 1..].first().is_some_and(|next| next.starts_with("tool-call"))
                || (messages && tokens.get(i + 2).is_some_and(|next| next.starts_with("tool-call")));
            (prose || messages) && call_follows
        };
        let mut kept = Vec::with_capacity(tokens.len());
        for (i, &token) in tokens.iter().enumerate() {
            if before_call(i) {
                // `(start any)*` is two tokens: the `(start` kept just before goes too.
                if token == "any)*" {
                    kept.pop();
                }
                continue;
            }
            kept.push(token);
        }
        out.push_str("root ::= ");
        out.push_str(&kept.join(" "));
    }
    out
}

/// `parallel_tool_calls: false` means at most one call. llama.cpp honours it for formats that wrap calls in a
/// list, but for one-marker-per-call formats (Hermes' `<tool_call>`, Qwen 2.5) its grammar still repeats the
/// call (`tool-calls ::= (tool-call space)+`); that repetition becomes a single call.
fn one_call(grammar: &str) -> String {
    grammar.replace("\ntool-calls ::= (tool-call space)+\n", "\ntool-calls ::= tool-call space\n")
}

#[cfg(test)]
mod tests {
    use super::{call_at_once, one_call};

    #[test]
    fn a_required_call_comes_at_once() {
        let qwen = "root ::= \"<|im_start|>assistant\\n\" space until-169? tool-calls\nspace ::= | \" \"\nuntil-169 ::= | [^<] until-169\n";
        assert_eq!(
            call_at_once(qwen),
            "root ::= \"<|im_start|>assistant\\n\" space tool-calls\nspace ::= | \" \"\nuntil-169 ::= | [^<] until-169\n"
        );
        let thinking = "root ::= \"a\" space (\"<think>\" until-13 \"</think>\")? until-191? tool-calls\n";
        assert_eq!(call_at_once(thinking), "root ::= \"a\" space (\"<think>\" until-13 \"</think>\")? tool-calls\n");
        let gpt_oss = "root ::= (start any)* start tool-call\nstart ::= \"<|start|>assistant\"\n";
        assert_eq!(call_at_once(gpt_oss), "root ::= start tool-call\nstart ::= \"<|start|>assistant\"\n");
        let other = "root ::= tool-call | tool-calls\n";
        assert_eq!(call_at_once(other), other, "a grammar of another shape is left alone");
    }

    #[test]
    fn one_call_means_one_call() {
        let hermes = "root ::= space tool-calls\ntool-calls ::= (tool-call space)+\nspace ::= \" \"?\n";
        assert_eq!(one_call(hermes), "root ::= space tool-calls\ntool-calls ::= tool-call space\nspace ::= \" \"?\n");
        let listed = "root ::= \"[\" tool-call \"]\"\n";
        assert_eq!(one_call(listed), listed);
    }
}
