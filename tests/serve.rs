//! Serving a bundle: health, the OpenAI chat API, the page's files, the mmap proof, ports, and a clean stop.
//! (Bad inputs and the server's guard are in tests/api.rs.)
//!
//! Checks: /health turns 200; streamed and non-streamed completions give non-empty text, the same text for
//! the same seed at temperature 0, with usage and finish_reason; the weights are file-backed pages of the
//! bundle, not anonymous memory, also when a bare engine serves the bundle beside it (a stick); a taken port
//! moves to the next; SIGTERM stops it with status 0; a page packed with `--web` replaces the built-in one;
//! while the model loads, /health and the API answer 503 with the progress; `--browser` opens the printed URL;
//! a quantized KV cache answers coherently and the memory plan shrinks with it.

mod common;

use common::{bundle, client, read_stream, Server};
use serde_json::{json, Value};

fn ask(content: &str) -> Value {
    json!({ "messages": [{ "role": "user", "content": content }], "temperature": 0, "seed": 42, "max_tokens": 32 })
}

#[test]
fn chat_completions_stream_and_not_and_repeat_with_a_seed() {
    let server = Server::start(bundle(), &[]);
    let (status, first) = server.chat(ask("Name a fruit."));
    assert_eq!(status, 200, "{first}");
    let text = first["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(!text.trim().is_empty());
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["model"], "SmolLM2-135M-Instruct.Q4_1");
    let usage = &first["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 0);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
    assert!(["stop", "length"].contains(&first["choices"][0]["finish_reason"].as_str().unwrap()));

    let (_, again) = server.chat(ask("Name a fruit."));
    assert_eq!(again["choices"][0]["message"]["content"], text.as_str(), "same seed, temperature 0");

    let mut streamed = ask("Name a fruit.");
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({ "include_usage": true });
    let (stream_text, chunks) =
        read_stream(client().post(format!("{}/v1/chat/completions", server.url)).json(&streamed).send().unwrap());
    assert_eq!(stream_text, text, "streaming gives the same answer");
    assert!(chunks.len() > 3, "the answer arrives in pieces");
    let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str()).unwrap();
    assert!(["stop", "length"].contains(&finish));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], first["usage"]["completion_tokens"]);
}

#[test]
fn max_tokens_and_stop_strings_end_the_answer() {
    let server = Server::start(bundle(), &[]);
    let mut body = ask("Count from one to twenty, separated by commas.");
    body["max_tokens"] = json!(3);
    let (_, short) = server.chat(body);
    assert_eq!(short["choices"][0]["finish_reason"], "length");
    assert_eq!(short["usage"]["completion_tokens"], 3);

    let (_, full) = server.chat(ask("Count from one to twenty, separated by commas."));
    let full_text = full["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    // A word from the middle of the answer: the same seeded answer must end just before it.
    let stop = full_text.split_whitespace().nth(3).expect("an answer of several words").to_string();
    let mut body = ask("Count from one to twenty, separated by commas.");
    body["stop"] = json!([stop]);
    let (_, stopped) = server.chat(body);
    let stopped_text = stopped["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    assert_eq!(stopped_text, &full_text[..full_text.find(&stop).unwrap()], "stop string {stop:?}");
}

#[test]
fn models_health_and_the_page_are_served() {
    let server = Server::start(bundle(), &[]);
    let models: Value = client().get(format!("{}/v1/models", server.url)).send().unwrap().json().unwrap();
    assert_eq!(models["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1");
    let health: Value = client().get(format!("{}/health", server.url)).send().unwrap().json().unwrap();
    assert_eq!(health["status"], "ok");

    let page = client().get(&server.url).header("accept-encoding", "gzip").send().unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let etag = page.headers()["etag"].clone();
    let cached = client().get(&server.url).header("if-none-match", etag).send().unwrap();
    assert_eq!(cached.status(), 304);
    let files = [
        ("/js/app.js", "text/javascript"),
        ("/vendor/marked/marked.umd.js", "text/javascript"),
        ("/vendor/marked/LICENSE.txt", "text/plain"),
        ("/style.css", "text/css"),
        ("/favicon.svg", "image/svg+xml"),
    ];
    for (path, kind) in files {
        let response = client().get(format!("{}{path}", server.url)).send().unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(response.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
    }
    assert_eq!(client().get(format!("{}/../../etc/passwd", server.url)).send().unwrap().status(), 404);
}

/// The resident bytes of `path`'s mappings in process `pid`, and the process's anonymous memory.
fn memory_of(pid: u32, path: &std::path::Path) -> (u64, u64) {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let anon_kb = rollup
        .lines()
        .find(|l| l.starts_with("Anonymous:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse::<u64>()
        .unwrap();
    (common::resident_bytes_of(pid, path), anon_kb * 1024)
}

#[test]
fn the_weights_are_mapped_from_the_bundle_never_copied() {
    let model_size = std::fs::metadata(common::model()).unwrap().len();
    let mapped = Server::start(bundle(), &[]);
    let (status, _) = mapped.chat(ask("Describe a stove."));
    assert_eq!(status, 200);
    let (bundle_rss, anon_mapped) = memory_of(mapped.pid(), bundle());
    // After an answer every weight has been read, through file-backed pages of the bundle itself.
    assert!(bundle_rss > model_size * 9 / 10, "only {bundle_rss} bytes of the bundle are resident");

    let copied = Server::start(bundle(), &["--no-mmap"]);
    let (status, _) = copied.chat(ask("Describe a stove."));
    assert_eq!(status, 200);
    let (_, anon_copied) = memory_of(copied.pid(), bundle());
    // Reading the weights into memory costs their size in anonymous memory; mapping them does not.
    assert!(
        anon_mapped + model_size * 3 / 4 < anon_copied,
        "anonymous memory: {anon_mapped} mapped vs {anon_copied} copied, model {model_size}"
    );
}

#[test]
fn a_bare_engine_maps_the_weights_from_the_bundle_beside_it() {
    // A stick: a bare engine and a bundle in one folder; the engine serves the bundle, mapping its weights
    // out of that file as the bundle itself would.
    let stick = common::scratch().join("mapped-stick");
    std::fs::create_dir_all(&stick).unwrap();
    let engine = stick.join("stove-engine");
    let packed = common::run(&["pack", "--engine-only", "-o", engine.to_str().unwrap()]);
    assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));
    let beside = stick.join("SmolLM2.stove");
    std::fs::hard_link(bundle(), &beside).or_else(|_| std::fs::copy(bundle(), &beside).map(drop)).unwrap();

    let server = Server::start(&engine, &[]);
    let (status, _) = server.chat(ask("Describe a stove."));
    assert_eq!(status, 200);
    let model_size = std::fs::metadata(common::model()).unwrap().len();
    let (beside_rss, _) = memory_of(server.pid(), &beside);
    assert!(beside_rss > model_size * 9 / 10, "only {beside_rss} bytes of the bundle beside it are resident");
    let (engine_rss, _) = memory_of(server.pid(), &engine);
    assert!(engine_rss < model_size / 10, "{engine_rss} bytes of the engine file are resident");
}

#[test]
fn a_taken_port_moves_to_the_next_one() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut command = std::process::Command::new(bundle());
    command.args(["--port", &port.to_string(), "--no-browser", "--threads", "1"]);
    let server = Server::launch(command);
    let url = server.url.clone();
    let stderr = server.stop();
    assert!(stderr.contains(&format!("port {port} is in use")), "{stderr}");
    assert!(!url.ends_with(&format!(":{port}")), "{url}");
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start(bundle(), &[]);
    let pid = server.pid() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_page_packed_with_the_bundle_replaces_the_built_in_one() {
    let web = common::scratch().join("kitchen-page");
    std::fs::create_dir_all(web.join("img")).unwrap();
    std::fs::write(web.join("index.html"), "<h1>My kitchen</h1>").unwrap();
    std::fs::write(web.join("img/pot.svg"), "<svg/>").unwrap();
    let custom = common::scratch().join("kitchen.stove");
    common::pack(&custom, &["--web", web.to_str().unwrap()]);
    let server = Server::start(&custom, &[]);
    assert_eq!(client().get(&server.url).send().unwrap().text().unwrap(), "<h1>My kitchen</h1>");
    let svg = client().get(format!("{}/img/pot.svg", server.url)).send().unwrap();
    assert_eq!(svg.headers()["content-type"], "image/svg+xml");
    assert_eq!(client().get(format!("{}/js/app.js", server.url)).send().unwrap().status(), 404);
    // The API is unchanged.
    assert_eq!(server.chat(ask("Hi")).0, 200);
}

#[test]
fn health_answers_503_with_progress_while_the_model_loads() {
    // The real model followed by 6 GiB of sparse zeros: reading it through takes long enough to watch.
    let big = common::scratch().join("slow-to-load.gguf");
    std::fs::copy(common::model(), &big).unwrap();
    std::fs::File::options().write(true).open(&big).unwrap().set_len(6 << 30).unwrap();
    let engine = std::path::PathBuf::from(env!("CARGO_BIN_EXE_stove"));
    let server = Server::spawn(&engine, &["--model", big.to_str().unwrap()]);
    let response = client().get(format!("{}/health", server.url)).send().unwrap();
    assert_eq!(response.status(), 503, "the model cannot be loaded already");
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().unwrap();
    assert_eq!(body["status"], "loading");
    let progress = body["progress"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&progress), "{body}");
    let (status, refused) = server.chat(ask("Are you there?"));
    assert_eq!(status, 503, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("still loading"), "{refused}");
    server.wait_healthy();
    assert_eq!(server.chat(ask("Are you there?")).0, 200);
    std::fs::remove_file(&big).unwrap();
}

#[test]
fn browser_opens_the_page_when_asked() {
    // webbrowser honours $BROWSER: a script that records the address it was given.
    let dir = common::scratch().join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    let opened = dir.join("opened.txt");
    let script = dir.join("fake-browser.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$1\" > {}.tmp && mv {0}.tmp {0}\n", opened.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut command = std::process::Command::new(bundle());
    command.args(["--port", "0", "--browser", "--threads", "1"]).env("BROWSER", &script);
    let server = Server::launch(command);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !opened.exists() {
        assert!(std::time::Instant::now() < deadline, "no browser was opened");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let url = std::fs::read_to_string(&opened).unwrap();
    assert_eq!(url.trim().trim_end_matches('/'), server.url, "the browser got another address");
}

#[test]
fn a_quantized_kv_cache_answers_and_the_plan_counts_it_smaller() {
    let model = common::model();
    let mut planned = Vec::new();
    for cache in ["f16", "q8_0", "q4_0"] {
        let args = ["--model", model.to_str().unwrap(), "--cache-type-k", cache, "--cache-type-v", cache];
        let server = Server::start(&common::engine(), &args);
        let info: Value = client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap();
        let runtime = &info["runtime"];
        assert_eq!(runtime["kv_cache"]["type_k"], cache, "{runtime}");
        assert_eq!(runtime["kv_cache"]["type_v"], cache, "{runtime}");
        planned.push(runtime["offload"]["cpu_bytes"].as_u64().unwrap());
        // The tolerance: this 135M model's greedy wording changes with the cache's precision (f16 numbers the
        // days, q8_0 lists them in a sentence), so the check is that each answer is coherent: it names the days
        // in order.
        let (status, body) = server.chat(json!({
            "messages": [{ "role": "user", "content": "List the days of the week." }],
            "temperature": 0, "max_tokens": 40
        }));
        assert_eq!(status, 200, "{body}");
        let answer = body["choices"][0]["message"]["content"].as_str().unwrap();
        let at = |day: &str| answer.find(day).unwrap_or_else(|| panic!("{cache}: no {day} in {answer:?}"));
        assert!(at("Monday") < at("Tuesday") && at("Tuesday") < at("Wednesday"), "{cache}: {answer:?}");
    }
    // Weights plus cache in main memory: the cache is about half as large at q8_0 and under a third at q4_0.
    assert!(planned[0] > planned[1] && planned[1] > planned[2], "{planned:?}");

    // A quantized value cache needs flash attention: refused before anything loads.
    let output = common::run(&["--model", model.to_str().unwrap(), "--cache-type-v", "q8_0", "--flash-attn", "off"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--cache-type-v q8_0 needs flash attention"), "{stderr}");
}
