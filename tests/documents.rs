//! Files attached in the chat page (Debian's headless Chromium against a real stove and the real model): read
//! in the browser (pdf.js, mammoth), counted by stove, sent whole when they fit and as retrieved passages when
//! they do not, refused with a reason when they cannot be read, and kept, exported and imported with the
//! conversation. Every test also checks that the page asked nothing of any host but stove.
//!
//! The files come from tests/browser/documents.py, which writes them by hand so their text is known.

mod common;
#[path = "browser/page.rs"]
mod page;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use common::{bundle, client, python, scratch, Server};
use page::{wait_for_file, Page};

/// The sentence planted in long-notes.txt (see documents.py).
const PLANTED: &str = "The lighthouse keeper keeps the spare key under the blue heron statue.";

/// The test files, written once per run.
fn fixtures() -> &'static Path {
    common::generated("documents", |out| common::python_script("browser/documents.py", &[out.as_os_str()]))
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn open(server: &Server) -> Page {
    let page = Page::open(&server.url);
    page.wait_ready();
    page
}

/// The tokens stove counts for `text`.
fn tokens(server: &Server, text: &str) -> u64 {
    let response = client().post(format!("{}/tokenize", server.url)).json(&json!({ "content": text })).send().unwrap();
    let body: Value = response.json().unwrap();
    body["tokens"].as_array().unwrap().len() as u64
}

/// Each waiting chip's name and token count, once every file is read and counted.
fn chips(page: &Page, expected: usize) -> Vec<(String, u64)> {
    page.wait_for(&format!(
        "[...document.querySelectorAll('#attachments .chip-facts')].filter(e => / tokens$/.test(e.textContent)).length === {expected}"
    ));
    let list = page.text(
        "JSON.stringify([...document.querySelectorAll('#attachments .chip')].map(c => [c.querySelector('.chip-name').textContent, c.querySelector('.chip-facts').textContent]))",
    );
    let list: Vec<(String, String)> = serde_json::from_str(&list).unwrap();
    list.into_iter()
        .map(|(name, facts)| {
            let count = facts.rsplit(" · ").next().unwrap().trim_end_matches(" tokens").replace(',', "");
            (name, count.parse().unwrap_or_else(|_| panic!("a token count in {facts:?}")))
        })
        .collect()
}

/// The text between `<document name="NAME">` and `</document>` in `content`.
fn document<'a>(content: &'a str, name: &str) -> &'a str {
    let open = format!("<document name=\"{name}\">\n");
    let start = content.find(&open).unwrap_or_else(|| panic!("{name} is in the prompt whole: {content}")) + open.len();
    let end = start + content[start..].find("\n</document>").unwrap();
    &content[start..end]
}

/// The last question of the last chat request the page sent.
fn last_question(page: &Page) -> String {
    let body = page.chat_requests().pop().expect("the page asked stove");
    let messages = body["messages"].as_array().unwrap();
    messages.iter().rev().find(|m| m["role"] == "user").unwrap()["content"].as_str().unwrap().to_string()
}

/// The attachments of the conversation's messages, as the JSON export holds them.
fn exported_attachments(page: &Page, downloads: &Path) -> Value {
    for old in std::fs::read_dir(downloads).unwrap() {
        std::fs::remove_file(old.unwrap().path()).unwrap();
    }
    page.click("#export-json");
    let file = wait_for_file(downloads, "json");
    let data: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    Value::Array(data["messages"].as_array().unwrap().iter().map(|m| m["attachments"].clone()).collect())
}

#[test]
fn files_are_read_counted_sent_whole_kept_and_exported() {
    let server = Server::start(bundle(), &[]);
    let page = open(&server);
    let files = ["report.pdf", "letter.docx", "dishes.csv", "stove.rs"].map(fixture);
    page.choose_files("#attach-file", &files.each_ref().map(|p| p.as_path()));
    let counted = chips(&page, 4);
    let names: Vec<&str> = counted.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["report.pdf", "letter.docx", "dishes.csv", "stove.rs"]);
    assert!(page.text("document.querySelector('#attachments .chip').textContent").contains("2 pages"));
    page.screenshot("documents-attached.png");

    page.send("What do these files say?");
    page.wait_for("document.querySelectorAll('.message.assistant').length === 1");
    page.wait_answered();
    let question = last_question(&page);
    assert!(question.ends_with("\n\nWhat do these files say?"), "{question}");

    // Each file is in the prompt whole, under its name, and its chip counted exactly that text.
    let csv = std::fs::read_to_string(fixture("dishes.csv")).unwrap();
    assert_eq!(document(&question, "dishes.csv"), csv.trim());
    let code = std::fs::read_to_string(fixture("stove.rs")).unwrap();
    assert_eq!(document(&question, "stove.rs"), code.trim());
    let letter = document(&question, "letter.docx");
    assert!(letter.contains("The bakery on Willow Lane opens at seven on Sundays."), "{letter}");
    let report = document(&question, "report.pdf");
    let first = report.find("Page 1 of the harvest report says the orchard gave 101 crates of apples.");
    let second = report.find("[page 2]\nPage 2 of the harvest report says the orchard gave 102 crates of apples.");
    assert!(first.is_some() && second > first, "the PDF's pages in order: {report}");
    for (name, count) in &counted {
        let text = document(&question, name);
        let text = if name == "report.pdf" {
            text.replace("[page 1]\n", "").replace("\n\n[page 2]\n", "\n\n")
        } else {
            text.into()
        };
        assert_eq!(*count, tokens(&server, &text), "{name}'s chip counts its text");
    }
    // The question shows its files, and the message box is empty again.
    assert_eq!(page.count(".message.user .chips.sent .chip"), 4);
    assert_eq!(page.count("#attachments .chip"), 0);
    assert_eq!(page.count(".message.assistant .sources"), 0, "whole files name no passages");

    // The files stay with the conversation through a reload, and export and import unchanged.
    page.reload();
    page.wait_ready();
    assert_eq!(page.count(".message.user .chips.sent .chip"), 4);
    let downloads = tempfile::tempdir().unwrap();
    page.downloads_to(downloads.path());
    page.click("#toggle-panel");
    let exported = exported_attachments(&page, downloads.path());
    assert_eq!(exported[0].as_array().unwrap().len(), 4);
    assert_eq!(exported[0][3]["text"], code.trim());
    assert_eq!(exported[0][0]["pages"].as_array().unwrap().len(), 2);
    let file = wait_for_file(downloads.path(), "json");
    let copy = scratch().join("with-files.json");
    std::fs::copy(&file, &copy).unwrap();
    let before = page.count("#conversations .open");
    page.choose_file("#import-file", &copy);
    page.wait_for(&format!("document.querySelectorAll('#conversations .open').length > {before}"));
    assert_eq!(exported_attachments(&page, downloads.path()), exported, "the imported conversation's files");

    // pdf.js ran its worker, fetched from stove like everything else.
    assert!(page.requests().iter().any(|r| r.url.ends_with("/vendor/pdfjs/pdf.worker.min.mjs")));
    page.assert_offline(&server.url);
}

#[test]
fn a_file_far_longer_than_the_context_gives_the_passages_that_answer() {
    // The bundle's context is 1024 tokens; long-notes.pdf (49 pages) is about thirty times that. Greedy, so
    // the screenshot (README's) shows the same answer every time.
    let server = Server::start(bundle(), &["--temperature", "0"]);
    let page = open(&server);
    page.choose_file("#attach-file", &fixture("long-notes.pdf"));
    let counted = chips(&page, 1);
    assert!(counted[0].1 > 20_000, "{counted:?}");

    page.send("Where does the lighthouse keeper keep the spare key?");
    page.wait_for("document.querySelectorAll('.message.assistant').length === 1");
    page.wait_answered();
    let question = last_question(&page);
    assert!(question.contains(PLANTED), "the planted passage was retrieved: {question}");
    assert!(question.contains("too long to include whole"));
    // The passage holding the fact, and where the footer says it came from.
    let at = question.find(PLANTED).unwrap();
    let tag = &question[question[..at].rfind("<passage ").unwrap()..at];
    let number = tag.split("page=\"").nth(1).unwrap().split('"').next().unwrap();
    page.screenshot("documents-passages.png");
    let footer = page.text("document.querySelector('.message.assistant .sources').textContent");
    assert!(footer.contains(&format!("long-notes.pdf, page {number}")), "{footer}");

    // The prompt the page built fits the context: stove answers it (the page's own request succeeded too).
    let body = page.chat_requests().pop().unwrap();
    let (status, answer) = server.chat(json!({ "messages": body["messages"], "max_tokens": 1 }));
    assert_eq!(status, 200, "{answer}");
    assert!(answer["usage"]["prompt_tokens"].as_u64().unwrap() < 1024, "{answer}");
    assert_eq!(page.count(".message.error"), 0);
    page.assert_offline(&server.url);
}

#[test]
fn files_that_cannot_be_read_are_refused_with_the_reason_and_the_draft_kept() {
    let server = Server::start(bundle(), &[]);
    let page = open(&server);
    page.click("#prompt");
    page.insert_text("my half-written question");
    let huge = scratch().join("huge.txt");
    std::fs::File::create(&huge).unwrap().set_len(51 * 1024 * 1024).unwrap();
    let refusals = [
        (fixture("scanned.pdf"), "has no text layer"),
        (fixture("locked.pdf"), "locked with a password"),
        (fixture("notes.bin"), "is not a text file"),
        (huge, "files up to 50 MB can be attached"),
    ];
    for (file, reason) in &refusals {
        page.choose_file("#attach-file", file);
        let name = file.file_name().unwrap().to_str().unwrap();
        page.wait_for(&format!(
            "document.querySelector('.message.error')?.textContent.includes({})",
            page::js_string(name)
        ));
        let shown = page.text("document.querySelector('.message.error').textContent");
        assert!(shown.contains(reason), "{name}: {shown}");
        assert_eq!(page.text("document.getElementById('prompt').value"), "my half-written question");
        assert_eq!(page.count("#attachments .chip"), 0);
    }
    // A readable file still attaches, and its chip can be removed before sending.
    page.choose_file("#attach-file", &fixture("dishes.csv"));
    chips(&page, 1);
    page.click("#attachments .chip .remove");
    assert_eq!(page.count("#attachments .chip"), 0);
    assert_eq!(page.text("document.getElementById('prompt').value"), "my half-written question");

    // Dropping a file on the chat and pasting one into the message box attach it as the button does.
    page.eval(
        "(() => { const files = new DataTransfer(); \
         files.items.add(new File(['dish,minutes\\nsoup,20\\n'], 'dropped.csv', { type: 'text/csv' })); \
         document.getElementById('chat').dispatchEvent(new DragEvent('drop', { dataTransfer: files, bubbles: true, cancelable: true })); })()",
    );
    chips(&page, 1);
    page.eval(
        "(() => { const files = new DataTransfer(); files.items.add(new File(['fn soup() {}\\n'], 'pasted.rs')); \
         document.getElementById('prompt').dispatchEvent(new ClipboardEvent('paste', { clipboardData: files, bubbles: true, cancelable: true })); })()",
    );
    let names: Vec<String> = chips(&page, 2).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["dropped.csv", "pasted.rs"]);
    assert_eq!(page.text("document.getElementById('prompt').value"), "my half-written question");
    assert!(page.chat_requests().is_empty(), "nothing was sent");
    page.assert_offline(&server.url);
}

/// The default model made an embedding model: the same weights with a pooling type (the last token's state),
/// written through the test venv's gguf package. Its vectors differ from the chat model's (a mean of states).
fn embedding_model() -> &'static Path {
    common::generated("smol-embedder.gguf", |out| {
        let script = "import sys, gguf\n\
            from gguf.scripts.gguf_new_metadata import copy_with_new_metadata, MetadataDetails\n\
            reader = gguf.GGUFReader(sys.argv[1], 'r')\n\
            arch = reader.get_field('general.architecture').contents()\n\
            writer = gguf.GGUFWriter(sys.argv[2], arch=arch)\n\
            copy_with_new_metadata(reader, writer, {arch + '.pooling_type': MetadataDetails(gguf.GGUFValueType.UINT32, 3), \
            'general.name': MetadataDetails(gguf.GGUFValueType.STRING, 'SmolLM2 embedder')}, [])\n";
        let mut command = Command::new(python());
        command.args(["-c", script]).arg(common::model()).arg(out);
        command
    })
}

fn embedding(server: &Server, text: &str) -> Vec<f64> {
    let response =
        client().post(format!("{}/v1/embeddings", server.url)).json(&json!({ "input": text })).send().unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().unwrap();
    body["data"][0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn an_embedding_model_serves_embeddings_and_makes_the_page_rank_by_meaning_too() {
    let embedder = embedding_model();
    let plain = Server::start(bundle(), &[]);
    let server = Server::start(bundle(), &["--embedding-model", embedder.to_str().unwrap()]);
    let info: Value = client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap();
    assert_eq!(info["runtime"]["embedding_model"]["name"], "SmolLM2 embedder");
    assert_eq!(info["runtime"]["embedding_model"]["dimensions"], 576);
    let (mine, chat_models) = (embedding(&server, "a blue heron"), embedding(&plain, "a blue heron"));
    assert_eq!(mine.len(), chat_models.len());
    assert_ne!(mine, chat_models, "the embedding model, not the chat model, made the vector");
    assert_eq!(mine, embedding(&server, "a blue heron"));
    drop(plain);

    // The page embeds the passages once (kept with the file) and the question each time.
    let page = open(&server);
    page.choose_file("#attach-file", &fixture("short-notes.txt"));
    chips(&page, 1);
    page.send("Where does the lighthouse keeper keep the spare key?");
    page.wait_for("document.querySelectorAll('.message.assistant').length === 1");
    page.wait_answered();
    assert!(last_question(&page).contains(PLANTED));
    let embedded = |page: &Page| -> Vec<usize> {
        page.requests()
            .iter()
            .filter(|r| r.url.ends_with("/v1/embeddings"))
            .map(|r| {
                serde_json::from_str::<Value>(r.body.as_deref().unwrap()).unwrap()["input"].as_array().unwrap().len()
            })
            .collect()
    };
    let first = embedded(&page);
    assert_eq!(first[0], 1, "the question first: {first:?}");
    let passages: usize = first[1..].iter().sum();
    assert!(passages >= 3, "every passage of the file: {first:?}");
    // A follow-up searches the file again (its passages' vectors are kept) and sends none twice.
    page.send("And what does the lighthouse keeper keep under the statue?");
    page.wait_for("document.querySelectorAll('.message.assistant').length === 2");
    page.wait_answered();
    assert_eq!(embedded(&page).len(), first.len() + 1, "only the new question was embedded");
    let body = page.chat_requests().pop().unwrap();
    let asked: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert!(asked[0].contains(PLANTED) && !asked[1].contains(PLANTED), "{asked:?}");
    // Kept in the browser's storage with the conversation, one vector per passage.
    page.reload();
    page.wait_ready();
    let kept = page.eval(
        "new Promise(done => indexedDB.open('stove').onsuccess = (e) => e.target.result.transaction('conversations')\
         .objectStore('conversations').getAll().onsuccess = (r) => done(r.target.result[0].messages[0].attachments[0].vectors.values.length))",
    );
    assert_eq!(kept.as_u64(), Some(passages as u64));
    page.assert_offline(&server.url);
}

#[test]
fn pack_carries_an_embedding_model_that_info_lists_and_verify_checks() {
    let out = scratch().join("with-embedder.stove");
    let embedder = embedding_model();
    common::pack(&out, &["--embedding-model", embedder.to_str().unwrap()]);
    let info = common::run(&["info", "--model", out.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("embeddings   smol-embedder.gguf (llama Q4_1"), "{text}");
    let server = Server::start(&out, &[]);
    let served: Value = client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap();
    assert_eq!(served["runtime"]["embedding_model"]["name"], "SmolLM2 embedder");
    drop(server);

    // verify hashes it too: one byte changed in it is named.
    let verified = common::run(&["verify", out.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    assert!(String::from_utf8_lossy(&verified.stdout).contains("embedding model    intact"));
    common::damage(&out, common::offset_in_info(&text, "  embeddings   ") + 4096);
    let verified = common::run(&["verify", out.to_str().unwrap()]);
    assert!(!verified.status.success());
    assert!(String::from_utf8_lossy(&verified.stdout).contains("embedding model    DAMAGED"));

    // A chat model is no embedding model: refused, and nothing written.
    let refused = scratch().join("chat-as-embedder.stove");
    let model = common::model();
    let output = common::pack_output(&refused, &["--embedding-model", model.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not an embedding model"));
    assert!(!refused.exists());
}

/// The sum of the resident memory of `root`'s process tree (Chromium's browser, renderer and GPU processes).
fn tree_rss(root: u32) -> u64 {
    let mut total = 0;
    let mut pending = vec![root];
    while let Some(pid) = pending.pop() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        total += kib.unwrap_or(0) * 1024;
        let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        pending.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
    }
    total
}

/// Runs `script` (an async function body) in the page while sampling the browser's memory every 10 ms; returns
/// its result and the peak memory added over what the browser held before, in MiB.
fn measured(page: &Page, script: &str) -> (Value, f64) {
    let browser = page.browser_pid();
    let before = tree_rss(browser);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(tree_rss(browser));
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    // Objects come back from the page as JSON text (DevTools returns them by reference otherwise).
    let result = page.eval(&format!("(async () => JSON.stringify(await (async () => {{ {script} }})()))()"));
    let result: Value = serde_json::from_str(result.as_str().expect("the script's result")).unwrap();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    (result, peak.saturating_sub(before) as f64 / (1 << 20) as f64)
}

/// `scripts/bench-documents` runs this: extraction of a 100-page PDF and retrieval over 1,000 passages in
/// headless Chromium, with the peak memory the browser added while doing each. Not part of the test run.
#[test]
#[ignore = "a benchmark: scripts/bench-documents"]
fn bench_documents() {
    let dir = scratch().join("bench-documents");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/documents.py");
    let status = Command::new(python()).arg(script).arg(&dir).args(["--pages", "100"]).status().unwrap();
    assert!(status.success());
    let server = Server::start(bundle(), &[]);
    let page = open(&server);
    page.eval("document.body.append(Object.assign(document.createElement('input'), {type: 'file', id: 'bench-file'}))");
    page.choose_file("#bench-file", &dir.join("report.pdf"));
    let runs = 5;
    let mut report = Vec::new();
    for run in 0..runs {
        let (result, peak) = measured(
            &page,
            "const { extract } = await import('./js/extract.js');\
             const file = document.getElementById('bench-file').files[0];\
             const started = performance.now(); const read = await extract(file);\
             return { ms: performance.now() - started, pages: read.pages.length, chars: read.text.length, bytes: file.size };",
        );
        assert_eq!(result["pages"], 100, "{result}");
        println!(
            "extract 100-page PDF run {run}: {:.0} ms, peak +{peak:.1} MiB ({result})",
            result["ms"].as_f64().unwrap()
        );
        report.push(("extract", result["ms"].as_f64().unwrap(), peak));
    }
    for run in 0..runs {
        // 1,000 passages of ~1,100 characters: 4,000 made-up paragraphs of ~270.
        let (result, peak) = measured(
            &page,
            "const { passagesOf, rank, documentContext } = await import('./js/retrieval.js');\
             const words = 'river meadow copper lantern season harbour timber valley orchard pepper garden market bridge candle winter summer kettle barley village window'.split(' ');\
             let seed = 7; const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;\
             const paragraphs = []; for (let i = 0; i < 4000; i++) { const s = []; for (let j = 0; j < 40; j++) s.push(words[Math.floor(next() * words.length)]); paragraphs.push(s.join(' ') + '.'); }\
             paragraphs[1777] += ' The lighthouse keeper keeps the spare key under the blue heron statue.';\
             const text = paragraphs.join('\\n\\n'); const file = { name: 'big.txt', text, tokens: Math.round(text.length / 4.2), pages: null };\
             const started = performance.now();\
             const passages = passagesOf(file); const split = performance.now();\
             const ranked = rank(passages, 'Where does the lighthouse keeper keep the spare key?'); const ranking = performance.now();\
             const context = await documentContext([file], 'Where does the lighthouse keeper keep the spare key?', 3000);\
             return { passages: passages.length, split_ms: split - started, rank_ms: ranking - split, context_ms: performance.now() - ranking, found: context.text.includes('blue heron') };",
        );
        assert_eq!(result["found"], true, "{result}");
        let passages = result["passages"].as_u64().unwrap();
        assert!((900..=1100).contains(&passages), "{result}");
        let total = result["split_ms"].as_f64().unwrap() + result["rank_ms"].as_f64().unwrap();
        println!("retrieve over {passages} passages run {run}: {total:.0} ms, peak +{peak:.1} MiB ({result})");
        report.push(("retrieve", result["context_ms"].as_f64().unwrap(), peak));
    }
    let median = |kind: &str, pick: fn(&(&str, f64, f64)) -> f64| {
        let mut values: Vec<f64> = report.iter().filter(|r| r.0 == kind).map(pick).collect();
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        values[values.len() / 2]
    };
    println!(
        "\nmedian of {runs}: extract a 100-page PDF {:.0} ms (peak +{:.0} MiB); choose passages over 1,000 (split, \
         index, rank, fit) {:.0} ms (peak +{:.0} MiB)",
        median("extract", |r| r.1),
        median("extract", |r| r.2),
        median("retrieve", |r| r.1),
        median("retrieve", |r| r.2)
    );
}
