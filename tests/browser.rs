//! The chat page in a real browser (Debian's headless Chromium).
//!
//! Checks: the page loads from the bundle, shows the model's name once ready, a typed question gets a
//! streamed answer shown on the page with its speed, and the stop button ends an answer early and frees its
//! slot on the server. Screenshots
//! in light and dark go to target/screenshots for a person to look at.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use headless_chrome::protocol::cdp::Emulation;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};

use common::{bundle, Server};

fn chromium() -> Browser {
    let path = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("Debian's chromium is installed (apt-get install chromium); .ci/run installs it");
    let options = LaunchOptions::default_builder()
        .path(Some(path))
        .headless(true)
        .sandbox(false)
        .window_size(Some((1100, 800)))
        .idle_browser_timeout(Duration::from_secs(300))
        .args(
            [
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ]
            .iter()
            .map(std::ffi::OsStr::new)
            .collect(),
        )
        .build()
        .unwrap();
    Browser::new(options).expect("start chromium")
}

fn screenshot(tab: &Tab, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

/// Evaluates `expression` (a JS boolean) until it is true.
fn wait_for(tab: &Tab, expression: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let value = tab.evaluate(expression, false).unwrap().value;
        if value == Some(serde_json::Value::Bool(true)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {expression}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text_of(tab: &Tab, expression: &str) -> String {
    tab.evaluate(expression, false).unwrap().value.and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

#[test]
fn a_question_typed_on_the_page_gets_a_streamed_answer() {
    let server = Server::start(bundle(), &["--temperature", "0"]);
    let browser = chromium();
    let tab = browser.new_tab().unwrap();
    tab.navigate_to(&server.url).unwrap().wait_until_navigated().unwrap();
    wait_for(&tab, "!document.getElementById('prompt').disabled");
    assert_eq!(text_of(&tab, "document.getElementById('model-name').textContent"), "SmolLM2-135M-Instruct.Q4_1");
    assert!(text_of(&tab, "document.getElementById('status').textContent").starts_with("ready"));

    tab.find_element("#prompt").unwrap().click().unwrap();
    tab.type_str("What is the capital of France?").unwrap().press_key("Enter").unwrap();
    wait_for(&tab, "document.querySelector('.message.user')?.textContent === 'What is the capital of France?'");
    wait_for(&tab, "!!document.querySelector('.message.assistant .meta')");
    let answer = text_of(&tab, "document.querySelector('.message.assistant').firstChild.textContent");
    assert!(answer.contains("Paris"), "{answer}");
    let meta = text_of(&tab, "document.querySelector('.message.assistant .meta').textContent");
    assert!(meta.contains("tokens/s"), "{meta}");
    screenshot(&tab, "chat-light.png");

    tab.call_method(Emulation::SetEmulatedMedia {
        media: None,
        features: Some(vec![Emulation::MediaFeature { name: "prefers-color-scheme".into(), value: "dark".into() }]),
    })
    .unwrap();
    screenshot(&tab, "chat-dark.png");
}

#[test]
fn the_stop_button_ends_an_answer_early() {
    let server = Server::start(bundle(), &[]);
    let browser = chromium();
    let tab = browser.new_tab().unwrap();
    tab.navigate_to(&server.url).unwrap().wait_until_navigated().unwrap();
    wait_for(&tab, "!document.getElementById('prompt').disabled");
    tab.find_element("#prompt").unwrap().click().unwrap();
    tab.type_str("Write a very long story about a stove that travels the world.").unwrap().press_key("Enter").unwrap();
    wait_for(&tab, "(document.querySelector('.message.assistant')?.textContent.length ?? 0) > 20");
    tab.find_element("#stop").unwrap().click().unwrap();
    wait_for(&tab, "document.querySelector('.message.assistant .meta')?.textContent === 'stopped'");
    wait_for(&tab, "!document.getElementById('send').hidden && document.getElementById('stop').hidden");
    // The server saw the page leave: the generation was cancelled and its slot freed.
    let metrics = || common::client().get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !(metrics().contains("\nstove_requests_cancelled_total 1\n") && metrics().contains("\nstove_slots_busy 0\n"))
    {
        assert!(std::time::Instant::now() < deadline, "stop did not cancel the generation:\n{}", metrics());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The engine is free again: the next question is answered.
    tab.find_element("#prompt").unwrap().click().unwrap();
    tab.type_str("Say hi.").unwrap().press_key("Enter").unwrap();
    wait_for(&tab, "document.querySelectorAll('.message.assistant').length === 2 && !!document.querySelectorAll('.message.assistant')[1].querySelector('.meta')");
}

#[test]
fn the_page_sends_the_api_key_it_was_given() {
    let server = Server::start(bundle(), &["--api-key", "kitchen-key", "--temperature", "0"]);
    let browser = chromium();
    let tab = browser.new_tab().unwrap();
    // What the page stores once a person has typed the key into its prompt; set from another page of the same
    // origin, since the chat page would stop at the prompt.
    tab.navigate_to(&format!("{}/health", server.url)).unwrap().wait_until_navigated().unwrap();
    tab.evaluate("localStorage.setItem('stove.apiKey', 'kitchen-key')", false).unwrap();
    tab.navigate_to(&server.url).unwrap().wait_until_navigated().unwrap();
    wait_for(&tab, "!document.getElementById('prompt').disabled");
    assert_eq!(text_of(&tab, "document.getElementById('model-name').textContent"), "SmolLM2-135M-Instruct.Q4_1");
    tab.find_element("#prompt").unwrap().click().unwrap();
    tab.type_str("Say hi.").unwrap().press_key("Enter").unwrap();
    wait_for(
        &tab,
        "!!document.querySelector('.message.assistant .meta') || !!document.querySelector('.message.error')",
    );
    assert_eq!(text_of(&tab, "document.querySelector('.message.error')?.textContent ?? ''"), "");
    assert!(!text_of(&tab, "document.querySelector('.message.assistant').firstChild.textContent").is_empty());
}
