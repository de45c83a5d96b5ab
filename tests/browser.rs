//! The chat page in a real browser (Debian's headless Chromium) against a real stove and the real model.
//!
//! Every test also checks that the page asked nothing of any host but stove. Screenshots in light, dark and
//! phone sizes go to target/screenshots for a person to look at.

mod common;
#[path = "browser/page.rs"]
mod page;

use std::path::{Path, PathBuf};

use headless_chrome::browser::tab::ModifierKey;
use serde_json::{json, Value};

use common::{bundle, scratch, Server};
use page::{wait_for_file, Page};

/// The page of `server`, opened and ready for questions.
fn open(server: &Server) -> Page {
    let page = Page::open(&server.url);
    page.wait_ready();
    page
}

fn sidebar(page: &Page) -> Vec<String> {
    let list =
        page.text("JSON.stringify([...document.querySelectorAll('#conversations .open')].map(b => b.textContent))");
    serde_json::from_str(&list).unwrap()
}

fn send_and_wait(page: &Page, question: &str) {
    let answers = page.count(".message.assistant");
    page.send(question);
    page.wait_for(&format!("document.querySelectorAll('.message.assistant').length > {answers}"));
    page.wait_answered();
}

/// A conversation file with every kind of Markdown, and things a hostile model might write.
fn markdown_conversation() -> PathBuf {
    let answer =
        "# A heading\n\nSome **bold** text and `inline code`.\n\n| Dish | Minutes |\n|---|---|\n| Soup | 20 |\n\n\
        ```rust\nfn main() {\n    println!(\"hello from the stove\");\n}\n```\n\n\
        ![tracking pixel](http://example.com/pixel.png)\n\n\
        <img src=\"http://example.com/raw.png\" onerror=\"window.pwned = 1\">\n\n<script>window.pwned = 2</script>\n\n\
        [run this](javascript:window.pwned=3) and [the docs](https://example.org/docs).";
    let conversation = json!({
        "title": "Markdown check",
        "messages": [
            {"role": "user", "content": "Show me <b>everything</b> you can render."},
            {"role": "assistant", "content": answer},
        ],
    });
    let path = scratch().join("markdown-check.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&conversation).unwrap()).unwrap();
    path
}

fn import(page: &Page, path: &Path) {
    let before = sidebar(page).len();
    page.choose_file("#import-file", path);
    page.wait_for(&format!("document.querySelectorAll('#conversations .open').length > {before}"));
}

#[test]
fn a_question_streams_an_answer_that_can_be_regenerated_and_edited() {
    let server = Server::start(bundle(), &["--temperature", "0"]);
    let page = open(&server);
    assert_eq!(page.text("document.getElementById('welcome-model').textContent"), "SmolLM2-135M-Instruct.Q4_1");
    assert!(page.text("document.getElementById('status').textContent").starts_with("ready"));

    page.send("Write a Python function that adds two numbers.");
    // The answer is on the page while it is still being written.
    page.wait_for("(document.querySelector('.message.assistant.streaming .content')?.textContent.length ?? 0) > 0");
    page.wait_answered();
    assert_eq!(page.messages("user"), ["Write a Python function that adds two numbers."]);
    let answers = page.messages("assistant");
    assert_eq!(answers.len(), 1);
    assert!(answers[0].contains("def add"), "{answers:?}");
    // Markdown: highlighted code blocks, each with its own copy button.
    assert!(page.count(".message.assistant .code-block code.language-python .hljs-keyword") > 0);
    let blocks = page.count(".message.assistant .code-block");
    assert!(blocks >= 1 && page.count(".message.assistant .copy-code") == blocks, "{blocks} code blocks");
    let meta = page.text("document.querySelector('.message.assistant .meta').textContent");
    assert!(meta.contains("tokens/s") && meta.contains("first token"), "{meta}");
    assert_eq!(sidebar(&page), ["Write a Python function that adds two numbers."]);

    // The model panel: what runs, on what, and how much of the context this conversation uses.
    page.click("#toggle-panel");
    let facts = page.text("document.getElementById('model-facts').innerText");
    for expected in [
        "llama",
        "Q4_1",
        "134.5 M",
        "1,024 tokens per conversation",
        "1 thread",
        "all 30 layers on the CPU",
        "n-gram: up to 16 tokens guessed",
        "none: the model reads text only",
    ] {
        assert!(facts.contains(expected), "{expected:?} missing from the model panel:\n{facts}");
    }
    let used = page.text("document.getElementById('context-used').textContent");
    assert!(used.contains("of 1,024 tokens"), "{used}");
    assert!(page.text("document.getElementById('last-speed').textContent").ends_with("tokens/s"));
    page.screenshot("answer-with-panel.png");
    page.click("#close-panel");

    // Regenerate writes the last answer again: a second generation on the server, still one answer shown.
    page.click(".message.assistant .regenerate");
    server.wait_metrics(&["stove_requests_finished_total 2"]);
    page.wait_answered();
    assert_eq!(page.messages("assistant"), answers, "greedy decoding writes the same answer again");

    // Editing the question drops what came after it and answers the new one.
    page.click(".message.user .edit");
    page.fill(".edit-box", "What is the capital of Germany?");
    page.press("Enter");
    page.wait_for("!document.querySelector('.edit-box')");
    page.wait_answered();
    assert_eq!(page.messages("user"), ["What is the capital of Germany?"]);
    let answers = page.messages("assistant");
    assert!(answers.len() == 1 && answers[0].contains("Berlin"), "{answers:?}");

    // Shift+Enter starts a new line; Enter sends.
    page.click("#prompt");
    page.insert_text("Two lines:");
    page.tab.press_key_with_modifiers("Enter", Some(&[ModifierKey::Shift])).unwrap();
    page.insert_text("this is the second.");
    page.press("Enter");
    page.wait_for("document.querySelectorAll('.message.user').length === 2");
    page.wait_answered();
    assert_eq!(page.messages("user")[1], "Two lines:\nthis is the second.");
    page.assert_offline(&server.url);
}

#[test]
fn stop_and_escape_end_an_answer_early_and_free_its_slot() {
    // Greedy, so both answers are the same long story every run: with random sampling the second one sometimes
    // ended on its own within a few tokens, before Escape was pressed.
    let server = Server::start(bundle(), &["--temperature", "0"]);
    let page = open(&server);
    for (round, how) in ["button", "escape"].into_iter().enumerate() {
        page.send("Write a very long story about a stove that travels the world.");
        page.wait_for(
            "(document.querySelector('.message.assistant.streaming .content')?.textContent.length ?? 0) > 20",
        );
        match how {
            "button" => page.click("#stop"),
            _ => page.press("Escape"),
        }
        page.wait_answered();
        let meta = page.text(&format!("document.querySelectorAll('.message.assistant .meta')[{round}].textContent"));
        assert!(meta.ends_with("stopped"), "{how}: {meta}");
        // The server saw the page leave: the generation was cancelled and its slot freed.
        server.wait_metrics(&[&format!("stove_requests_cancelled_total {}", round + 1), "stove_slots_busy 0"]);
    }
    // The stopped answers stay in the conversation, and the next question is answered.
    send_and_wait(&page, "Say hi.");
    assert_eq!(page.messages("assistant").len(), 3);
    assert_eq!(page.count(".message.error"), 0);
    page.assert_offline(&server.url);
}

#[test]
fn conversations_survive_reloads_and_restarts_and_can_be_switched_renamed_and_deleted() {
    let server = Server::start(bundle(), &["--temperature", "0"]);
    let page = open(&server);
    send_and_wait(&page, "Which city is the capital of France?");
    page.click("#new-chat");
    page.wait_for("document.querySelectorAll('#messages .message').length === 0");
    send_and_wait(&page, "What is the capital of Germany?");
    let both = ["What is the capital of Germany?", "Which city is the capital of France?"];
    assert_eq!(sidebar(&page), both);

    page.reload();
    page.wait_ready();
    assert_eq!(sidebar(&page), both);
    assert_eq!(page.messages("user"), ["What is the capital of Germany?"], "the latest conversation is open");

    // Switching shows the other conversation.
    page.click("#conversations li:nth-child(2) .open");
    page.wait_for(
        "document.querySelector('.message.user .content')?.textContent === 'Which city is the capital of France?'",
    );
    assert!(page.messages("assistant")[0].contains("Paris"));
    assert_eq!(page.text("document.getElementById('title').textContent"), "Which city is the capital of France?");

    // Rename.
    page.click("#conversations li.current button[aria-label^='Rename']");
    page.fill("#conversations .rename", "Paris trip");
    page.press("Enter");
    page.wait_for("document.getElementById('title').textContent === 'Paris trip'");
    assert_eq!(sidebar(&page), ["Paris trip", "What is the capital of Germany?"]);

    // Delete, then undo.
    page.click("#conversations li:not(.current) button[aria-label^='Delete']");
    page.wait_for("document.querySelectorAll('#conversations .open').length === 1");
    page.click("#toast button");
    page.wait_for("document.querySelectorAll('#conversations .open').length === 2");
    assert_eq!(page.messages("user"), ["What is the capital of Germany?"], "the restored conversation is open");

    // stove stops in the middle of an answer: the page says so, keeps what was written, and keeps trying.
    page.send("Write a very long story about a stove that travels the world.");
    page.wait_for("(document.querySelector('.message.assistant.streaming .content')?.textContent.length ?? 0) > 20");
    let port = server.port();
    drop(server);
    page.wait_for("!!document.querySelector('.message.error .retry')");
    let error = page.text("document.querySelector('.message.error').textContent");
    assert!(error.contains("broke off"), "{error}");
    let meta = page.text("[...document.querySelectorAll('.message.assistant .meta')].pop().textContent");
    assert!(meta.ends_with("interrupted"), "{meta}");
    page.wait_for("!document.getElementById('banner').hidden");
    assert!(page.text("document.getElementById('banner').textContent").contains("Trying again"));

    // stove starts again on the same address: the page reconnects, and Retry writes the answer again.
    let server = Server::start_on(bundle(), port, &["--temperature", "0"]);
    page.wait_for("document.getElementById('banner').hidden");
    page.wait_ready();
    page.click(".message.error .retry");
    page.wait_for("!document.querySelector('.message.error')");
    page.wait_answered();
    assert_eq!(page.messages("assistant").len(), 2, "the interrupted answer was replaced");
    assert!(!page
        .text("[...document.querySelectorAll('.message.assistant .meta')].pop().textContent")
        .contains("interrupted"));

    // Stopped while idle: the page notices by itself, and lets typing go on until stove is back.
    drop(server);
    page.wait_for("!document.getElementById('banner').hidden");
    page.wait_for("document.getElementById('send').disabled && !document.getElementById('prompt').disabled");
    let server = Server::start_on(bundle(), port, &["--temperature", "0"]);
    page.wait_for("document.getElementById('banner').hidden");
    page.wait_ready();
    // (A new chat: the regenerated story may have filled its conversation's context.)
    page.click("#new-chat");
    send_and_wait(&page, "Say hi.");

    // And everything is still there after a reload against the restarted stove.
    page.reload();
    page.wait_ready();
    assert_eq!(sidebar(&page), ["Say hi.", "What is the capital of Germany?", "Paris trip"]);
    assert_eq!(page.messages("user"), ["Say hi."]);
    page.assert_offline(&server.url);
}

#[test]
fn settings_are_kept_per_conversation_and_sent_with_its_questions() {
    let server = Server::start(bundle(), &["--temperature", "0.5", "--system-prompt", "You are a chef."]);
    let page = open(&server);
    page.click("#toggle-panel");
    // Empty fields show the defaults the bundle (here the command line) set.
    assert_eq!(page.text("document.querySelector('[name=temperature]').placeholder"), "0.5");
    assert_eq!(page.text("document.querySelector('[name=system_prompt]').placeholder"), "You are a chef.");

    page.fill("[name=system_prompt]", "Answer in one word.");
    page.fill("[name=temperature]", "0");
    page.fill("[name=max_tokens]", "3");
    page.fill("[name=seed]", "42");
    send_and_wait(&page, "Which city is the capital of France?");
    let sent = page.chat_requests();
    assert_eq!(sent.len(), 1);
    let body = &sent[0];
    assert_eq!(body["messages"][0], json!({"role": "system", "content": "Answer in one word."}));
    assert_eq!(body["messages"][1], json!({"role": "user", "content": "Which city is the capital of France?"}));
    assert_eq!(
        (body["temperature"].as_f64(), body["max_tokens"].as_u64(), body["seed"].as_u64()),
        (Some(0.0), Some(3), Some(42))
    );
    assert_eq!(body["stream"], true);
    let meta = page.text("document.querySelector('.message.assistant .meta').textContent");
    assert!(meta.starts_with("3 tokens") && meta.contains("cut off"), "{meta}");

    // A new conversation starts from the defaults; the first keeps its own settings, across a reload too.
    page.click("#new-chat");
    assert_eq!(page.text("document.querySelector('[name=max_tokens]').value"), "");
    send_and_wait(&page, "Hello!");
    let body = page.chat_requests().pop().unwrap();
    assert!(body.get("max_tokens").is_none() && body.get("temperature").is_none(), "{body}");
    assert_eq!(body["messages"][0]["role"], "user", "the server adds its own default system prompt");
    page.reload();
    page.wait_ready();
    page.click("#conversations li:nth-child(2) .open");
    page.click("#toggle-panel");
    page.wait_for("document.querySelector('[name=max_tokens]').value === '3'");
    assert_eq!(page.text("document.querySelector('[name=system_prompt]').value"), "Answer in one word.");
    page.click("#reset-settings");
    assert_eq!(page.text("document.querySelector('[name=max_tokens]').value"), "");
    page.assert_offline(&server.url);
}

#[test]
fn markdown_renders_safely_and_conversations_export_and_import() {
    let server = Server::start(bundle(), &[]);
    let page = open(&server);
    import(&page, &markdown_conversation());
    assert_eq!(sidebar(&page), ["Markdown check"]);
    assert_eq!(page.messages("user"), ["Show me <b>everything</b> you can render."], "a question is shown as typed");
    let rendered = |selector: &str| page.count(&format!("#messages .message.assistant .markdown {selector}"));
    assert_eq!(rendered("h1"), 1);
    assert_eq!(rendered("strong"), 1);
    assert_eq!(rendered("table td"), 2);
    assert!(rendered(".code-block code.language-rust .hljs-keyword") > 0);
    // What a model must not be able to do: load from other hosts, run script, or link to script.
    assert_eq!(page.count("#messages img, #messages script, #messages [onerror]"), 0);
    assert_eq!(page.eval("window.pwned === undefined"), Value::Bool(true));
    assert_eq!(page.count("#messages a[href^='javascript']"), 0);
    assert_eq!(
        page.text("document.querySelector('#messages a[href=\"https://example.org/docs\"]')?.rel"),
        "noopener noreferrer"
    );
    assert!(page.text("document.querySelector('.message.assistant .markdown').innerText").contains("<script>"));

    // Copying a code block puts exactly its code on the clipboard.
    page.eval("navigator.clipboard.writeText = (text) => { window.copied = text; return Promise.resolve(); }");
    page.click(".copy-code");
    page.wait_for("window.copied !== undefined");
    assert_eq!(page.text("window.copied"), "fn main() {\n    println!(\"hello from the stove\");\n}");

    // Export both ways; each file imports back to the same conversation.
    let downloads = tempfile::tempdir().unwrap();
    page.downloads_to(downloads.path());
    page.click("#toggle-panel");
    page.click("#export-json");
    let exported = wait_for_file(downloads.path(), "json");
    let data: Value = serde_json::from_slice(&std::fs::read(&exported).unwrap()).unwrap();
    assert_eq!(data["title"], "Markdown check");
    assert_eq!(data["messages"].as_array().unwrap().len(), 2);
    page.click("#export-markdown");
    let markdown = wait_for_file(downloads.path(), "md");
    let text = std::fs::read_to_string(&markdown).unwrap();
    assert!(text.starts_with("# Markdown check\n") && text.contains("## Assistant"), "{text}");
    let original = (page.messages("user"), page.messages("assistant"));
    for file in [&markdown, &exported] {
        import(&page, file);
        assert_eq!(page.text("document.getElementById('title').textContent"), "Markdown check");
        assert_eq!((page.messages("user"), page.messages("assistant")), original, "{}", file.display());
    }
    assert_eq!(sidebar(&page).len(), 3);

    // A file that is not a conversation is refused with a reason, and nothing is added.
    let bad = scratch().join("not-a-conversation.json");
    std::fs::write(&bad, r#"{"hello": "world"}"#).unwrap();
    page.choose_file("#import-file", &bad);
    page.wait_for("!document.getElementById('toast').hidden");
    assert!(page.text("document.getElementById('toast').textContent").contains("no \"messages\" list"));
    assert_eq!(sidebar(&page).len(), 3);
    page.assert_offline(&server.url);
}

#[test]
fn server_errors_are_shown_in_the_conversation() {
    let server = Server::start(bundle(), &["--parallel", "1", "--max-queue", "1"]);
    let page = open(&server);

    // Too long for the context: said so, and the question is given back to shorten.
    let long = "Tell me about cooking. ".repeat(250);
    page.send(long.trim());
    page.wait_for("!!document.querySelector('.message.error')");
    let error = page.text("document.querySelector('.message.error').textContent");
    assert!(error.contains("context"), "{error}");
    assert_eq!(page.text("document.getElementById('prompt').value"), long.trim());
    assert_eq!(page.messages("user"), Vec::<String>::new());

    // The queue is full: one request generating, one waiting, so the page's is refused with 503.
    let occupy = || {
        let url = format!("{}/v1/chat/completions", server.url);
        let body = json!({"messages": [{"role": "user", "content": "Count to a million."}], "stream": true,
                          "grammar": "root ::= \"a\"+"});
        std::thread::spawn(move || common::client().post(url).json(&body).send())
    };
    let generating = occupy();
    server.wait_metrics(&["stove_slots_busy 1"]);
    let waiting = occupy();
    server.wait_metrics(&["stove_requests_waiting 1"]);
    page.fill("#prompt", "Say hi.");
    page.press("Enter");
    page.wait_for("document.querySelector('.message.error')?.textContent.includes('busy')");
    assert_eq!(page.count(".message.error .retry"), 1);
    // Once they are gone, Retry gets the answer.
    drop((generating.join().unwrap().unwrap(), waiting.join().unwrap().unwrap()));
    server.wait_metrics(&["stove_slots_busy 0", "stove_requests_waiting 0"]);
    page.click(".message.error .retry");
    page.wait_for("!document.querySelector('.message.error')");
    page.wait_answered();
    assert_eq!(page.messages("assistant").len(), 1);
    page.assert_offline(&server.url);
}

#[test]
fn themes_follow_the_system_or_the_choice_and_the_page_fits_a_phone() {
    let server = Server::start(bundle(), &[]);
    let page = open(&server);
    import(&page, &markdown_conversation());
    page.click("#toggle-panel");
    let background = || page.text("getComputedStyle(document.body).backgroundColor");
    page.prefer_dark(false);
    assert_eq!(background(), "rgb(251, 250, 248)");
    let light = page.screenshot("chat-light.png");
    page.prefer_dark(true);
    assert_eq!(background(), "rgb(21, 23, 27)");
    let dark = page.screenshot("chat-dark.png");
    // A choice made on the page wins over the system's, and is remembered.
    page.eval("const t = document.getElementById('theme'); t.value = 'light'; t.dispatchEvent(new Event('change'))");
    assert_eq!(background(), "rgb(251, 250, 248)");
    page.reload();
    page.wait_ready();
    assert_eq!(background(), "rgb(251, 250, 248)");
    page.assert_offline(&server.url);
    eprintln!("screenshots: {} {}", light.display(), dark.display());

    // A phone-sized window: the conversations slide in from a button and out again once one is chosen.
    let phone = Page::open_sized(&server.url, (390, 844));
    phone.wait_ready();
    let sidebar_shown = "document.getElementById('sidebar').getBoundingClientRect().right > 0";
    assert_eq!(phone.eval(sidebar_shown), Value::Bool(false));
    assert_eq!(phone.eval("document.documentElement.scrollWidth <= window.innerWidth"), Value::Bool(true));
    phone.click("#open-sidebar");
    phone.wait_for(&format!(
        "{sidebar_shown} && getComputedStyle(document.getElementById('sidebar')).transform === 'none'"
    ));
    phone.screenshot("chat-phone-sidebar.png");
    phone.click("#new-chat");
    phone.wait_for(&format!("!({sidebar_shown})"));
    send_and_wait(&phone, "Say hi.");
    phone.screenshot("chat-phone.png");
    assert_eq!(phone.eval("document.documentElement.scrollWidth <= window.innerWidth"), Value::Bool(true));
    phone.assert_offline(&server.url);
}

#[test]
fn the_page_sends_the_api_key_it_was_given() {
    let server = Server::start(bundle(), &["--api-key", "kitchen-key", "--temperature", "0"]);
    // What the page stores once a person has typed the key into its prompt; set from another page of the same
    // origin, since the chat page would stop at the prompt.
    let page = Page::open(&format!("{}/health", server.url));
    page.eval("localStorage.setItem('stove.apiKey', 'kitchen-key')");
    page.goto(&server.url);
    page.wait_ready();
    assert_eq!(page.text("document.getElementById('welcome-model').textContent"), "SmolLM2-135M-Instruct.Q4_1");
    send_and_wait(&page, "Say hi.");
    assert_eq!(page.count(".message.error"), 0);
    assert!(!page.messages("assistant")[0].is_empty());
    assert!(page.requests().iter().filter(|r| r.method == "POST").count() >= 1);
}

/// llama.cpp's published chat template `name` (from the sdist `scripts/llama-cpp-tools` fetches).
fn published_template(name: &str) -> PathBuf {
    let output = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/llama-cpp-tools"))
        .arg("--source")
        .output()
        .expect("run scripts/llama-cpp-tools");
    assert!(output.status.success(), "scripts/llama-cpp-tools --source failed");
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
        .join("models/templates")
        .join(format!("{name}.jinja"))
}

#[test]
fn thinking_streams_into_a_collapsed_block_and_tool_calls_show_as_cards() {
    // DeepSeek R1's template opens `<think>` for the model, so what it writes is thinking.
    let template = published_template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B");
    let model = common::model();
    let args =
        ["--model", model.to_str().unwrap(), "--chat-template-file", template.to_str().unwrap(), "--ctx-size", "256"];
    let server = Server::start(&common::engine(), &args);
    let page = open(&server);
    page.send("Which city is the capital of France?");
    // While it streams the block is there, open, and says it is still thinking.
    page.wait_for(
        "(() => { const t = document.querySelector('.message.streaming .thinking'); \
         return t && !t.hidden && t.querySelector('summary').textContent === 'Thinking…' \
         && t.querySelector('.thinking-text').textContent.length > 0; })()",
    );
    page.wait_answered();
    let thinking = page.text("document.querySelector('.message.assistant .thinking .thinking-text').textContent");
    assert!(!thinking.trim().is_empty(), "the thinking is kept with the answer");
    assert_eq!(page.eval("document.querySelector('.message.assistant .thinking').open"), json!(false), "collapsed");
    assert_eq!(page.text("document.querySelector('.message.assistant .thinking summary').textContent"), "Thinking");
    // Reloaded from the browser's storage, it is still there.
    page.reload();
    page.wait_ready();
    page.wait_for("document.querySelector('.message.assistant .thinking .thinking-text')?.textContent.length > 0");

    // A conversation with a tool call shows it as a card with the function and its arguments.
    let conversation = json!({"title": "Weather", "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "assistant", "content": "It is sunny."},
    ]});
    let path = scratch().join("tool-call.json");
    std::fs::write(&path, serde_json::to_vec(&conversation).unwrap()).unwrap();
    import(&page, &path);
    page.wait_for("document.querySelector('.tool-call .tool-name')?.textContent === 'get_weather()'");
    let arguments = page.text("document.querySelector('.tool-call .tool-arguments').textContent");
    assert_eq!(serde_json::from_str::<Value>(&arguments).unwrap(), json!({"city": "Paris"}), "{arguments}");
    page.screenshot("thinking-and-tool-call");
    page.assert_offline(&server.url);
}
