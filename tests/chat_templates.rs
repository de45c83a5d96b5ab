//! The chat layer with real published templates on the default weights: llama.cpp's own `models/templates`
//! (from the sdist `scripts/llama-cpp-tools` fetches), given with `--chat-template-file` and also written into a
//! copy of the model's GGUF (`tokenizer.chat_template`, rewritten with the `gguf` package), so both paths run.
//!
//! - For Llama 3.1, Qwen 2.5 (Hermes-style calls), Mistral Nemo, gpt-oss and Qwen3 (`<think>`), the prompt stove
//!   renders for the same messages and tools is byte-identical to what llama-server renders (`/apply-template`).
//! - With each, a required tool call comes back as `tool_calls` with `finish_reason: "tool_calls"`.
//! - Thinking goes to `reasoning_content` (whole and streamed), stays inline with `reasoning_format: "none"`.
//! - The official `openai` and `anthropic` clients run whole tool loops (tests/tool_clients.py).
//! - Bad tool input, a template that fails to render, and tools for a template that does not show them are 400s
//!   naming what was wrong; the server keeps serving.
//! - `/stove/info` and `stove info` say which template is in use and what it supports.
//! - The chat layer's own timings (`template_ms`, `parse_ms`) come with every chat answer.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{client, model, read_stream, scratch, Server};
use serde_json::{json, Value};

/// The templates the issue names, by their file in llama.cpp's `models/templates`.
const TEMPLATES: [&str; 5] = [
    "meta-llama-Llama-3.1-8B-Instruct",
    "Qwen-Qwen2.5-7B-Instruct",
    "mistralai-Mistral-Nemo-Instruct-2407",
    "openai-gpt-oss-120b",
    "Qwen-Qwen3-0.6B",
];

fn tools_script(args: &[&str]) -> Vec<PathBuf> {
    let output = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/llama-cpp-tools"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/llama-cpp-tools");
    assert!(output.status.success(), "scripts/llama-cpp-tools {args:?} failed");
    String::from_utf8(output.stdout).unwrap().lines().map(PathBuf::from).collect()
}

fn template(name: &str) -> PathBuf {
    static SOURCE: OnceLock<PathBuf> = OnceLock::new();
    let source = SOURCE.get_or_init(|| tools_script(&["--source"]).remove(0));
    source.join("models/templates").join(format!("{name}.jinja"))
}

fn llama_server() -> &'static Path {
    static SERVER: OnceLock<PathBuf> = OnceLock::new();
    SERVER.get_or_init(|| tools_script(&["llama-server"]).remove(0))
}

/// A copy of the default model whose own `tokenizer.chat_template` is `template`.
fn model_with_template(template: &Path) -> PathBuf {
    let out = scratch().join(format!("{}.gguf", template.file_stem().unwrap().to_string_lossy()));
    let status = Command::new(common::python())
        .args(["-m", "gguf.scripts.gguf_new_metadata", "--force", "--chat-template-file"])
        .arg(template)
        .arg(model())
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run gguf_new_metadata");
    assert!(status.success(), "gguf_new_metadata could not write {}", out.display());
    out
}

/// llama-server on the default model with `template`, killed on drop.
struct LlamaServer {
    child: Child,
    url: String,
}

impl LlamaServer {
    fn start(template: &Path) -> LlamaServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(llama_server())
            .args(["--jinja", "--chat-template-file"])
            .arg(template)
            .arg("-m")
            .arg(model())
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "-c", "1024", "-t", "1", "--no-webui"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start llama-server");
        let server = LlamaServer { child, url: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(120);
        while !client().get(format!("{}/health", server.url)).send().is_ok_and(|r| r.status() == 200) {
            assert!(Instant::now() < deadline, "llama-server did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather", "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
}

/// A conversation that exercises what templates differ on: a system prompt, a past tool call and its result
/// (its id is nine letters and digits, as Mistral's template demands).
fn conversation() -> Value {
    json!({
        "messages": [
            {"role": "system", "content": "You check the weather."},
            {"role": "user", "content": "Weather in Lyon?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "a1b2c3d4e", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Lyon\"}"}}]},
            {"role": "tool", "tool_call_id": "a1b2c3d4e", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny in Lyon."},
            {"role": "user", "content": "And in Paris?"},
        ],
        "tools": [weather_tool()],
    })
}

fn post(url: &str, path: &str, body: &Value) -> (u16, Value) {
    let response = client().post(format!("{url}{path}")).json(body).send().expect("POST");
    (response.status().as_u16(), response.json().expect("a JSON body"))
}

fn rendered(url: &str, body: &Value) -> String {
    let (status, answer) = post(url, "/apply-template", body);
    assert_eq!(status, 200, "{answer}");
    answer["prompt"].as_str().expect("a prompt").to_string()
}

/// A required call with `server`'s template parses into `tool_calls`.
fn assert_required_call(server: &Server, name: &str) {
    let mut body = json!({"messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [weather_tool()], "tool_choice": "required", "parallel_tool_calls": false, "temperature": 0,
        "max_tokens": 150});
    let (status, answer) = server.chat(body.clone());
    assert_eq!(status, 200, "{name}: {answer}");
    let choice = &answer["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{name}: {answer}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(choice["message"]["tool_calls"].as_array().unwrap().len(), 1, "one call, as asked: {answer}");
    assert_eq!(call["function"]["name"], "get_weather", "{name}: {answer}");
    assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()), "{name}: {answer}");
    let arguments: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(arguments["city"].is_string(), "{name}: {arguments}");

    // Streamed, the pieces of the call add up to the same call.
    body["stream"] = json!(true);
    let response = client().post(format!("{}/v1/chat/completions", server.url)).json(&body).send().unwrap();
    let (_, chunks) = read_stream(response);
    let mut streamed_name = String::new();
    let mut streamed_arguments = String::new();
    for chunk in &chunks {
        for call in chunk["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            assert_eq!(call["index"], 0, "{name}: {chunk}");
            streamed_name.push_str(call["function"]["name"].as_str().unwrap_or_default());
            streamed_arguments.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(streamed_name, "get_weather", "{name}");
    // The same call: the same arguments once parsed (a slot that reused the cache may differ in whitespace).
    let streamed_arguments: Value = serde_json::from_str(&streamed_arguments).expect("the pieces add up to JSON");
    assert_eq!(streamed_arguments, arguments, "{name}");
    let last = chunks.iter().rev().find(|c| !c["choices"][0]["finish_reason"].is_null()).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls", "{name}");
}

#[test]
fn published_templates_render_as_llama_server_does_and_their_tool_calls_parse() {
    for name in TEMPLATES {
        let file = template(name);
        let reference = rendered(&LlamaServer::start(&file).url, &conversation());
        let model = model();
        let args =
            ["--model", model.to_str().unwrap(), "--ctx-size", "2048", "--chat-template-file", file.to_str().unwrap()];
        let by_file = Server::start(&common::engine(), &args);
        assert_eq!(rendered(&by_file.url, &conversation()), reference, "{name} from --chat-template-file");
        assert_required_call(&by_file, name);
        drop(by_file);

        let embedded = model_with_template(&file);
        let own = Server::start(&common::engine(), &["--model", embedded.to_str().unwrap(), "--ctx-size", "2048"]);
        assert_eq!(rendered(&own.url, &conversation()), reference, "{name} from the GGUF's own template");
        let info: Value = client().get(format!("{}/stove/info", own.url)).send().unwrap().json().unwrap();
        assert_eq!(info["chat_template"]["origin"], "model", "{info}");
        assert_eq!(info["chat_template"]["caps"]["supports_tool_calls"], true, "{name}: {info}");
        let described = common::run(&["info", embedded.to_str().unwrap()]);
        let described = String::from_utf8_lossy(&described.stdout);
        assert!(described.contains("chat template the model's own: tool calls"), "{name}: {described}");
    }
}

/// A server whose template is `name`, with a key.
fn serve_with(name: &str, extra: &[&str]) -> Server {
    let model = model();
    let file = template(name);
    let mut args =
        vec!["--model", model.to_str().unwrap(), "--ctx-size", "2048", "--chat-template-file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&common::engine(), &args)
}

#[test]
fn the_official_clients_run_tool_loops() {
    let server =
        serve_with("Qwen-Qwen2.5-7B-Instruct", &["--api-key", "kitchen-key", "--parallel", "2", "--temperature", "0"]);
    let output = Command::new(common::python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tool_clients.py"))
        .arg(&server.url)
        .arg("kitchen-key")
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "the clients failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
}

#[test]
fn thinking_goes_to_reasoning_content() {
    let server = serve_with("Qwen-Qwen3-0.6B", &[]);
    // The grammar makes the 135M model write exactly what a reasoning model writes.
    let body = json!({"messages": [{"role": "user", "content": "Capital of France?"}], "temperature": 0,
        "max_tokens": 60, "grammar": "root ::= \"<think>\\nIt is Paris.\\n</think>\\n\\nParis.\""});
    let (status, answer) = server.chat(body.clone());
    assert_eq!(status, 200, "{answer}");
    let message = &answer["choices"][0]["message"];
    // As llama-server reads it: the thinking without its tags (the newline before `</think>` stays).
    assert_eq!(message["reasoning_content"], "It is Paris.\n", "{answer}");
    assert_eq!(message["content"], "Paris.", "{answer}");
    let timings = &answer["timings"];
    assert!(timings["template_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{timings}");
    assert!(timings["parse_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{timings}");

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let response = client().post(format!("{}/v1/chat/completions", server.url)).json(&streamed).send().unwrap();
    let (content, chunks) = read_stream(response);
    let thinking: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str()).collect();
    assert_eq!((thinking.as_str(), content.as_str()), ("It is Paris.\n", "Paris."), "{chunks:?}");

    let mut inline = body;
    inline["reasoning_format"] = json!("none");
    let (_, answer) = server.chat(inline);
    let message = &answer["choices"][0]["message"];
    assert_eq!(message["content"], "<think>\nIt is Paris.\n</think>\n\nParis.", "{answer}");
    assert!(message.get("reasoning_content").is_none(), "{answer}");

    // Anthropic's shape: a thinking block, then the text.
    let (status, answer) = post(
        &server.url,
        "/v1/messages",
        &json!({"max_tokens": 60, "messages": [{"role": "user", "content": "Capital of France?"}],
            "grammar": "root ::= \"<think>\\nIt is Paris.\\n</think>\\n\\nParis.\""}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["content"][0]["type"], "thinking", "{answer}");
    assert_eq!(answer["content"][0]["thinking"], "It is Paris.\n", "{answer}");
    assert_eq!(answer["content"][1], json!({"type": "text", "text": "Paris."}), "{answer}");

    // A stop sequence of the request ends it as Anthropic says: `stop_sequence`, naming which.
    let (status, answer) = post(
        &server.url,
        "/v1/messages",
        &json!({"max_tokens": 60, "messages": [{"role": "user", "content": "A soup?"}], "stop_sequences": ["END"],
            "grammar": "root ::= \"Tomato soup. END and more\""}),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["stop_reason"].as_str(), answer["stop_sequence"].as_str()),
        (Some("stop_sequence"), Some("END"))
    );
    assert!(answer["content"][0]["text"].as_str().unwrap().starts_with("Tomato soup."), "{answer}");
}

#[test]
fn bad_chat_input_is_refused_by_field_and_the_server_keeps_serving() {
    let server = serve_with("Qwen-Qwen2.5-7B-Instruct", &[]);
    let user = json!({"role": "user", "content": "hi"});
    let cases = [
        (
            json!({"messages": [user], "tools": [{"type": "function", "function": {"description": "x"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"messages": [user], "tools": [{"type": "function", "function": {"name": "f", "parameters": "an object"}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"messages": [user], "tools": [weather_tool()], "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "`tool_choice` names the function \"g\"",
        ),
        (
            json!({"messages": [user, {"role": "tool", "tool_call_id": "x", "content": "1"}]}),
            "messages[1].tool_call_id",
        ),
        (
            json!({"messages": [user], "tools": [weather_tool()], "grammar": "root ::= \"a\""}),
            "cannot be combined with tools",
        ),
        (json!({"messages": [user], "chat_template_kwargs": {"enable_thinking": 1}}), "enable_thinking"),
    ];
    for (body, expected) in cases {
        let (status, answer) = server.chat(body.clone());
        assert_eq!(status, 400, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{body}: {message}");
    }
    let (status, answer) = post(
        &server.url,
        "/v1/messages",
        &json!({"max_tokens": 5, "messages": [user], "tools": [{"type": "bash_20250124", "name": "bash"}]}),
    );
    assert_eq!((status, answer["type"].as_str()), (400, Some("error")), "{answer}");
    assert_eq!(answer["error"]["type"], "invalid_request_error", "{answer}");
    // The guard's refusals are Anthropic-shaped on Anthropic's routes too.
    let refused = client()
        .post(format!("{}/v1/messages", server.url))
        .header("host", "attacker.example")
        .json(&json!({"max_tokens": 5, "messages": [user]}))
        .send()
        .unwrap();
    assert_eq!(refused.status(), 403);
    let refused: Value = refused.json().unwrap();
    assert_eq!(
        (refused["type"].as_str(), refused["error"]["type"].as_str()),
        (Some("error"), Some("permission_error"))
    );
    let (status, _) = server.chat(json!({"messages": [user], "max_tokens": 3}));
    assert_eq!(status, 200, "the server still answers");
}

#[test]
fn a_template_that_fails_to_render_is_a_400_naming_the_error() {
    let broken = scratch().join("broken.jinja");
    std::fs::write(
        &broken,
        "{% for m in messages %}{% if m.role == 'user' and m.content == 'boom' %}{{ raise_exception('no boom here') }}\
         {% endif %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:",
    )
    .unwrap();
    let model = model();
    let server = Server::start(
        &common::engine(),
        &["--model", model.to_str().unwrap(), "--chat-template-file", broken.to_str().unwrap()],
    );
    let (status, answer) = server.chat(json!({"messages": [{"role": "user", "content": "boom"}]}));
    assert_eq!(status, 400, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("chat template") && message.contains("no boom here"), "{message}");
    let (status, answer) = server.chat(json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}));
    assert_eq!(status, 200, "the server still answers: {answer}");
    let info: Value = client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap();
    assert_eq!(info["chat_template"]["origin"], "file", "{info}");
    // This template never shows tools to the model: tools are refused, not silently dropped.
    let (status, answer) =
        server.chat(json!({"messages": [{"role": "user", "content": "hi"}], "tools": [weather_tool()]}));
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().unwrap().contains("does not show tools"), "{answer}");
    let (status, _) = server.chat(
        json!({"messages": [{"role": "user", "content": "hi"}], "tools": [weather_tool()], "tool_choice": "none", "max_tokens": 2}),
    );
    assert_eq!(status, 200, "with tool_choice none the tools are simply not used");

    // A template that does not even parse stops the start with the reason.
    let unparsable = scratch().join("unparsable.jinja");
    std::fs::write(&unparsable, "{% for m in messages %}{{ m.content }").unwrap();
    let output = common::run(&[
        "chat",
        "--model",
        model.to_str().unwrap(),
        "--chat-template-file",
        unparsable.to_str().unwrap(),
        "-p",
        "hi",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("chat template"), "{stderr}");

    // An empty one is named as such (llama.cpp would otherwise take the model's own, or stop the process).
    let empty = scratch().join("empty.jinja");
    std::fs::write(&empty, "\n").unwrap();
    let output = common::run(&[
        "chat",
        "--model",
        model.to_str().unwrap(),
        "--chat-template-file",
        empty.to_str().unwrap(),
        "-p",
        "hi",
    ]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("is empty"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out = scratch().join("empty-template.stove");
    let output = common::pack_output(&out, &["--chat-template", empty.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(1),
        "a clear error, not an abort: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_bundle_carries_its_own_template_under_its_manifest() {
    let file = template("Qwen-Qwen2.5-7B-Instruct");
    let packed = scratch().join("qwen-template.stove");
    common::pack(&packed, &["--chat-template", file.to_str().unwrap(), "--", "--ctx-size", "2048"]);
    let verified = common::run(&["verify", packed.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success() && report.contains("chat template"), "{report}");

    let from_bundle = Server::start(&packed, &[]);
    let info: Value = client().get(format!("{}/stove/info", from_bundle.url)).send().unwrap().json().unwrap();
    assert_eq!(info["chat_template"]["origin"], "bundle", "{info}");
    let by_file = serve_with("Qwen-Qwen2.5-7B-Instruct", &[]);
    assert_eq!(rendered(&from_bundle.url, &conversation()), rendered(&by_file.url, &conversation()));
    let described = common::run(&["info", packed.to_str().unwrap()]);
    let described = String::from_utf8_lossy(&described.stdout);
    assert!(described.contains("chat template the bundle's own (pack --chat-template): tool calls"), "{described}");

    // A changed template is found by verify, like any other part.
    let mut bytes = std::fs::read(&packed).unwrap();
    let needle = b"You are Qwen, created by Alibaba Cloud";
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("the template is stored as text");
    bytes[at] = b'Y' ^ 0x20;
    let tampered = scratch().join("qwen-template-tampered.stove");
    std::fs::write(&tampered, &bytes).unwrap();
    let verified = common::run(&["verify", tampered.to_str().unwrap()]);
    assert!(!verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));

    // A template llama.cpp cannot read is refused when packing, not when the bundle starts.
    let unparsable = scratch().join("unparsable-for-pack.jinja");
    std::fs::write(&unparsable, "{% for m in messages %}{{ m.content }").unwrap();
    let out = scratch().join("never.stove");
    let refused = common::pack_output(&out, &["--chat-template", unparsable.to_str().unwrap()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("llama.cpp cannot read the chat template"), "{stderr}");
    assert!(!out.exists());
}
