//! The server under load and under attack: parallel slots, the queue, cancellation, prompt caching, the
//! OpenAI surface beyond chat (completions, JSON output, logprobs, metrics), and the guard (API key, Host,
//! Origin, limits).
//!
//! Checks: 8 concurrent streams all end with [DONE] and give the same answers as one at a time; a client that
//! leaves frees its slot and decoding stops, also in the middle of reading a long prompt; past the queue the answer is 503 with Retry-After; a follow-up
//! turn reuses the cached prompt; a conversation that fills its context ends with "length"; JSON-schema
//! output parses; embeddings are unit vectors, nearer for nearer texts, share the engine with chats, stop when
//! their client leaves and have a per-request budget; every bad input in a table gets its 4xx with a useful message and the server keeps serving;
//! listening beyond loopback needs a key; an allowed origin gets CORS headers; 600 idle sockets do not keep a
//! client with a key out; behind a trusted TLS proxy the page's https origin is its own.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{bundle, client, read_stream, Server};
use serde_json::{json, Value};

fn ask(content: &str, max_tokens: u32) -> Value {
    json!({ "messages": [{ "role": "user", "content": content }], "temperature": 0, "max_tokens": max_tokens })
}

fn post(server: &Server, path: &str, body: &Value) -> reqwest::blocking::Response {
    client().post(format!("{}{path}", server.url)).json(body).send().expect("POST")
}

/// One value from `/metrics`.
fn metric(server: &Server, name: &str) -> f64 {
    let text = client().get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Polls `condition` until it holds; fails after a minute.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn eight_concurrent_streams_get_the_answers_they_would_get_alone() {
    let server = Server::start(bundle(), &["--parallel", "4"]);
    let questions: Vec<String> = (2..10).map(|n| format!("Name {n} animals that live in the sea.")).collect();
    let alone: Vec<String> = questions
        .iter()
        .map(|q| {
            let (status, body) = server.chat(ask(q, 24));
            assert_eq!(status, 200, "{body}");
            body["choices"][0]["message"]["content"].as_str().unwrap().to_string()
        })
        .collect();

    let together: Vec<(String, Vec<Value>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = questions
            .iter()
            .map(|q| {
                let server = &server;
                scope.spawn(move || {
                    let mut body = ask(q, 24);
                    body["stream"] = json!(true);
                    body["stream_options"] = json!({ "include_usage": true });
                    read_stream(post(server, "/v1/chat/completions", &body))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((question, expected), (text, chunks)) in questions.iter().zip(&alone).zip(&together) {
        assert!(!text.trim().is_empty(), "{question}");
        assert_eq!(text, expected, "{question}: batched decoding must not change a greedy answer");
        let usage = &chunks.last().unwrap()["usage"];
        assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{question}");
    }
    assert_eq!(metric(&server, "stove_slots"), 4.0);
    assert!(metric(&server, "stove_requests_finished_total") >= 16.0);
    // Batching happened: some decode calls carried several conversations' tokens.
    assert!(metric(&server, "stove_decode_tokens_total") > metric(&server, "stove_decode_calls_total"));
}

#[test]
fn a_client_that_leaves_during_a_long_prompt_frees_its_slot_before_the_first_token() {
    // Small steps, so that the prompt takes many of them.
    let server = Server::start(bundle(), &["--parallel", "1", "--batch-size", "32"]);
    let text = "The stove is warm and the kitchen smells of fresh bread. ".repeat(60);
    let tokenized: Value = post(&server, "/tokenize", &json!({ "content": text })).json().unwrap();
    let tokens = tokenized["tokens"].as_array().unwrap().len() as f64;
    assert!(tokens > 600.0, "{tokens}");
    let mut body = ask(&text, 8);
    body["stream"] = json!(true);
    let response = post(&server, "/v1/chat/completions", &body);
    // The role chunk comes at once; the first token only after the whole prompt.
    let mut lines = BufReader::new(response).lines();
    assert!(lines.next().unwrap().unwrap().starts_with("data: "));
    drop(lines);
    wait_until("the request is cancelled", || metric(&server, "stove_requests_cancelled_total") == 1.0);
    wait_until("no slot is busy", || metric(&server, "stove_slots_busy") == 0.0);
    let decoded = metric(&server, "stove_decode_tokens_total");
    assert!(decoded < tokens / 2.0, "{decoded} of the prompt's {tokens} tokens were read after the client left");
}

#[test]
fn a_client_that_leaves_frees_its_slot_and_the_queue_is_bounded() {
    let server = Server::start(bundle(), &["--parallel", "1", "--max-queue", "1"]);
    let mut long = ask("Write a very long story about a stove.", 900);
    long["stream"] = json!(true);

    // A takes the only slot; B waits in the queue; C finds the queue full.
    let first = post(&server, "/v1/chat/completions", &long);
    let mut first_lines = BufReader::new(first).lines();
    let mut seen = 0;
    while seen < 3 {
        if first_lines.next().unwrap().unwrap().starts_with("data: ") {
            seen += 1;
        }
    }
    let waiting = post(&server, "/v1/chat/completions", &long);
    assert_eq!(waiting.status(), 200);
    wait_until("B waits in the queue", || metric(&server, "stove_requests_waiting") == 1.0);
    let refused = post(&server, "/v1/chat/completions", &ask("hi", 4));
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let error: Value = refused.json().unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("busy"), "{error}");

    // A leaves: its slot goes to B at once, and B's stream is cut the same way.
    drop(first_lines);
    wait_until("A is cancelled", || metric(&server, "stove_requests_cancelled_total") == 1.0);
    let mut waiting_lines = BufReader::new(waiting).lines();
    let has_text = |line: &str| {
        let chunk: Value = line.strip_prefix("data: ").and_then(|d| serde_json::from_str(d).ok()).unwrap_or_default();
        chunk["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())
    };
    assert!(waiting_lines.any(|line| has_text(&line.unwrap())), "B starts once A has left");
    drop(waiting_lines);
    wait_until("B is cancelled", || metric(&server, "stove_requests_cancelled_total") == 2.0);
    wait_until("no slot is busy", || metric(&server, "stove_slots_busy") == 0.0);

    // Nothing decodes any more, and the next request is answered.
    let calls = metric(&server, "stove_decode_calls_total");
    let (status, body) = server.chat(ask("Say hi.", 4));
    assert_eq!(status, 200, "{body}");
    assert!(metric(&server, "stove_decode_calls_total") <= calls + 5.0, "only the new request decoded");
}

#[test]
fn a_follow_up_turn_reuses_the_cached_conversation() {
    let server = Server::start(bundle(), &["--parallel", "2"]);
    let mut messages = vec![
        json!({ "role": "system", "content": "You are a cook who answers in one short paragraph." }),
        json!({ "role": "user", "content": "How do I make a tomato soup?" }),
    ];
    let (_, first) = server.chat(json!({ "messages": messages, "temperature": 0, "max_tokens": 24 }));
    let first_prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    messages.push(json!({ "role": "assistant", "content": first["choices"][0]["message"]["content"] }));
    messages.push(json!({ "role": "user", "content": "And with basil?" }));
    let (_, second) = server.chat(json!({ "messages": messages, "temperature": 0, "max_tokens": 8 }));
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    let prompt = second["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(cached >= first_prompt, "the whole first turn is cached: {cached} of {prompt}");
    assert_eq!(second["timings"]["prompt_n"].as_u64().unwrap(), prompt - cached, "only the new tokens are read");
}

#[test]
fn completions_json_output_logprobs_and_a_full_context() {
    let server = Server::start(bundle(), &["--ctx-size", "256"]);

    let body =
        json!({ "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "logprobs": 2, "echo": true });
    let response = post(&server, "/v1/completions", &body);
    assert_eq!(response.status(), 200);
    let completion: Value = response.json().unwrap();
    assert_eq!(completion["object"], "text_completion");
    let choice = &completion["choices"][0];
    assert!(choice["text"].as_str().unwrap().starts_with("The capital of France is"), "{completion}");
    let tokens = choice["logprobs"]["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 4);
    for logprob in choice["logprobs"]["token_logprobs"].as_array().unwrap() {
        assert!(logprob.as_f64().unwrap() <= 0.0);
    }
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(completion["usage"]["completion_tokens"], 4);

    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    streamed["echo"] = json!(false);
    let (text, _) = read_stream(post(&server, "/v1/completions", &streamed));
    assert!(choice["text"].as_str().unwrap().ends_with(&text), "{text:?}");

    let schema = json!({
        "type": "object",
        "properties": { "name": { "type": "string" }, "age": { "type": "integer" } },
        "required": ["name", "age"],
    });
    let mut json_ask = ask("Describe a cook as JSON with a name and an age.", 100);
    json_ask["response_format"] = json!({ "type": "json_schema", "json_schema": { "name": "cook", "schema": schema } });
    let (status, answer) = server.chat(json_ask);
    assert_eq!(status, 200, "{answer}");
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content:?} is not JSON: {e}"));
    assert!(parsed["name"].is_string() && parsed["age"].is_i64(), "{parsed}");

    let mut chat_logprobs = ask("Hi", 3);
    chat_logprobs["logprobs"] = json!(true);
    chat_logprobs["top_logprobs"] = json!(2);
    let (_, answer) = server.chat(chat_logprobs);
    let content = answer["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert!(!content.is_empty() && content[0]["top_logprobs"].as_array().unwrap().len() == 2, "{answer}");

    // A grammar that never lets the answer end: generation runs into the end of the context.
    let endless = json!({ "prompt": "a", "max_tokens": 100000, "grammar": "root ::= \"ab\" root" });
    let response = post(&server, "/v1/completions", &endless);
    let filled: Value = response.json().unwrap();
    assert_eq!(filled["choices"][0]["finish_reason"], "length", "{filled}");
    let usage = &filled["usage"];
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), 256, "the conversation filled its context: {usage}");
}

#[test]
fn bad_inputs_get_clear_errors_and_the_server_keeps_serving() {
    let server = Server::start(bundle(), &["--ctx-size", "128", "--api-key", "s3cret"]);
    let url = format!("{}/v1/chat/completions", server.url);
    let host = server.url.trim_start_matches("http://").to_string();
    let good = ask("Hi", 4).to_string();
    let many = json!({ "messages": vec![json!({ "role": "user", "content": "hi" }); 10_000] }).to_string();
    let long = ask(&"stove ".repeat(400), 4).to_string();
    let mut stops = ask("Hi", 4);
    stops["stop"] = json!(vec!["a long stop string ".repeat(10); 2000]);
    let stops = stops.to_string();
    let unknown_model = json!({ "model": "gpt-4o", "messages": [{ "role": "user", "content": "hi" }] }).to_string();

    struct Case {
        what: &'static str,
        body: Vec<u8>,
        headers: Vec<(&'static str, String)>,
        status: u16,
        message: &'static str,
    }
    let key = || ("authorization", "Bearer s3cret".to_string());
    let case = |what, body: &str, status, message| Case {
        what,
        body: body.as_bytes().to_vec(),
        headers: vec![key()],
        status,
        message,
    };
    let mut cases = vec![
        case("malformed JSON", "{\"messages\": [", 400, "not a valid chat completion request"),
        case("missing messages", "{}", 400, "missing field `messages`"),
        case("messages of the wrong type", r#"{"messages": 3}"#, 400, "invalid type"),
        case("temperature of the wrong type", r#"{"messages": [], "temperature": "hot"}"#, 400, "invalid type"),
        case("no messages", r#"{"messages": []}"#, 400, "`messages` is empty"),
        case("unknown role", r#"{"messages": [{"role": "cook", "content": "x"}]}"#, 400, "role"),
        case(
            "negative max_tokens",
            r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": -5}"#,
            400,
            "max_tokens",
        ),
        case("10,000 messages", &many, 400, "at most 4096"),
        case("thousands of stop strings", &stops, 400, "at most 16 strings"),
        case(
            "a grammar that does not parse",
            r#"{"messages": [{"role": "user", "content": "x"}], "grammar": "root ::= dish\ndsh ::= \"soup\""}"#,
            400,
            "every rule it uses is defined",
        ),
        case(
            "a logit_bias key that is no token id",
            r#"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"soup": 5}}"#,
            400,
            "keys are token ids",
        ),
        case(
            "a logit_bias past 100",
            r#"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"42": 500}}"#,
            400,
            "from -100 to 100",
        ),
        case(
            "a logit_bias token outside the vocabulary",
            r#"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"999999": -100}}"#,
            400,
            "vocabulary has tokens 0 to",
        ),
        case("a prompt longer than the context", &long, 400, "shorten the conversation"),
        case("an unknown model", &unknown_model, 404, "is not served here"),
        case(
            "a bad JSON schema",
            r#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "wizard"}}}}"#,
            400,
            "grammar",
        ),
        Case {
            what: "invalid UTF-8",
            body: b"{\"messages\": \"\xff\xfe\"}".to_vec(),
            headers: vec![key()],
            status: 400,
            message: "not a valid",
        },
        Case {
            what: "a huge body",
            body: vec![b' '; 5 << 20],
            headers: vec![key()],
            status: 413,
            message: "larger than 4 MiB",
        },
        Case {
            what: "no API key",
            body: good.clone().into_bytes(),
            headers: vec![],
            status: 401,
            message: "needs an API key",
        },
        Case {
            what: "a wrong API key",
            body: good.clone().into_bytes(),
            headers: vec![("authorization", "Bearer guess".into())],
            status: 401,
            message: "wrong",
        },
        Case {
            what: "a foreign Host (DNS rebinding)",
            body: good.clone().into_bytes(),
            headers: vec![key(), ("host", "attacker.example".into())],
            status: 403,
            message: "--allow-host attacker.example",
        },
        Case {
            what: "a foreign Origin",
            body: good.clone().into_bytes(),
            headers: vec![key(), ("origin", "http://attacker.example".into())],
            status: 403,
            message: "--cors-origin http://attacker.example",
        },
    ];
    cases.push(Case {
        what: "headers over 64 KiB",
        body: good.clone().into_bytes(),
        headers: vec![key(), ("x-padding", "x".repeat(80 << 10))],
        status: 431,
        message: "",
    });
    for case in cases {
        let mut request = client().post(&url).header("content-type", "application/json").body(case.body);
        for (name, value) in case.headers {
            request = request.header(name, value);
        }
        let response = request.send().unwrap();
        assert_eq!(response.status().as_u16(), case.status, "{}", case.what);
        if case.message.is_empty() {
            continue;
        }
        let error: Value = response.json().unwrap_or_else(|e| panic!("{}: no JSON error body: {e}", case.what));
        let text = error["error"]["message"].as_str().unwrap_or_default();
        assert!(text.contains(case.message), "{}: {error}", case.what);
        assert!(error["error"]["type"].is_string(), "{}: {error}", case.what);
    }

    // No route reads files: traversal attempts find nothing.
    for path in ["/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/..%2f..%2fetc%2fpasswd", "/web/../Cargo.toml"] {
        let response = client().get(format!("{}{path}", server.url)).send().unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
    // The page and /health stay open; the API's other routes need the key too.
    assert_eq!(client().get(format!("{}/", server.url)).send().unwrap().status(), 200);
    assert_eq!(client().get(format!("{}/health", server.url)).send().unwrap().status(), 200);
    assert_eq!(client().get(format!("{}/v1/models", server.url)).send().unwrap().status(), 401);
    let embeddings = client()
        .post(format!("{}/v1/embeddings", server.url))
        .bearer_auth("s3cret")
        .json(&json!({ "input": [1, 2] }))
        .send()
        .unwrap();
    assert_eq!(embeddings.status(), 400);
    assert!(embeddings.text().unwrap().contains("a list of strings"));

    // Host: exactly one, and the target's own authority when it has one (RFC 9112).
    let raw = |head: &str| {
        use std::io::{Read, Write};
        let mut socket = std::net::TcpStream::connect(format!("127.0.0.1:{}", server.port())).unwrap();
        socket.write_all(head.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        answer
    };
    let two = raw("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n");
    assert!(two.starts_with("HTTP/1.1 400") && two.contains("Host headers"), "{two}");
    let none = raw("GET /health HTTP/1.0\r\n\r\n");
    assert!(none.starts_with("HTTP/1.0 400") && none.contains("no Host header"), "{none}");
    // A Content-Length past any body size is the client's error (413, or 400 when it is no number), not 431.
    let huge = raw("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 9999999999\r\n\r\n");
    assert!(huge.starts_with("HTTP/1.1 413"), "{huge}");
    let overflowing =
        raw("POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 99999999999999999999\r\n\r\n");
    assert!(overflowing.starts_with("HTTP/1.1 400"), "{overflowing}");
    let absolute = raw("GET http://attacker.example/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert!(absolute.starts_with("HTTP/1.1 403") && absolute.contains("attacker.example"), "{absolute}");

    let response = client().post(&url).header("host", host).bearer_auth("s3cret").body(good).send().unwrap();
    assert_eq!(response.status(), 200, "still serving after all that");
}

#[test]
fn logit_bias_moves_the_answer_and_tokenize_names_the_ids() {
    let server = Server::start(bundle(), &[]);
    let first_token = |body: Value| -> String {
        let mut body = body;
        body["logprobs"] = json!(true);
        let answer: Value = post(&server, "/v1/chat/completions", &body).json().unwrap();
        answer["choices"][0]["logprobs"]["content"][0]["token"].as_str().unwrap().to_string()
    };
    let plain = first_token(ask("Which city is the capital of France?", 1));
    // llama-server's /tokenize: the ids of a text, with their pieces when asked.
    let tokens: Value = post(&server, "/tokenize", &json!({ "content": plain, "with_pieces": true })).json().unwrap();
    let tokens = tokens["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(tokens[0]["piece"], plain.as_str());
    let id = tokens[0]["id"].as_i64().unwrap();
    let plain_ids: Value = post(&server, "/tokenize", &json!({ "content": plain })).json().unwrap();
    assert_eq!(plain_ids["tokens"], json!([id]));
    // Banning the token the greedy answer starts with makes it start with another one.
    let mut banned = ask("Which city is the capital of France?", 1);
    banned["logit_bias"] = json!({ id.to_string(): -100 });
    assert_ne!(first_token(banned), plain, "token {id} ({plain:?}) was banned");
}

#[test]
fn listening_beyond_loopback_needs_a_key_and_origins_need_cors_origin() {
    let refused = common::stove()
        .args(["serve", "--model", bundle().to_str().unwrap(), "--host", "0.0.0.0", "--port", "0", "--no-browser"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("without an API key") && stderr.contains("--api-key"), "{stderr}");

    let server = Server::start(bundle(), &["--cors-origin", "http://localhost:3000"]);
    let models = format!("{}/v1/models", server.url);
    let allowed = client().get(&models).header("origin", "http://localhost:3000").send().unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["access-control-allow-origin"], "http://localhost:3000");
    let preflight = client()
        .request(reqwest::Method::OPTIONS, &models)
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert!(preflight.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    let other = client().get(&models).header("origin", "http://localhost:3001").send().unwrap();
    assert_eq!(other.status(), 403);
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[test]
fn embeddings_are_normalized_and_closer_for_closer_texts() {
    let server = Server::start(bundle(), &[]);
    let response = post(&server, "/v1/embeddings", &json!({ "input": ["hot soup", "warm stew", "a red car"] }));
    assert_eq!(response.status(), 200);
    let body: Value = response.json().unwrap();
    let vectors: Vec<Vec<f64>> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect();
    assert_eq!(vectors.len(), 3);
    assert_eq!(vectors[0].len(), 576, "SmolLM2-135M's hidden size");
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!((dot(&vectors[0], &vectors[0]) - 1.0).abs() < 1e-3);
    assert!(dot(&vectors[0], &vectors[1]) > dot(&vectors[0], &vectors[2]), "soup is nearer stew than a car");
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    // The same text gives the same vector, also while generation runs.
    let again: Value = post(&server, "/v1/embeddings", &json!({ "input": "hot soup" })).json().unwrap();
    let first: Vec<f64> =
        again["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert!(dot(&first, &vectors[0]) > 0.9999);
}

#[test]
fn embeddings_share_the_engine_stop_when_their_client_leaves_and_have_a_budget() {
    // The bundle's context is 1,024 tokens, so a request may embed 16,384 tokens in all.
    let server = Server::start(bundle(), &["--parallel", "2"]);
    let long = "the kitchen stove simmers onion soup with thyme and butter ".repeat(30);
    let inputs = vec![long.as_str(); 8];
    let tokens = |server: &Server| metric(server, "stove_embedded_tokens_total");

    // Over the budget: refused before any work, saying how much is allowed.
    let over = post(&server, "/v1/embeddings", &json!({ "input": vec![long.as_str(); 60] }));
    assert_eq!(over.status(), 400);
    let message = over.text().unwrap();
    assert!(message.contains("at most 16384"), "{message}");

    // A long request runs beside a chat: the chat is answered while the embeddings are still being made.
    let url = format!("{}/v1/embeddings", server.url);
    let body = json!({ "input": inputs });
    let long_request = std::thread::spawn(move || client().post(url).json(&body).send().unwrap());
    wait_until("embedding has started", || tokens(&server) > 0.0);
    let chat = post(&server, "/v1/chat/completions", &ask("Which city is the capital of France?", 4));
    assert_eq!(chat.status(), 200);
    assert!(metric(&server, "stove_embedded_inputs_total") < 8.0, "the chat did not wait for all 8 inputs");
    let done: Value = long_request.join().unwrap().json().unwrap();
    assert_eq!(done["data"].as_array().unwrap().len(), 8);

    // A client that leaves: its request is dropped at the next piece, not after all its inputs.
    let before = metric(&server, "stove_embedded_inputs_total");
    let body = serde_json::to_vec(&json!({ "input": inputs })).unwrap();
    let mut socket = std::net::TcpStream::connect(format!("127.0.0.1:{}", server.port())).unwrap();
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    std::io::Write::write_all(&mut socket, head.as_bytes()).unwrap();
    std::io::Write::write_all(&mut socket, &body).unwrap();
    let started = tokens(&server);
    wait_until("the abandoned request has started", || tokens(&server) > started);
    drop(socket);
    wait_until("the request is dropped", || metric(&server, "stove_embeddings_cancelled_total") == 1.0);
    assert!(metric(&server, "stove_embedded_inputs_total") - before < 8.0, "it stopped before its last input");
    let chat = post(&server, "/v1/chat/completions", &ask("Which city is the capital of France?", 4));
    assert_eq!(chat.status(), 200, "and the engine serves the next request");
}

#[test]
fn idle_sockets_cannot_lock_out_a_client_with_a_key() {
    let server = Server::start(bundle(), &["--api-key", "s3cret"]);
    let address = format!("127.0.0.1:{}", server.port());
    // 600 connections that never send a byte: more than the server's 512 places.
    let idle: Vec<std::net::TcpStream> = (0..600).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    let keyed_metric = |name: &str| -> f64 {
        let text =
            client().get(format!("{}/metrics", server.url)).bearer_auth("s3cret").send().unwrap().text().unwrap();
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok()).unwrap()
    };
    wait_until("the server has taken them all in", || keyed_metric("stove_connections_closed_silent_total") >= 88.0);
    // A client that sends its request is served at once, not after the idle ones time out (30 s before).
    let quick = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let response = quick
        .post(format!("{}/v1/chat/completions", server.url))
        .bearer_auth("s3cret")
        .json(&ask("Say hi", 2))
        .send()
        .expect("served while 600 idle sockets are open");
    assert_eq!(response.status(), 200);
    assert!(keyed_metric("stove_connections_open") <= 512.0);
    drop(idle);
}

#[test]
fn the_page_works_behind_a_trusted_tls_proxy() {
    // The test client plays the proxy on 127.0.0.1, the browser's https origin in its headers.
    let origin_request = |server: &Server, proto: Option<&str>| {
        let host = server.url.trim_start_matches("http://").to_string();
        let mut request = client()
            .post(format!("{}/v1/chat/completions", server.url))
            .header("origin", format!("https://{host}"))
            .json(&ask("Say hi", 2));
        if let Some(proto) = proto {
            request = request.header("x-forwarded-proto", proto);
        }
        request.send().unwrap().status().as_u16()
    };
    let proxied = Server::start(bundle(), &["--trusted-proxy", "127.0.0.1"]);
    assert_eq!(origin_request(&proxied, Some("https")), 200, "the page's own https origin");
    assert_eq!(origin_request(&proxied, None), 403, "without the proxy's word it is another origin");
    let direct = Server::start(bundle(), &[]);
    assert_eq!(origin_request(&direct, Some("https")), 403, "a peer that is not a trusted proxy is not believed");
}
