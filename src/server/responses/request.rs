//! A Responses request converted into a chat completion request, checked afterwards by the same code as
//! `/v1/chat/completions`: `input` (text, or a list of messages, function calls and their outputs),
//! `instructions`, function tools and `tool_choice`, `max_output_tokens`, reasoning. What the route cannot do
//! (stored conversations, hosted tools) is refused by name.

use serde_json::{json, Map, Value};

use crate::server::error::ApiError;

/// A Responses request as a chat completion request.
pub(super) fn to_chat(body: &Value) -> Result<Value, ApiError> {
    let Value::Object(body) = body else {
        return Err(ApiError::invalid("the request body must be a JSON object"));
    };
    if body.get("previous_response_id").is_some_and(|id| !id.is_null()) {
        return Err(ApiError::invalid(
            "`previous_response_id` is not supported: stove keeps no conversations; send the whole conversation \
             in `input`",
        ));
    }
    let mut messages: Vec<Value> = Vec::new();
    if let Some(instructions) = body.get("instructions").filter(|i| !i.is_null()) {
        messages.push(json!({ "role": "system", "content": instructions }));
    }
    match body.get("input") {
        Some(Value::String(text)) => messages.push(json!({ "role": "user", "content": text })),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                input_item(i, item, &mut messages)?;
            }
        }
        _ => return Err(ApiError::invalid("`input` is missing; give text or a list of input items")),
    }
    let mut out = Map::new();
    out.insert("messages".into(), Value::Array(messages));
    for (from, to) in [
        ("model", "model"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("stream", "stream"),
        ("max_output_tokens", "max_tokens"),
        ("parallel_tool_calls", "parallel_tool_calls"),
    ] {
        if let Some(value) = body.get(from).filter(|v| !v.is_null()) {
            out.insert(to.into(), value.clone());
        }
    }
    if let Some(Value::Array(tools)) = body.get("tools") {
        let tools = tools.iter().enumerate().map(|(i, tool)| tool_to_chat(i, tool)).collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), Value::Array(tools));
    }
    match body.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(choice)) => {
            out.insert("tool_choice".into(), json!(choice));
        }
        Some(choice) => {
            out.insert("tool_choice".into(), json!({ "type": "function", "function": { "name": choice.get("name") } }));
        }
    }
    if let Some(effort) = body.get("reasoning").and_then(|r| r.get("effort")).filter(|e| !e.is_null()) {
        out.insert("reasoning_effort".into(), effort.clone());
    }
    Ok(Value::Object(out))
}

/// One input item: a message, a function call the model made earlier (merged into the assistant message
/// before it), or a function call's output.
fn input_item(i: usize, item: &Value, messages: &mut Vec<Value>) -> Result<(), ApiError> {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").cloned().unwrap_or(Value::Null);
            let content = match item.get("content") {
                Some(Value::Array(parts)) => Value::Array(
                    parts
                        .iter()
                        .map(|part| match part.get("type").and_then(Value::as_str) {
                            Some("input_text" | "output_text") => json!({ "type": "text", "text": part.get("text") }),
                            // The shared check names a part it cannot read.
                            other => json!({ "type": other.unwrap_or("untyped") }),
                        })
                        .collect(),
                ),
                Some(other) => other.clone(),
                None => Value::Null,
            };
            messages.push(json!({ "role": role, "content": content }));
        }
        "function_call" => {
            let call = json!({
                "id": item.get("call_id"),
                "type": "function",
                "function": { "name": item.get("name"), "arguments": item.get("arguments") },
            });
            let previous_asks = messages.last().is_some_and(|m| m["role"] == "assistant");
            if previous_asks {
                let last = messages.last_mut().expect("checked");
                match last.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => last["tool_calls"] = json!([call]),
                }
            } else {
                messages.push(json!({ "role": "assistant", "content": null, "tool_calls": [call] }));
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            messages.push(json!({ "role": "tool", "tool_call_id": item.get("call_id"), "content": output }));
        }
        // Earlier reasoning is not sent back to the model (templates drop it from past turns).
        "reasoning" => {}
        other => {
            return Err(ApiError::invalid(format!(
                "input[{i}] is a \"{other}\" item; stove takes messages, function_call and function_call_output items"
            )))
        }
    }
    Ok(())
}

/// `{"type": "function", "name", "description", "parameters"}` as a chat completion tool.
fn tool_to_chat(i: usize, tool: &Value) -> Result<Value, ApiError> {
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        other => {
            return Err(ApiError::invalid(format!(
                "tools[{i}] is a \"{}\" tool; only \"function\" tools run here (the built-in ones run at OpenAI)",
                other.unwrap_or("untyped")
            )))
        }
    }
    let mut function = json!({ "name": tool.get("name") });
    for field in ["description", "parameters"] {
        if let Some(value) = tool.get(field).filter(|v| !v.is_null()) {
            function[field] = value.clone();
        }
    }
    Ok(json!({ "type": "function", "function": function }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_call_loop_becomes_chat_messages() {
        let chat = to_chat(&json!({
            "instructions": "Be brief.", "max_output_tokens": 50, "reasoning": {"effort": "none"},
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                {"role": "user", "content": [{"type": "input_text", "text": "Thanks"}]},
            ],
        }))
        .unwrap();
        let messages = chat["messages"].as_array().unwrap();
        assert_eq!(messages[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(messages[2]["tool_calls"][0]["id"], "call_1");
        assert_eq!(messages[3], json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"}));
        assert_eq!(messages[4]["content"][0], json!({"type": "text", "text": "Thanks"}));
        assert_eq!(chat["max_tokens"], 50);
        assert_eq!(chat["tool_choice"]["function"]["name"], "get_weather");
        assert_eq!(chat["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(chat["reasoning_effort"], "none");
    }

    #[test]
    fn unsupported_inputs_are_refused() {
        let stateful = json!({"input": "hi", "previous_response_id": "resp_1"});
        assert!(to_chat(&stateful).unwrap_err().message.contains("previous_response_id"));
        let web = json!({"input": "hi", "tools": [{"type": "web_search"}]});
        assert!(to_chat(&web).unwrap_err().message.contains("\"web_search\" tool"));
        assert!(to_chat(&json!({})).unwrap_err().message.contains("`input` is missing"));
    }
}
