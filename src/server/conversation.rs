//! A conversation in OpenAI's chat shapes — messages, an assistant's tool calls, tool results, function tools,
//! `tool_choice`, reasoning settings — checked field by field and turned into an `engine::ChatPrompt`. The
//! Anthropic and Responses routes convert their requests into these shapes first, so every API gets the same
//! checks and the same errors naming the field.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::{pictures, sounds};
use crate::engine::{ChatPrompt, Media, Reasoning, ToolChoice};

/// Most messages in one chat request.
const MAX_MESSAGES: usize = 4096;
/// Most tools in one request.
const MAX_TOOLS: usize = 512;

/// The chat fields of a request body, as OpenAI's chat completions take them.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ChatFields {
    pub messages: Vec<Value>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    /// llama-server's: `auto` (thinking in `reasoning_content`), `none` (left in the answer), `deepseek`, ….
    pub reasoning_format: Option<String>,
    /// OpenAI's: `none` turns thinking off where the template can.
    pub reasoning_effort: Option<String>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
}

impl ChatFields {
    /// Checks every field; the error names the one that is wrong and says what is expected.
    pub(super) fn into_prompt(self) -> Result<ChatPrompt, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid("`messages` is empty; send at least one message"));
        }
        if self.messages.len() > MAX_MESSAGES {
            return Err(ApiError::invalid(format!(
                "`messages` has {} messages; at most {MAX_MESSAGES} are accepted",
                self.messages.len()
            )));
        }
        let mut call_ids = HashSet::new();
        let mut media = Vec::new();
        let messages = self
            .messages
            .into_iter()
            .enumerate()
            .map(|m| message(m, &mut call_ids, &mut media))
            .collect::<Result<_, _>>()?;
        let mut tools = self.tools.unwrap_or_default();
        if tools.len() > MAX_TOOLS {
            return Err(ApiError::invalid(format!(
                "`tools` has {} tools; at most {MAX_TOOLS} are accepted",
                tools.len()
            )));
        }
        let names = tools.iter().enumerate().map(|(i, tool)| check_tool(i, tool)).collect::<Result<Vec<_>, _>>()?;
        let tool_choice = match self.tool_choice {
            None => ToolChoice::Auto,
            Some(Value::String(choice)) => match choice.as_str() {
                "auto" => ToolChoice::Auto,
                "none" => ToolChoice::None,
                "required" | "any" => ToolChoice::Required,
                other => {
                    return Err(ApiError::invalid(format!(
                        "`tool_choice` is \"{other}\"; use \"auto\", \"none\", \"required\" or \
                         {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
                    )))
                }
            },
            Some(choice) => {
                let Some(name) = choice.pointer("/function/name").and_then(Value::as_str) else {
                    return Err(ApiError::invalid(
                        "`tool_choice` must be \"auto\", \"none\", \"required\" or \
                         {\"type\": \"function\", \"function\": {\"name\": …}}",
                    ));
                };
                let Some(at) = names.iter().position(|n| n == name) else {
                    return Err(ApiError::invalid(format!(
                        "`tool_choice` names the function \"{name}\", but `tools` has no function of that name"
                    )));
                };
                // A named function is a required call with only that tool offered.
                tools = vec![tools.swap_remove(at)];
                ToolChoice::Required
            }
        };
        if tool_choice == ToolChoice::Required && tools.is_empty() {
            return Err(ApiError::invalid("`tool_choice` requires a tool call, but `tools` is empty; give the tools"));
        }
        let mut reasoning = Reasoning::default();
        if let Some(format) = self.reasoning_format {
            if !matches!(format.as_str(), "none" | "auto" | "deepseek" | "deepseek-legacy") {
                return Err(ApiError::invalid(format!(
                    "`reasoning_format` is \"{format}\"; use \"auto\" (thinking in `reasoning_content`), \"none\" \
                     (left in the answer) or \"deepseek\""
                )));
            }
            reasoning.format = format;
        }
        let mut template_kwargs = self.chat_template_kwargs.unwrap_or_default();
        match template_kwargs.get("enable_thinking") {
            None => {}
            Some(Value::Bool(enabled)) => reasoning.enabled = Some(*enabled),
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "`chat_template_kwargs.enable_thinking` is {other}; it must be true or false"
                )))
            }
        }
        match self.reasoning_effort.as_deref() {
            None => {}
            Some("none") => reasoning.enabled = Some(false),
            Some(effort) => {
                template_kwargs.insert("reasoning_effort".into(), json!(effort));
            }
        }
        Ok(ChatPrompt {
            messages,
            tools,
            tool_choice,
            parallel_tool_calls: self.parallel_tool_calls,
            reasoning,
            template_kwargs,
            media,
        })
    }
}

/// One message, checked and put in the plain shape llama.cpp reads: `content` as text, with a marker where
/// each of a user message's pictures and sounds goes (they themselves are added to `media`).
fn message(
    (i, message): (usize, Value),
    call_ids: &mut HashSet<String>,
    media: &mut Vec<Media>,
) -> Result<Value, ApiError> {
    let bad = |what: String| ApiError::invalid(format!("messages[{i}]{what}"));
    let Value::Object(mut fields) = message else {
        return Err(bad(" is not an object; each message is {\"role\": …, \"content\": …}".into()));
    };
    let role = match fields.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("tool") => "tool",
        Some(other) => {
            return Err(bad(format!(".role is \"{other}\"; use \"system\", \"user\", \"assistant\" or \"tool\"")))
        }
        None => return Err(bad(".role is missing; use \"system\", \"user\", \"assistant\" or \"tool\"".into())),
    };
    let content = match fields.remove("content") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text),
        Some(Value::Array(parts)) => Some(text_of_parts(i, parts, (role == "user").then_some(media))?),
        Some(_) => return Err(bad(".content must be a string or a list of parts".into())),
    };
    let mut out = Map::new();
    out.insert("role".into(), json!(role));
    match role {
        "assistant" => {
            if let Some(calls) = fields.remove("tool_calls").filter(|c| !c.is_null()) {
                let Value::Array(calls) = calls else {
                    return Err(bad(".tool_calls must be a list".into()));
                };
                let calls = calls
                    .into_iter()
                    .enumerate()
                    .map(|(j, call)| assistant_call(i, j, call, call_ids))
                    .collect::<Result<Vec<_>, _>>()?;
                if !calls.is_empty() {
                    out.insert("tool_calls".into(), Value::Array(calls));
                }
            }
            if let Some(Value::String(thinking)) = fields.remove("reasoning_content") {
                out.insert("reasoning_content".into(), json!(thinking));
            }
            let has_calls = out.contains_key("tool_calls");
            out.insert(
                "content".into(),
                content.map_or(if has_calls { Value::Null } else { json!("") }, Value::String),
            );
        }
        "tool" => {
            let id = match fields.remove("tool_call_id") {
                Some(Value::String(id)) => id,
                _ => {
                    return Err(bad(".tool_call_id is missing; a tool message answers one tool call by its id".into()))
                }
            };
            if !call_ids.contains(&id) {
                return Err(bad(format!(
                    ".tool_call_id is \"{id}\", which no earlier assistant message's `tool_calls` has"
                )));
            }
            out.insert("tool_call_id".into(), json!(id));
            if let Some(Value::String(name)) = fields.remove("name") {
                out.insert("name".into(), json!(name));
            }
            out.insert("content".into(), json!(content.unwrap_or_default()));
        }
        _ => {
            out.insert("content".into(), json!(content.unwrap_or_default()));
        }
    }
    Ok(Value::Object(out))
}

/// The text of a list of content parts. A user message's pictures (`image_url` parts, `input_image` in the
/// Responses API) and sounds (`input_audio`) are read into `media`, each leaving a marker in the text where it
/// goes.
fn text_of_parts(i: usize, parts: Vec<Value>, mut media: Option<&mut Vec<Media>>) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.into_iter().enumerate() {
        let field = format!("messages[{i}].content[{j}]");
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        match (kind, part.get("text").and_then(Value::as_str)) {
            ("text" | "input_text" | "output_text", Some(t)) => text.push_str(t),
            ("image_url" | "input_image", _) => {
                let Some(media) = media.as_deref_mut() else {
                    return Err(ApiError::invalid(format!("{field} is a picture; pictures go in user messages")));
                };
                // OpenAI's {"image_url": {"url": …}}, the Responses API's {"image_url": "…"}.
                let url = match part.get("image_url") {
                    Some(Value::String(url)) => Some(url.as_str()),
                    Some(object) => object.get("url").and_then(Value::as_str),
                    None => None,
                };
                let Some(url) = url else {
                    return Err(ApiError::invalid(format!(
                        "{field}.image_url.url is missing; it holds the picture as a data: URL"
                    )));
                };
                media.push(Media::Picture(pictures::from_url(&field, url)?));
                text.push_str(crate::llama::vision::marker());
            }
            ("input_audio", _) => {
                let Some(media) = media.as_deref_mut() else {
                    return Err(ApiError::invalid(format!("{field} is a sound; sounds go in user messages")));
                };
                media.push(Media::Sound(sounds::from_part(&field, &part)?));
                text.push_str(crate::llama::vision::marker());
            }
            (kind, _) => {
                return Err(ApiError::invalid(format!(
                    "{field} is a \"{kind}\" part; stove reads \"text\", \"image_url\" and \"input_audio\" parts"
                )))
            }
        }
    }
    Ok(text)
}

/// An earlier assistant message's tool call: `{"id", "type": "function", "function": {"name", "arguments"}}`.
fn assistant_call(i: usize, j: usize, call: Value, call_ids: &mut HashSet<String>) -> Result<Value, ApiError> {
    let field = format!("messages[{i}].tool_calls[{j}]");
    let name = call.pointer("/function/name").and_then(Value::as_str).filter(|n| !n.is_empty());
    let Some(name) = name else {
        return Err(ApiError::invalid(format!("{field}.function.name is missing")));
    };
    // OpenAI sends arguments as JSON text; some clients send the object itself.
    let arguments = match call.pointer("/function/arguments") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(Value::String(text)) => {
            if serde_json::from_str::<Value>(text).is_err() {
                return Err(ApiError::invalid(format!("{field}.function.arguments is not JSON: {text}")));
            }
            text.clone()
        }
        Some(object @ Value::Object(_)) => object.to_string(),
        Some(other) => {
            return Err(ApiError::invalid(format!("{field}.function.arguments must be JSON text, not {other}")))
        }
    };
    let id = call.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
    if !id.is_empty() {
        call_ids.insert(id.clone());
    }
    Ok(json!({ "id": id, "type": "function", "function": { "name": name, "arguments": arguments } }))
}

/// A function tool: a name OpenAI would accept and parameters that are a JSON schema llama.cpp can follow.
/// Returns its name.
fn check_tool(i: usize, tool: &Value) -> Result<String, ApiError> {
    let field = format!("tools[{i}]");
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "{field}.type is \"{other}\"; only \"function\" tools are supported"
            )))
        }
        None => return Err(ApiError::invalid(format!("{field}.type is missing; use \"function\""))),
    }
    let Some(function) = tool.get("function").filter(|f| f.is_object()) else {
        return Err(ApiError::invalid(format!("{field}.function is missing; give {{\"name\", \"parameters\"}}")));
    };
    let name = match function.get("name") {
        Some(Value::String(name)) if !name.is_empty() => name,
        _ => return Err(ApiError::invalid(format!("{field}.function.name is missing; every function needs a name"))),
    };
    if name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')) {
        return Err(ApiError::invalid(format!(
            "{field}.function.name \"{name}\" must be 1 to 64 letters, digits, '_', '-' or '.'"
        )));
    }
    match function.get("parameters") {
        None | Some(Value::Null) => {}
        Some(schema @ Value::Object(_)) => {
            llama_cpp_2::json_schema_to_grammar(&schema.to_string()).map_err(|e| {
                ApiError::invalid(format!("{field}.function.parameters is not a JSON schema llama.cpp can follow: {e}"))
            })?;
        }
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "{field}.function.parameters must be a JSON schema object, not {other}"
            )))
        }
    }
    Ok(name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(body: Value) -> Result<ChatPrompt, ApiError> {
        serde_json::from_value::<ChatFields>(body).unwrap().into_prompt()
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "get_weather", "parameters":
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
    }

    #[test]
    fn bad_tool_input_names_the_field() {
        let user = json!({"role": "user", "content": "hi"});
        let cases = [
            (json!({"messages": [user], "tools": [{"type": "function", "function": {}}]}), "tools[0].function.name"),
            (
                json!({"messages": [user], "tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}),
                "tools[0].function.parameters must be a JSON schema",
            ),
            (
                json!({"messages": [user], "tools": [{"type": "function", "function": {"name": "f",
                    "parameters": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}}]}),
                "tools[0].function.parameters is not a JSON schema",
            ),
            (json!({"messages": [user], "tools": [{"type": "retrieval"}]}), "tools[0].type is \"retrieval\""),
            (
                json!({"messages": [user], "tools": [weather()], "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "names the function \"nope\"",
            ),
            (json!({"messages": [user], "tool_choice": "required"}), "`tools` is empty"),
            (json!({"messages": [user], "tools": [weather()], "tool_choice": "always"}), "`tool_choice` is \"always\""),
            (
                json!({"messages": [user, {"role": "tool", "tool_call_id": "call_9", "content": "sunny"}]}),
                "messages[1].tool_call_id is \"call_9\"",
            ),
            (json!({"messages": [user, {"role": "tool", "content": "sunny"}]}), "messages[1].tool_call_id is missing"),
            (
                json!({"messages": [user, {"role": "assistant", "tool_calls": [{"id": "a", "function": {"arguments": "{}"}}]}]}),
                "messages[1].tool_calls[0].function.name is missing",
            ),
            (json!({"messages": [user], "reasoning_format": "verbose"}), "`reasoning_format` is \"verbose\""),
            (
                json!({"messages": [user], "chat_template_kwargs": {"enable_thinking": "no"}}),
                "enable_thinking` is \"no\"",
            ),
        ];
        for (body, expected) in cases {
            let error = prompt(body.clone()).err().unwrap_or_else(|| panic!("{body} was accepted"));
            assert!(error.message.contains(expected), "{body}: {}", error.message);
        }
    }

    #[test]
    fn a_tool_loop_is_kept_in_openai_shapes() {
        let chat = prompt(json!({"messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
            "tools": [weather(), {"type": "function", "function": {"name": "other"}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "chat_template_kwargs": {"enable_thinking": false}}))
        .unwrap();
        assert_eq!(chat.messages[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(chat.messages[1]["content"], "Weather in Paris?");
        assert_eq!(chat.messages[2]["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(chat.messages[2]["content"], Value::Null);
        assert_eq!(chat.messages[3], json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"}));
        assert_eq!(chat.tool_choice, ToolChoice::Required);
        assert_eq!(chat.tools.len(), 1, "a named function leaves only that tool");
        assert_eq!(chat.reasoning.enabled, Some(false));
    }
}
