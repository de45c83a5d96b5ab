//! What a caller hands the engine and what comes back: a request (a chat conversation with its tools and
//! reasoning settings, or plain text), the events of its answer (text with log-probabilities, then how it
//! finished), and the errors that refuse or end it.

use tokio::sync::mpsc;

use super::SamplingParams;

/// One plain message (`stove chat` and tests); the API's messages are [`ChatPrompt`]'s OpenAI objects.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A conversation in OpenAI's shapes, rendered by the model's chat template through llama.cpp's chat layer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPrompt {
    /// Checked OpenAI message objects: `role`, `content` (text), an assistant's `tool_calls`, a tool
    /// message's `tool_call_id`, an assistant's `reasoning_content`.
    pub messages: Vec<serde_json::Value>,
    /// OpenAI function tools, checked.
    pub tools: Vec<serde_json::Value>,
    pub tool_choice: ToolChoice,
    /// `None`: what the template supports.
    pub parallel_tool_calls: Option<bool>,
    pub reasoning: Reasoning,
    /// Extra variables for the template (`enable_thinking`, `reasoning_effort`, …).
    pub template_kwargs: serde_json::Map<String, serde_json::Value>,
    /// The pictures and sounds of the conversation, in order; each message's text holds the marker
    /// (`llama::vision::marker`) where one goes.
    pub media: Vec<super::media::Media>,
}

impl ChatPrompt {
    pub fn from_messages(messages: &[ChatMessage]) -> Self {
        ChatPrompt {
            messages: messages.iter().map(|m| serde_json::json!({ "role": m.role, "content": m.content })).collect(),
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: None,
            reasoning: Reasoning::default(),
            template_kwargs: serde_json::Map::new(),
            media: Vec::new(),
        }
    }
}

/// Whether the model must, may or must not call a tool (a named function is `Required` with only that tool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
}

/// How a reasoning model's thinking is returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reasoning {
    /// llama.cpp's `reasoning_format`: `auto` splits thinking into `reasoning_content`, `none` leaves it inline.
    pub format: String,
    /// `Some(false)` asks a template that can turn thinking off to do so; `None` thinks when the template
    /// supports thinking (llama-server's default).
    pub enabled: Option<bool>,
}

impl Default for Reasoning {
    fn default() -> Self {
        Reasoning { format: "auto".into(), enabled: None }
    }
}

/// What the model continues: a conversation (rendered with the model's chat template) or raw text.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(ChatPrompt),
    Text(String),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub prompt: Prompt,
    pub sampling: SamplingParams,
    /// Most tokens to generate; `None` means until the conversation's context is full.
    pub max_tokens: Option<u32>,
    pub stop: Vec<String>,
    /// A GBNF grammar the answer must follow (JSON output uses one).
    pub grammar: Option<String>,
    /// Report each token's log-probability with this many alternatives; `None` skips the work.
    pub logprobs: Option<u8>,
}

impl Request {
    pub fn new(prompt: Prompt, sampling: SamplingParams) -> Self {
        Self { prompt, sampling, max_tokens: None, stop: Vec::new(), grammar: None, logprobs: None }
    }
}

/// A queued request's events, and for a chat the reader of its answer (content, reasoning, tool calls).
pub struct Submitted {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub reader: Option<crate::llama::chat::ChatParser>,
    /// Milliseconds llama.cpp's chat layer took to render the conversation.
    pub template_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
}

/// Counts and timings of one finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub reason: FinishReason,
    pub prompt_tokens: u32,
    /// Prompt tokens whose KV cache was kept from the slot's previous request.
    pub cached_tokens: u32,
    pub completion_tokens: u32,
    pub prompt_ms: f64,
    pub generation_ms: f64,
    /// The stop string that ended the answer, when one did.
    pub stop_sequence: Option<String>,
    /// Tokens speculation guessed and decoded, and those of them the model agreed with.
    pub drafted_tokens: u32,
    pub accepted_tokens: u32,
}

/// One token's text and log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenChoice {
    pub text: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// The chosen token and the most likely alternatives at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub chosen: TokenChoice,
    pub top: Vec<TokenChoice>,
}

/// What a request receives, in order: `Text`s, then `Done`, or `Failed` at any point.
#[derive(Debug)]
pub enum Event {
    /// New text, and the log-probabilities of the tokens that made it when they were asked for.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done(Finish),
    Failed(EngineError),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("the model is still loading ({}%); try again shortly", permille / 10)]
    Loading { permille: u32 },
    #[error("the model failed to load: {0}")]
    LoadFailed(String),
    #[error("the server is busy: {waiting} requests are already waiting for a free slot; try again shortly")]
    Busy { waiting: usize },
    #[error(
        "the prompt is {prompt_tokens} tokens but a conversation holds {context_size}; \
         shorten the conversation or start stove with a larger --ctx-size"
    )]
    PromptTooLong { prompt_tokens: u32, context_size: u32 },
    #[error("the chat template could not be applied: {0}")]
    Template(String),
    /// Something in the request that cannot be done as asked, said in full.
    #[error("{0}")]
    BadRequest(String),
    #[error("the grammar is not valid: {0}")]
    Grammar(String),
    #[error(
        "the inputs are {tokens} tokens in all, and one request may embed at most {budget} \
         (16 conversations' context); send fewer or shorter texts per request"
    )]
    TooMuchToEmbed { tokens: u64, budget: u64 },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("the model cannot be used any more: {0}; restart the worker, then this stove")]
    Unusable(String),
}
