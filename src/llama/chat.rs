//! llama.cpp's chat layer, safely: the model's Jinja chat template (or an override) rendered with messages and
//! tools into a prompt, the tool-call grammar and stops that go with it, and the parser that reads an answer
//! back into content, reasoning and tool calls. The C++ lives in `chat_shim.cpp`; this file holds every unsafe
//! call into it, and only JSON text and owned handles cross.

use std::ffi::{c_char, c_int, CStr, CString};
use std::ptr::NonNull;

use llama_cpp_2::model::LlamaModel;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[repr(C)]
struct RawTemplates {
    _private: [u8; 0],
}

#[repr(C)]
struct RawParser {
    _private: [u8; 0],
}

extern "C" {
    fn stove_chat_init(
        model: *const llama_cpp_sys_2::llama_model,
        template_override: *const c_char,
        chat: *mut *mut RawTemplates,
        error: *mut *mut c_char,
    ) -> c_int;
    fn stove_chat_free(chat: *mut RawTemplates);
    fn stove_chat_info(chat: *const RawTemplates, out: *mut *mut c_char) -> c_int;
    fn stove_chat_apply(chat: *const RawTemplates, request_json: *const c_char, out: *mut *mut c_char) -> c_int;
    fn stove_chat_parser_new(params_json: *const c_char, parser: *mut *mut RawParser, error: *mut *mut c_char)
        -> c_int;
    fn stove_chat_parser_free(parser: *mut RawParser);
    fn stove_chat_parse(
        parser: *const RawParser,
        text: *const c_char,
        len: usize,
        partial: bool,
        out: *mut *mut c_char,
    ) -> c_int;
    fn stove_chat_string_free(text: *mut c_char);
}

/// What llama.cpp's chat layer said went wrong (a template that does not render, bad tools, …).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ChatError(pub String);

/// Takes ownership of a string the shim allocated; `status` 0 means it is the result, else the error.
fn take(status: c_int, text: *mut c_char) -> Result<String, ChatError> {
    let owned = if text.is_null() {
        String::new()
    } else {
        // SAFETY: the shim returns NUL-terminated strings from malloc, which are freed here exactly once.
        let copied = unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned();
        unsafe { stove_chat_string_free(text) };
        copied
    };
    match status {
        0 => Ok(owned),
        _ if owned.is_empty() => Err(ChatError("llama.cpp's chat layer failed without saying why".into())),
        _ => Err(ChatError(owned)),
    }
}

fn c_string(text: &str, what: &str) -> Result<CString, ChatError> {
    CString::new(text).map_err(|_| ChatError(format!("{what} contains a NUL character")))
}

/// The chat template(s) of one model, ready to render.
pub struct ChatTemplates {
    raw: NonNull<RawTemplates>,
}

// SAFETY: the templates are immutable once made, and rendering reads them only (llama-server shares one set
// between all its HTTP threads the same way).
unsafe impl Send for ChatTemplates {}
unsafe impl Sync for ChatTemplates {}

impl Drop for ChatTemplates {
    fn drop(&mut self) {
        // SAFETY: made by stove_chat_init, freed once.
        unsafe { stove_chat_free(self.raw.as_ptr()) }
    }
}

/// What a template can do, as llama.cpp's analysis of its source finds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateInfo {
    /// The model has a template of its own, or one was given (otherwise llama.cpp's ChatML is used).
    pub explicit: bool,
    /// `supports_tools`, `supports_tool_calls`, `supports_system_role`, `supports_parallel_tool_calls`, …
    pub caps: serde_json::Map<String, Value>,
    pub supports_thinking: bool,
}

/// A chat request in llama.cpp's terms (OpenAI shapes for messages and tools).
#[derive(Debug, Clone, Serialize)]
pub struct ApplyRequest {
    pub messages: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tools: Option<Value>,
    /// `auto`, `none` or `required`.
    pub tool_choice: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// `auto` (thinking goes to `reasoning_content`), `none` (left in the content), `deepseek`, ….
    pub reasoning_format: String,
    pub enable_thinking: bool,
    /// Extra template variables, each value as JSON text.
    pub chat_template_kwargs: serde_json::Map<String, Value>,
    pub add_generation_prompt: bool,
}

/// A rendered request: the prompt and what generation needs to follow the template's format.
#[derive(Debug, Clone, Deserialize)]
pub struct Applied {
    pub prompt: String,
    /// GBNF for tool calls; empty without tools.
    pub grammar: String,
    /// The grammar applies only from the first trigger on (the model may answer in prose before).
    pub grammar_lazy: bool,
    pub trigger_patterns: Vec<String>,
    pub trigger_tokens: Vec<i32>,
    /// Special tokens that are part of the format (`<tool_call>`): their text is kept in the answer.
    pub preserved_tokens: Vec<String>,
    pub additional_stops: Vec<String>,
    /// What [`ChatParser::new`] takes to read the answer back.
    pub parser: Value,
    /// What the template put after the last message to start the answer (`<think>` for some models).
    pub generation_prompt: String,
}

impl ChatTemplates {
    /// The model's own template, or `template_override` (Jinja source) when given.
    pub fn new(model: &LlamaModel, template_override: Option<&str>) -> Result<Self, ChatError> {
        let template = template_override.map(|t| c_string(t, "the chat template")).transpose()?;
        let mut raw = std::ptr::null_mut();
        let mut error = std::ptr::null_mut();
        // SAFETY: the model pointer is live for the call (borrowed); the template is NUL-terminated or NULL;
        // the out-pointers are valid. The templates keep copies of what they read, not the model.
        let status = unsafe {
            stove_chat_init(
                super::model::raw_model(model),
                template.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
                &mut raw,
                &mut error,
            )
        };
        take(status, error)?;
        let raw = NonNull::new(raw).ok_or_else(|| ChatError("the chat template could not be made".into()))?;
        Ok(ChatTemplates { raw })
    }

    /// A template from its Jinja source alone, without a model (no BOS or EOS text): enough to say what it
    /// supports, as `stove info` does before anything is loaded.
    pub fn from_source(source: &str) -> Result<Self, ChatError> {
        // Without a model, llama.cpp asserts that a template is given: an empty one would end the process.
        if source.trim().is_empty() {
            return Err(ChatError("the chat template is empty".into()));
        }
        let template = c_string(source, "the chat template")?;
        let mut raw = std::ptr::null_mut();
        let mut error = std::ptr::null_mut();
        // SAFETY: a NULL model is allowed when a template is given (the shim passes it on to
        // common_chat_templates_init, which then reads no vocabulary); valid out-pointers.
        let status = unsafe { stove_chat_init(std::ptr::null(), template.as_ptr(), &mut raw, &mut error) };
        take(status, error)?;
        let raw = NonNull::new(raw).ok_or_else(|| ChatError("the chat template could not be made".into()))?;
        Ok(ChatTemplates { raw })
    }

    pub fn info(&self) -> Result<TemplateInfo, ChatError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: live handle, valid out-pointer.
        let status = unsafe { stove_chat_info(self.raw.as_ptr(), &mut out) };
        let json = take(status, out)?;
        serde_json::from_str(&json).map_err(|e| ChatError(format!("unexpected template info from the shim: {e}")))
    }

    /// Renders `request`; an error names what the template or llama.cpp refused.
    pub fn apply(&self, request: &ApplyRequest) -> Result<Applied, ChatError> {
        let json = serde_json::to_string(request).expect("plain JSON values");
        let json = c_string(&json, "the conversation")?;
        let mut out = std::ptr::null_mut();
        // SAFETY: live handle, NUL-terminated input, valid out-pointer.
        let status = unsafe { stove_chat_apply(self.raw.as_ptr(), json.as_ptr(), &mut out) };
        let json = take(status, out)?;
        serde_json::from_str(&json).map_err(|e| ChatError(format!("unexpected render result from the shim: {e}")))
    }
}

/// One tool call read from an answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub name: String,
    /// JSON text of the arguments (possibly unfinished while streaming).
    pub arguments: String,
    /// The id the model wrote, if its format has one; empty otherwise.
    pub id: String,
}

/// An answer read back: what it says, what it thought, what it called.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ParsedMessage {
    pub content: String,
    pub reasoning_content: String,
    pub tool_calls: Vec<ToolCall>,
}

/// Reads one answer in the format its prompt was rendered for.
pub struct ChatParser {
    raw: NonNull<RawParser>,
}

// SAFETY: a parser holds only its parameters and is used by one request's task at a time (`&self` calls do
// not mutate it: common_chat_parse takes the parameters by const reference).
unsafe impl Send for ChatParser {}
unsafe impl Sync for ChatParser {}

impl Drop for ChatParser {
    fn drop(&mut self) {
        // SAFETY: made by stove_chat_parser_new, freed once.
        unsafe { stove_chat_parser_free(self.raw.as_ptr()) }
    }
}

impl ChatParser {
    /// `spec` is [`Applied::parser`], with `reasoning_format` possibly changed by the request.
    pub fn new(spec: &Value) -> Result<Self, ChatError> {
        let json = c_string(&spec.to_string(), "the parser settings")?;
        let mut raw = std::ptr::null_mut();
        let mut error = std::ptr::null_mut();
        // SAFETY: NUL-terminated input, valid out-pointers.
        let status = unsafe { stove_chat_parser_new(json.as_ptr(), &mut raw, &mut error) };
        take(status, error)?;
        let raw = NonNull::new(raw).ok_or_else(|| ChatError("the answer parser could not be made".into()))?;
        Ok(ChatParser { raw })
    }

    /// The answer so far (`partial`: more may come) or whole.
    pub fn parse(&self, text: &str, partial: bool) -> Result<ParsedMessage, ChatError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: live handle; `text` is passed with its length (it may hold NULs); valid out-pointer.
        let status =
            unsafe { stove_chat_parse(self.raw.as_ptr(), text.as_ptr().cast(), text.len(), partial, &mut out) };
        let json = take(status, out)?;
        serde_json::from_str(&json).map_err(|e| ChatError(format!("unexpected parse result from the shim: {e}")))
    }
}

impl TemplateInfo {
    /// What the template supports, in words: `tool calls, parallel calls, thinking, system role`.
    pub fn abilities(&self) -> String {
        let has = |cap: &str| self.caps.get(cap).and_then(Value::as_bool).unwrap_or(false);
        let mut out = Vec::new();
        if has("supports_tool_calls") {
            out.push("tool calls");
        }
        if has("supports_tool_calls") && has("supports_parallel_tool_calls") {
            out.push("parallel calls");
        }
        if self.supports_thinking {
            out.push("thinking");
        }
        if has("supports_system_role") {
            out.push("system role");
        }
        if out.is_empty() {
            "plain chat".into()
        } else {
            out.join(", ")
        }
    }
}
