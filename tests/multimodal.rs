//! Pictures and sounds through a projector (`--mmproj`, or packed), with the real default model and llama.cpp's
//! multimodal library.
//!
//! No vision or audio model can be fetched here, so the projectors are tests/multimodal/projector.py's: tiny,
//! random, of kinds llama.cpp's clip runs (Gemma 3's that sees, Ultravox's that hears), projecting into the
//! default model's 576-wide embeddings. Their answers mean nothing but are deterministic, which is what these
//! tests check: the same picture or sound gives the same answer, another one another answer, its tokens are
//! counted, the cache keeps it across turns, bad ones are refused by part while the server keeps serving, the
//! page attaches, shows or plays, sends and keeps them, and `pack --mmproj` carries a projector that `info`
//! names, `verify` and a signature cover, and the bundle loads.

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use image::{ImageFormat, Rgb, RgbImage};
use serde_json::{json, Value};

use common::{bundle, scratch, Server};

fn projector() -> &'static Path {
    write_projector("tiny-mmproj.gguf", &[])
}

/// projector.py's projector with `args`, written once as `name` in the scratch folder.
fn write_projector(name: &str, args: &'static [&'static str]) -> &'static Path {
    common::generated(name, |out| {
        let mut command = common::python_script("multimodal/projector.py", &[out.as_os_str()]);
        command.args(args);
        command
    })
}

/// A `data:` URL of a `width`×`height` picture of one colour with a diagonal line, in `format`.
fn picture(colour: [u8; 3], width: u32, height: u32, format: ImageFormat) -> String {
    let mut image = RgbImage::from_pixel(width, height, Rgb(colour));
    for i in 0..width.min(height) {
        image.put_pixel(i, i, Rgb([255 - colour[0], 255 - colour[1], 255 - colour[2]]));
    }
    let mut bytes = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image).write_to(&mut bytes, format).unwrap();
    let mime = format.to_mime_type();
    format!("data:{mime};base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes.into_inner()))
}

fn asking(url: &str) -> Value {
    json!([{ "role": "user", "content": [
        { "type": "text", "text": "What is in this picture?" },
        { "type": "image_url", "image_url": { "url": url } },
    ]}])
}

fn greedy(server: &Server, messages: Value) -> (u16, Value) {
    server.chat(json!({ "messages": messages, "max_tokens": 12, "temperature": 0 }))
}

fn answer(body: &Value) -> String {
    body["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string()
}

#[test]
fn pictures_are_read_deterministically_counted_and_kept_in_the_cache() {
    let server = Server::start(bundle(), &["--mmproj", projector().to_str().unwrap(), "--parallel", "1"]);
    let info: Value = common::client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap();
    assert_eq!(info["runtime"]["projector"]["vision"], true, "{info}");

    let red = picture([200, 30, 30], 96, 80, ImageFormat::Png);
    let blue = picture([30, 30, 200], 96, 80, ImageFormat::Png);
    let (status, first) = greedy(&server, asking(&red));
    assert_eq!(status, 200, "{first}");
    let (_, again) = greedy(&server, asking(&red));
    assert_eq!(answer(&first), answer(&again), "the same picture, the same answer");
    // The second time the whole prompt but its last token came from the cache, the picture included.
    let prompt_tokens = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(prompt_tokens - 1), "{again}");

    // A follow-up turn keeps the picture's place in the cache (the one slot still holds the first turn): only
    // the new turn is decoded.
    let mut conversation = asking(&red);
    conversation.as_array_mut().unwrap().push(json!({ "role": "assistant", "content": answer(&first) }));
    conversation.as_array_mut().unwrap().push(json!({ "role": "user", "content": "And its colour?" }));
    let (status, follow_up) = greedy(&server, conversation);
    assert_eq!(status, 200, "{follow_up}");
    let cached = follow_up["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= prompt_tokens - 1, "the first turn, picture included, came from the cache: {follow_up}");

    let (_, other) = greedy(&server, asking(&blue));
    assert_ne!(answer(&first), answer(&other), "another picture, another answer");
    assert_eq!(other["usage"]["prompt_tokens"].as_u64(), Some(prompt_tokens));
    // The picture's tokens are counted: more than the same question without it.
    let (_, text_only) = greedy(
        &server,
        json!([{ "role": "user", "content": [{ "type": "text", "text": "What is in this picture?" }] }]),
    );
    let text_tokens = text_only["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens >= text_tokens + 4, "{prompt_tokens} with the picture, {text_tokens} without");

    // Two pictures in one message, and every format the API takes.
    let two = json!([{ "role": "user", "content": [
        { "type": "image_url", "image_url": { "url": red } },
        { "type": "text", "text": "and" },
        { "type": "image_url", "image_url": { "url": blue } },
    ]}]);
    let (status, both) = greedy(&server, two);
    assert_eq!(status, 200, "{both}");
    assert!(both["usage"]["prompt_tokens"].as_u64().unwrap() > prompt_tokens);
    for format in [ImageFormat::Jpeg, ImageFormat::WebP, ImageFormat::Gif] {
        let (status, body) = greedy(&server, asking(&picture([30, 160, 60], 64, 48, format)));
        assert_eq!(status, 200, "{format:?}: {body}");
    }
}

#[test]
fn bad_pictures_are_refused_by_part_and_the_server_keeps_serving() {
    let server = Server::start(bundle(), &["--mmproj", projector().to_str().unwrap()]);
    let refused = |url: &str, expected: &str| {
        let (status, body) = greedy(&server, asking(url));
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("messages[0].content[1]"), "{message}");
        assert!(message.contains(expected), "{message}");
    };
    refused("https://example.com/cat.png", "makes no connection");
    refused("data:image/png;base64,bm90IGEgcGljdHVyZQ==", "is not one stove reads");
    refused("data:image/png;base64,%%%", "base64 is not valid");
    refused(&picture([1, 2, 3], 9000, 4, ImageFormat::Png), "larger than 8192");
    let (status, body) = greedy(&server, asking(&picture([200, 30, 30], 32, 32, ImageFormat::Png)));
    assert_eq!(status, 200, "{body}");
    // A large picture is scaled down on the way in, and read.
    let (status, body) = greedy(&server, asking(&picture([30, 120, 200], 4000, 3000, ImageFormat::Png)));
    assert_eq!(status, 200, "{body}");

    // Gemma 3 reads a picture with attention both ways, so the picture must fit one batch: said, with the fix.
    let small_batches =
        Server::start(bundle(), &["--mmproj", projector().to_str().unwrap(), "--batch-size", "2", "--parallel", "1"]);
    let (status, body) = greedy(&small_batches, asking(&picture([200, 30, 30], 32, 32, ImageFormat::Png)));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("in one batch of at most 2: start stove with --batch-size"));
    drop(small_batches);

    // A model without a projector says so, and what to do.
    let plain = Server::start(bundle(), &[]);
    let (status, body) = greedy(&plain, asking(&picture([200, 30, 30], 32, 32, ImageFormat::Png)));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--mmproj"), "{body}");
    let (status, _) = greedy(&plain, json!([{ "role": "user", "content": "Hello" }]));
    assert_eq!(status, 200);
}

#[test]
fn anthropic_image_blocks_are_read_the_same_way() {
    let server = Server::start(bundle(), &["--mmproj", projector().to_str().unwrap()]);
    let url = picture([200, 30, 30], 96, 80, ImageFormat::Png);
    let data = url.split_once(',').unwrap().1;
    let ask = |source: Value| {
        let response = common::client()
            .post(format!("{}/v1/messages", server.url))
            .json(&json!({ "max_tokens": 12, "temperature": 0, "messages": [{ "role": "user", "content": [
                { "type": "text", "text": "What is in this picture?" },
                { "type": "image", "source": source },
            ]}]}))
            .send()
            .unwrap();
        (response.status().as_u16(), response.json::<Value>().unwrap())
    };
    let (status, body) = ask(json!({ "type": "base64", "media_type": "image/png", "data": data }));
    assert_eq!(status, 200, "{body}");
    // The same picture through OpenAI's route gives the same answer.
    let (_, openai) = greedy(&server, asking(&url));
    assert_eq!(body["content"][0]["text"].as_str().unwrap_or_default(), answer(&openai));
    let (status, body) = ask(json!({ "type": "url", "url": "https://example.com/cat.png" }));
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("makes no connection"), "{body}");
}

#[path = "browser/page.rs"]
mod page;

/// A picture file on disk, for the page's file input.
fn picture_file(name: &str, colour: [u8; 3]) -> PathBuf {
    let path = scratch().join(name);
    let url = picture(colour, 96, 80, ImageFormat::Png);
    let bytes = base64::engine::general_purpose::STANDARD.decode(url.split_once(',').unwrap().1).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Attaches `file` in the page, waits until its chip is `ready` (a script) and says `facts` last, asks
/// `question`, waits for the answer, and returns the content parts the question was sent as.
fn attach_and_ask(page: &page::Page, file: &Path, ready: &str, facts: &str, question: &str) -> Vec<Value> {
    page.choose_file("#attach-file", file);
    page.wait_for(ready);
    assert!(page.text("document.querySelector('#attachments .chip-facts').textContent").ends_with(facts));
    page.send(question);
    page.wait_for("document.querySelectorAll('.message.assistant').length === 1");
    page.wait_answered();
    assert_eq!(page.count(".message.error"), 0);
    let body = page.chat_requests().pop().unwrap();
    body["messages"][0]["content"].as_array().expect("the question is sent as parts").clone()
}

#[test]
fn the_page_attaches_shows_sends_and_keeps_a_picture_for_a_model_that_sees() {
    let server = Server::start(bundle(), &["--mmproj", projector().to_str().unwrap()]);
    let page = page::Page::open(&server.url);
    page.wait_ready();
    let parts = attach_and_ask(
        &page,
        &picture_file("red.png", [200, 30, 30]),
        "document.querySelector('#attachments .chip img.chip-thumb')?.complete === true",
        "96×80",
        "What is in this picture?",
    );
    assert_eq!(parts[0]["text"], "What is in this picture?");
    assert!(parts[1]["image_url"]["url"].as_str().unwrap().starts_with("data:image/png;base64,"), "{parts:?}");
    // Kept with the conversation: after a reload the question still shows its picture.
    page.reload();
    page.wait_ready();
    page.wait_for("document.querySelector('.message.user .chips.sent img.chip-thumb')?.naturalWidth === 96");
    page.assert_offline(&server.url);

    // A model without a projector is not sent pictures: the page says why, and keeps the message box as it was.
    let plain = Server::start(bundle(), &[]);
    let page = page::Page::open(&plain.url);
    page.wait_ready();
    page.choose_file("#attach-file", &picture_file("blue.png", [30, 30, 200]));
    page.wait_for("document.querySelector('.message.error')?.textContent.includes('blue.png')");
    assert!(page.text("document.querySelector('.message.error').textContent").contains("cannot see"));
    assert_eq!(page.count("#attachments .chip"), 0);
    page.assert_offline(&plain.url);
}

#[test]
fn pack_carries_the_projector_that_info_names_verify_checks_and_the_bundle_loads() {
    let out = scratch().join("sees.stove");
    let key = scratch().join("sees-kitchen");
    assert!(common::run(&["keygen", "-o", key.to_str().unwrap()]).status.success());
    let (secret, public) = (key.with_extension("key"), key.with_extension("pub"));
    let projector_arg = projector().to_str().unwrap();
    common::pack(&out, &["--mmproj", projector_arg, "--sign", secret.to_str().unwrap(), "--", "--ctx-size", "1024"]);
    let info = common::run(&["info", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("  projector    tiny-mmproj.gguf (gemma3, "), "{text}");
    assert!(text.contains(": the model sees pictures"), "{text}");

    // The bundle sees with no --mmproj, and answers as the projector file does.
    let url = picture([200, 30, 30], 96, 80, ImageFormat::Png);
    let bundled = Server::start(&out, &[]);
    let served: Value = common::client().get(format!("{}/stove/info", bundled.url)).send().unwrap().json().unwrap();
    let projector_info = &served["runtime"]["projector"];
    assert_eq!(projector_info["file"], "tiny-mmproj.gguf", "{served}");
    assert_eq!(projector_info["kind"], "gemma3");
    assert_eq!(projector_info["bytes"].as_u64(), Some(std::fs::metadata(projector()).unwrap().len()));
    assert_eq!(projector_info["on_gpu"], false, "no GPU here");
    let (status, from_bundle) = greedy(&bundled, asking(&url));
    assert_eq!(status, 200, "{from_bundle}");
    let stderr = bundled.stop();
    assert!(stderr.contains("projector: tiny-mmproj.gguf (gemma3, "), "{stderr}");
    assert!(stderr.contains("in main memory): the model sees pictures"), "{stderr}");
    let from_file = Server::start(bundle(), &["--mmproj", projector().to_str().unwrap()]);
    assert_eq!(answer(&from_bundle), answer(&greedy(&from_file, asking(&url)).1));
    drop(from_file);

    // verify hashes it against the signed manifest: intact, then one changed byte is named.
    let verified = common::run(&["verify", out.to_str().unwrap(), "--key", public.to_str().unwrap()]);
    let report = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success() && report.contains("projector          intact"), "{report}");
    assert!(report.contains("valid, by the required key"), "{report}");
    common::damage(&out, common::offset_in_info(&text, "  projector    ") + 4096);
    let verified = common::run(&["verify", out.to_str().unwrap()]);
    assert!(!verified.status.success());
    assert!(String::from_utf8_lossy(&verified.stdout).contains("projector          DAMAGED"));

    // Refused before a byte is written: a model that is not a projector, and a projector made for another width.
    let model = common::model();
    let other_width = write_projector("wide-mmproj.gguf", &["--width", "960"]);
    for (mmproj, expected) in [(model.as_path(), "is not a projector"), (other_width, "could not load the projector")] {
        let refused = scratch().join("refused.stove");
        let output = common::pack_output(&refused, &["--mmproj", mmproj.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{stderr}");
        assert!(!refused.exists());
    }
}

fn audio_projector() -> &'static Path {
    write_projector("tiny-audio-mmproj.gguf", &["--audio"])
}

/// A WAV file (16 kHz, mono, 16-bit) of `seconds` of a sine at `hertz`.
fn wav(hertz: f32, seconds: f32) -> Vec<u8> {
    let rate = 16_000u32;
    let samples: Vec<i16> = (0..(rate as f32 * seconds) as u32)
        .map(|i| ((i as f32 * hertz * std::f32::consts::TAU / rate as f32).sin() * 12_000.0) as i16)
        .collect();
    let data_len = samples.len() as u32 * 2;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
    out
}

fn hearing(file: &[u8], format: &str) -> Value {
    let data = base64::engine::general_purpose::STANDARD.encode(file);
    json!([{ "role": "user", "content": [
        { "type": "text", "text": "What is this sound?" },
        { "type": "input_audio", "input_audio": { "data": data, "format": format } },
    ]}])
}

#[test]
fn sounds_are_heard_deterministically_counted_and_refused_by_part() {
    let server = Server::start(bundle(), &["--mmproj", audio_projector().to_str().unwrap(), "--parallel", "1"]);
    let info: Value = common::client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap();
    assert_eq!(info["runtime"]["projector"]["audio"], true, "{info}");
    assert_eq!(info["runtime"]["projector"]["vision"], false);
    assert_eq!(info["runtime"]["projector"]["kind"], "ultravox");

    let low = wav(220.0, 1.0);
    let (status, first) = greedy(&server, hearing(&low, "wav"));
    assert_eq!(status, 200, "{first}");
    let (_, again) = greedy(&server, hearing(&low, "wav"));
    assert_eq!(answer(&first), answer(&again), "the same sound, the same answer");
    let prompt_tokens = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(prompt_tokens - 1), "{again}");
    let (_, other) = greedy(&server, hearing(&wav(440.0, 1.0), "wav"));
    assert_ne!(answer(&first), answer(&other), "another sound, another answer");
    // Whisper pads every sound to 30 s (3,000 frames); halved, stacked by 4: 375 tokens, counted in usage.
    let (_, text_only) =
        greedy(&server, json!([{ "role": "user", "content": [{ "type": "text", "text": "What is this sound?" }] }]));
    let text_tokens = text_only["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(prompt_tokens - text_tokens, 375, "{prompt_tokens} with the sound, {text_tokens} without");

    // Refused by part, and the server keeps serving: not a sound file, a format that is not the file's, no data,
    // and a picture for a model that only hears.
    let refused = |messages: Value, expected: &str| {
        let (status, body) = greedy(&server, messages);
        assert_eq!(status, 400, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    };
    refused(hearing(b"not a sound at all", "wav"), "messages[0].content[1]: the sound is not one stove reads");
    refused(hearing(&low, "mp3"), "says \"mp3\" but the file is wav");
    refused(
        json!([{ "role": "user", "content": [{ "type": "input_audio", "input_audio": { "format": "wav" } }] }]),
        "input_audio.data is missing",
    );
    refused(asking(&picture([200, 30, 30], 32, 32, ImageFormat::Png)), "reads sound and text only");
    let (status, _) = greedy(&server, hearing(&low, "wav"));
    assert_eq!(status, 200);

    // A model that only sees says so for a sound.
    let sees = Server::start(bundle(), &["--mmproj", projector().to_str().unwrap()]);
    let (status, body) = greedy(&sees, hearing(&low, "wav"));
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("reads pictures and text only"), "{body}");
}

#[test]
fn the_page_attaches_plays_sends_and_keeps_a_sound_for_a_model_that_hears() {
    let server = Server::start(bundle(), &["--mmproj", audio_projector().to_str().unwrap()]);
    let sound = scratch().join("tone.wav");
    std::fs::write(&sound, wav(440.0, 1.5)).unwrap();
    let page = page::Page::open(&server.url);
    page.wait_ready();
    let parts = attach_and_ask(
        &page,
        &sound,
        "document.querySelector('#attachments .chip audio.chip-sound')?.readyState >= 1",
        "0:02",
        "What is this sound?",
    );
    assert_eq!(parts[1]["type"], "input_audio", "{parts:?}");
    assert_eq!(parts[1]["input_audio"]["format"], "wav");
    let sent = base64::engine::general_purpose::STANDARD.decode(parts[1]["input_audio"]["data"].as_str().unwrap());
    assert_eq!(sent.unwrap(), std::fs::read(&sound).unwrap());
    // Kept with the conversation: after a reload the question still plays its sound.
    page.reload();
    page.wait_ready();
    page.wait_for("document.querySelector('.message.user .chips.sent audio.chip-sound')?.readyState >= 1");
    // A picture is refused for a model that only hears.
    page.choose_file("#attach-file", &picture_file("green.png", [30, 160, 60]));
    page.wait_for("document.querySelector('.message.error')?.textContent.includes('green.png')");
    assert!(page.text("document.querySelector('.message.error').textContent").contains("cannot see"));
    page.assert_offline(&server.url);
}
