//! Speculative decoding with the real model: n-gram guesses from the conversation are decoded with the next
//! token and kept while the model agrees.
//!
//! Checks: a greedy answer that repeats its input is the same text with and without speculation, and with it
//! most guesses are kept (`timings`, `/metrics`); four conversations at once, each repeating a different text,
//! get their answers without speculation; a JSON-schema answer stays valid and the same; a draft model (the
//! default model drafting for itself, so nearly every guess is kept) gives the same answers, alone and four at
//! once; a draft model with another vocabulary is refused with the reason; settings that could never guess are
//! refused before the model loads.

mod common;

use common::{client, Server};
use serde_json::{json, Value};

/// Texts the model is asked to repeat: an answer that repeats its input is where guesses come from.
const TEXTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog. The weather in Paris was sunny on Monday, cloudy on Tuesday, \
     and rainy on Wednesday. Our company sells three products: a red chair, a blue table, and a green lamp.",
    "Each product ships within five working days, and returns are accepted for thirty days after delivery. \
     Customers who pay by card receive their receipt by email on the same day.",
    "The library opens at nine in the morning and closes at six in the evening. Books may be borrowed for \
     three weeks and renewed twice, unless another reader has reserved them.",
    "To reset the router, hold the small button on the back for ten seconds, wait until the light turns green, \
     then connect to the network named in the sticker under the device.",
];

fn repeat(text: &str) -> Value {
    json!({
        "messages": [{ "role": "user", "content": format!("Repeat the following text exactly, word for word:\n\n{text}") }],
        "temperature": 0,
        "max_tokens": 120,
    })
}

fn answer(body: &Value) -> String {
    body["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no answer in {body}")).to_string()
}

/// One value from `/metrics`.
fn metric(server: &Server, name: &str) -> f64 {
    let text = client().get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// Four slots, reading prompts 32 tokens a step. From 64 query rows in one step ggml's CPU attention takes a tiled
/// kernel that sums in another order, so a prompt read whole or from a cached start could otherwise get last-bit
/// different logits, and which slot's cache a request meets depends on how the four are admitted.
fn model_args<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--model", model, "--parallel", "4", "--batch-size", "32"];
    args.extend_from_slice(extra);
    args
}

#[test]
fn ngram_speculation_keeps_greedy_answers_and_saves_decodes() {
    let model = common::model();
    let model = model.to_str().unwrap();
    let plain = Server::start(&common::engine(), &model_args(model, &["--spec", "none"]));
    let fast = Server::start(&common::engine(), &model_args(model, &["--spec", "ngram"]));
    let info: Value = client().get(format!("{}/stove/info", fast.url)).send().unwrap().json().unwrap();
    assert_eq!(info["runtime"]["speculation"]["mode"], "ngram", "{info}");

    // One at a time: the same text, and guesses were decoded and mostly kept.
    let expected: Vec<String> = TEXTS
        .iter()
        .map(|text| {
            let (status, body) = plain.chat(repeat(text));
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["timings"]["draft_n"], 0, "speculation ran with --spec none: {body}");
            answer(&body)
        })
        .collect();
    let (status, body) = fast.chat(repeat(TEXTS[0]));
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer(&body), expected[0], "speculation changed a greedy answer");
    let timings = &body["timings"];
    let (drafted, kept) = (timings["draft_n"].as_u64().unwrap(), timings["draft_n_accepted"].as_u64().unwrap());
    // At least half of the guesses kept (this model keeps about two thirds of them on these texts).
    assert!(kept > 0 && kept * 2 >= drafted, "a repeated text should be guessed well: {timings}");
    assert!(kept < body["usage"]["completion_tokens"].as_u64().unwrap(), "{body}");
    assert_eq!(metric(&fast, "stove_draft_tokens_total"), drafted as f64);
    assert_eq!(metric(&fast, "stove_draft_tokens_accepted_total"), kept as f64);
    // Fewer decode calls than tokens generated: kept guesses came out of calls already made.
    assert!(metric(&fast, "stove_decode_calls_total") < metric(&fast, "stove_completion_tokens_total") + 1.0);

    // Four conversations at once, each guessing from its own text: the answers they get alone without it.
    let together: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = TEXTS
            .iter()
            .map(|text| {
                let fast = &fast;
                scope.spawn(move || fast.chat(repeat(text)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap().1).collect()
    });
    for ((text, expected), body) in TEXTS.iter().zip(&expected).zip(&together) {
        assert_eq!(&answer(body), expected, "in parallel, speculation changed the answer to {text:?}");
    }
    assert!(together.iter().any(|b| b["timings"]["draft_n_accepted"].as_u64().unwrap() > 0), "{together:?}");

    // With a JSON schema the grammar judges every guessed position too: still valid, still the same.
    let schema = json!({
        "type": "object",
        "properties": { "sentence": { "type": "string" } },
        "required": ["sentence"],
    });
    let mut request = repeat(&format!("{{\"sentence\": \"{}\"}}", TEXTS[1]));
    request["response_format"] = json!({ "type": "json_schema", "json_schema": { "name": "s", "schema": schema } });
    let (status, slow) = plain.chat(request.clone());
    assert_eq!(status, 200, "{slow}");
    let (status, quick) = fast.chat(request);
    assert_eq!(status, 200, "{quick}");
    assert_eq!(answer(&quick), answer(&slow), "speculation changed a schema-bound answer");
    let parsed: Value = serde_json::from_str(&answer(&quick)).expect("the answer follows the schema");
    assert!(parsed["sentence"].is_string(), "{parsed}");
    assert!(quick["timings"]["draft_n_accepted"].as_u64().unwrap() > 0, "{quick}");
}

#[test]
fn a_draft_model_keeps_greedy_answers_and_one_with_another_vocabulary_is_refused() {
    let model = common::model();
    let model = model.to_str().unwrap();
    let plain = Server::start(&common::engine(), &model_args(model, &["--spec", "none"]));
    let drafted = Server::start(&common::engine(), &model_args(model, &["--draft", model]));
    let info: Value = client().get(format!("{}/stove/info", drafted.url)).send().unwrap().json().unwrap();
    assert_eq!(info["runtime"]["speculation"]["mode"], "draft", "--spec auto takes the draft model: {info}");

    let question = |content: &str| json!({ "messages": [{ "role": "user", "content": content }], "temperature": 0, "max_tokens": 60 });
    // Free answers, not repeats: a draft model guesses any text, n-grams only what came before.
    let questions =
        ["List the days of the week.", "What is the capital of France?", "Name three fruits.", "Say hello."];
    let expected: Vec<String> = questions.iter().map(|q| answer(&plain.chat(question(q)).1)).collect();
    let together: Vec<Value> = std::thread::scope(|scope| {
        let handles: Vec<_> = questions
            .iter()
            .map(|q| {
                let (drafted, body) = (&drafted, question(q));
                scope.spawn(move || drafted.chat(body).1)
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((q, expected), body) in questions.iter().zip(&expected).zip(&together) {
        assert_eq!(&answer(body), expected, "the draft model changed the answer to {q:?}");
        let timings = &body["timings"];
        let (guessed, kept) = (timings["draft_n"].as_u64().unwrap(), timings["draft_n_accepted"].as_u64().unwrap());
        // The model drafting for itself agrees with itself, except where one decode and a batch differ in
        // the last bits (README, "Speculative decoding").
        assert!(guessed > 0 && kept * 10 >= guessed * 8, "{q:?}: {timings}");
    }

    let other = other_vocabulary();
    let output = common::run(&["--model", model, "--draft", other.to_str().unwrap(), "--port", "0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has another vocabulary than the model"), "{stderr}");
}

/// The default model with another vocabulary: every token's text from id 100 on changed (the test venv's gguf).
fn other_vocabulary() -> &'static std::path::Path {
    common::generated("other-vocabulary.gguf", |out| {
        let script = "import sys, gguf\n\
        from gguf.scripts.gguf_new_metadata import copy_with_new_metadata, MetadataDetails\n\
        reader = gguf.GGUFReader(sys.argv[1], 'r')\n\
        field = reader.get_field('tokenizer.ggml.tokens')\n\
        tokens = [bytes(field.parts[i]).decode('utf-8', 'replace') for i in field.data]\n\
        tokens = tokens[:100] + [t[::-1] + '~' for t in tokens[100:]]\n\
        writer = gguf.GGUFWriter(sys.argv[2], arch=reader.get_field('general.architecture').contents())\n\
        copy_with_new_metadata(reader, writer, {'tokenizer.ggml.tokens': MetadataDetails(gguf.GGUFValueType.ARRAY, \
        tokens, sub_type=gguf.GGUFValueType.STRING)}, [])\n";
        let mut command = std::process::Command::new(common::python());
        command.args(["-c", script]).arg(common::model()).arg(out);
        command
    })
}

#[test]
fn a_bundle_carries_its_draft_model_and_verify_checks_it() {
    let model = common::model();
    let model = model.to_str().unwrap();
    let dir = common::scratch().join("draft-bundle");
    std::fs::create_dir_all(&dir).unwrap();
    let packed = dir.join("with-draft.stove");
    let output = common::run(&["pack", "--model", model, "--draft", model, "-o", packed.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let info = common::run(&["info", packed.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("draft model  SmolLM2-135M-Instruct.Q4_1.gguf"), "{text}");

    // Served, it guesses with its own draft model without being told to.
    let server = Server::start(&packed, &["--parallel", "1"]);
    let info: Value = client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap();
    assert_eq!(info["runtime"]["speculation"]["mode"], "draft", "{info}");
    let (status, body) = server.chat(json!({
        "messages": [{ "role": "user", "content": "List the days of the week." }], "temperature": 0, "max_tokens": 30
    }));
    assert_eq!(status, 200, "{body}");
    assert!(body["timings"]["draft_n_accepted"].as_u64().unwrap() > 0, "{body}");
    drop(server);

    // verify re-hashes the draft too: one byte changed in it is named.
    let verified = common::run(&["verify", packed.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    assert!(String::from_utf8_lossy(&verified.stdout).contains("draft model        intact"));
    common::damage(&packed, common::offset_in_info(&text, "  draft model  ") + 4096);
    let verified = common::run(&["verify", packed.to_str().unwrap()]);
    assert!(!verified.status.success());
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(report.contains("draft model        DAMAGED"), "{report}");

    // A draft with another vocabulary is refused before anything is written.
    let refused = dir.join("refused.stove");
    let output = common::pack_output(&refused, &["--draft", other_vocabulary().to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has another vocabulary than the model"), "{stderr}");
    assert!(!refused.exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn speculation_settings_that_could_never_guess_are_refused_before_loading() {
    let model = common::model();
    let output = common::run(&["--model", model.to_str().unwrap(), "--draft-min", "8", "--draft-max", "4"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--draft-min 8 is more than --draft-max 4"), "{stderr}");
    assert!(!stderr.contains("model ready"), "{stderr}");
    let output = common::run(&["--model", model.to_str().unwrap(), "--spec", "draft"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--spec draft needs a draft model"), "{stderr}");
}
