//! Anthropic's Messages request converted into OpenAI's chat shape, as llama-server's
//! `server_chat_convert_anthropic_to_oai` does: system blocks, turns of text, `tool_use` and `tool_result`
//! blocks, tools and `tool_choice`, stop sequences, thinking. Other blocks (images) pass on to the OpenAI
//! checks in `conversation.rs`, which refuse them by name, as they refuse anything else wrong.

use serde_json::{json, Map, Value};

use crate::server::error::ApiError;

/// Anthropic's request as an OpenAI chat completion request.
pub(super) fn to_openai(body: &Value, needs_max_tokens: bool) -> Result<Value, ApiError> {
    let Value::Object(body) = body else {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    };
    let mut messages = Vec::new();
    match body.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({ "role": "system", "content": text })),
        Some(Value::Array(blocks)) => {
            let text: String = blocks.iter().filter_map(|b| b.get("text").and_then(Value::as_str)).collect();
            messages.push(json!({ "role": "system", "content": text }));
        }
        Some(_) => return Err(ApiError::invalid("`system` must be text or a list of text blocks")),
    }
    let Some(Value::Array(turns)) = body.get("messages") else {
        return Err(ApiError::invalid("`messages` is missing; send a list of {\"role\", \"content\"}"));
    };
    for (i, turn) in turns.iter().enumerate() {
        messages.extend(turn_to_openai(i, turn)?);
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    match body.get("max_tokens") {
        Some(n) => {
            out.insert("max_tokens".into(), n.clone());
        }
        None if needs_max_tokens => {
            return Err(ApiError::invalid("`max_tokens` is missing; the Messages API needs the most tokens to write"))
        }
        None => {}
    }
    // `grammar` and `reasoning_format` are llama-server's extensions, taken here too.
    for field in ["temperature", "top_p", "top_k", "stream", "grammar", "reasoning_format"] {
        if let Some(value) = body.get(field) {
            out.insert(field.into(), value.clone());
        }
    }
    if let Some(stops) = body.get("stop_sequences") {
        out.insert("stop".into(), stops.clone());
    }
    if let Some(Value::Array(tools)) = body.get("tools") {
        let tools = tools.iter().enumerate().map(|(i, tool)| tool_to_openai(i, tool)).collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = body.get("tool_choice") {
        let openai_choice = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => json!({ "type": "function", "function": { "name": choice.get("name") } }),
            _ => return Err(ApiError::invalid("`tool_choice.type` must be \"auto\", \"any\", \"tool\" or \"none\"")),
        };
        out.insert("tool_choice".into(), openai_choice);
        if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
    }
    match body.get("thinking").and_then(|t| t.get("type")).and_then(Value::as_str) {
        Some("enabled") => {
            out.insert("chat_template_kwargs".into(), json!({ "enable_thinking": true }));
        }
        Some("disabled") => {
            out.insert("chat_template_kwargs".into(), json!({ "enable_thinking": false }));
        }
        _ => {}
    }
    Ok(Value::Object(out))
}

/// One Anthropic turn as OpenAI messages: tool results become `tool` messages (before the turn's text, so
/// each follows the call it answers), `tool_use` blocks an assistant's `tool_calls`, `thinking` its
/// `reasoning_content`.
fn turn_to_openai(i: usize, turn: &Value) -> Result<Vec<Value>, ApiError> {
    let role = turn.get("role").cloned().unwrap_or(Value::Null);
    let blocks = match turn.get("content") {
        Some(Value::Array(blocks)) => blocks,
        _ => return Ok(vec![turn.clone()]),
    };
    let mut out = Vec::new();
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    let mut thinking = String::new();
    for (j, block) in blocks.iter().enumerate() {
        match block.get("type").and_then(Value::as_str).unwrap_or("") {
            "text" => parts.push(json!({ "type": "text", "text": block.get("text") })),
            "thinking" => thinking.push_str(block.get("thinking").and_then(Value::as_str).unwrap_or("")),
            "redacted_thinking" => {}
            // A picture: base64 becomes a data: URL; a web address is passed on to be refused by the shared check.
            "image" => {
                let source = block.get("source").unwrap_or(&Value::Null);
                let url = match source.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source.get("media_type").and_then(Value::as_str).unwrap_or("image/png"),
                        source.get("data").and_then(Value::as_str).unwrap_or("")
                    ),
                    Some("url") => source.get("url").and_then(Value::as_str).unwrap_or("").to_string(),
                    _ => {
                        return Err(ApiError::invalid(format!(
                        "messages[{i}].content[{j}].source must be {{\"type\": \"base64\", \"media_type\", \"data\"}}"
                    )))
                    }
                };
                parts.push(json!({ "type": "image_url", "image_url": { "url": url } }));
            }
            "tool_use" => calls.push(json!({
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": block.get("input").unwrap_or(&json!({})).to_string(),
                },
            })),
            "tool_result" => {
                let content = match block.get("content") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(text)) => text.clone(),
                    Some(Value::Array(items)) => {
                        let mut text = String::new();
                        for item in items {
                            match item.get("type").and_then(Value::as_str) {
                                Some("text") => text.push_str(item.get("text").and_then(Value::as_str).unwrap_or("")),
                                kind => {
                                    return Err(ApiError::invalid(format!(
                                        "messages[{i}].content[{j}] holds a {} block; this model only reads text",
                                        kind.unwrap_or("untyped")
                                    )))
                                }
                            }
                        }
                        text
                    }
                    Some(_) => {
                        return Err(ApiError::invalid(format!(
                            "messages[{i}].content[{j}].content must be text or a list of text blocks"
                        )))
                    }
                };
                out.push(json!({ "role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content }));
            }
            // Documents and the rest are named in the error the shared check gives for a part it cannot read.
            other => parts.push(json!({ "type": other })),
        }
    }
    if !parts.is_empty() || !calls.is_empty() || !thinking.is_empty() {
        let mut message = json!({ "role": role, "content": parts });
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls);
        }
        if !thinking.is_empty() {
            message["reasoning_content"] = json!(thinking);
        }
        out.push(message);
    }
    Ok(out)
}

/// `{"name", "description", "input_schema"}` as an OpenAI function tool.
fn tool_to_openai(i: usize, tool: &Value) -> Result<Value, ApiError> {
    if let Some(kind) = tool.get("type").and_then(Value::as_str).filter(|k| *k != "custom") {
        return Err(ApiError::invalid(format!(
            "tools[{i}] is Anthropic's server tool \"{kind}\", which runs only at Anthropic; give custom tools \
             (name, description, input_schema)"
        )));
    }
    let mut function = json!({ "name": tool.get("name") });
    if let Some(description) = tool.get("description") {
        function["description"] = description.clone();
    }
    function["parameters"] = tool.get("input_schema").cloned().unwrap_or(json!({ "type": "object" }));
    Ok(json!({ "type": "function", "function": function }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_loop_becomes_openai_messages() {
        let body = json!({
            "max_tokens": 64, "system": [{"type": "text", "text": "Be brief."}], "stop_sequences": ["END"],
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true},
            "thinking": {"type": "disabled"},
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "Use the tool."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "text", "text": "Thanks"}]},
            ],
        });
        let openai = to_openai(&body, true).unwrap();
        let messages = openai["messages"].as_array().unwrap();
        assert_eq!(messages[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(messages[2]["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(messages[2]["reasoning_content"], "Use the tool.");
        assert_eq!(messages[3], json!({"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"}));
        assert_eq!(messages[4]["content"][0]["text"], "Thanks");
        assert_eq!(openai["stop"], json!(["END"]));
        assert_eq!(openai["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(openai["parallel_tool_calls"], false);
        assert_eq!(openai["chat_template_kwargs"]["enable_thinking"], false);
        assert_eq!(openai["tools"][0]["function"]["parameters"], json!({"type": "object"}));
    }

    #[test]
    fn anthropic_requests_are_checked() {
        let no_max = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert!(to_openai(&no_max, true).unwrap_err().message.contains("`max_tokens` is missing"));
        assert!(to_openai(&no_max, false).is_ok(), "count_tokens takes no max_tokens");
        let server_tool =
            json!({"max_tokens": 5, "messages": [], "tools": [{"type": "web_search_20250305", "name": "w"}]});
        assert!(to_openai(&server_tool, true).unwrap_err().message.contains("server tool"));
    }
}
