//! The chat page driven in Debian's headless Chromium over the DevTools protocol: every request the page
//! makes is recorded (to prove it talks to stove alone), and Content-Security-Policy violations are caught.

// Shared by the page tests (tests/browser.rs) and the document tests (tests/documents.rs); each uses a part.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::browser::tab::RequestPausedDecision;
use headless_chrome::protocol::cdp::Browser::{SetDownloadBehavior, SetDownloadBehaviorBehaviorOption};
use headless_chrome::protocol::cdp::Page::{AddScriptToEvaluateOnNewDocument, CaptureScreenshotFormatOption};
use headless_chrome::protocol::cdp::{Emulation, Fetch, Input};
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::Value;

/// A request the page made, as Chromium was about to send it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub url: String,
    pub method: String,
    pub body: Option<String>,
}

pub struct Page {
    // Kept alive for the tab's sake.
    browser: Browser,
    pub tab: Arc<Tab>,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
}

/// Records violations of the page's Content-Security-Policy (a blocked script, image or connection).
const WATCH_POLICY: &str = "window.__violations = []; document.addEventListener('securitypolicyviolation', \
     (e) => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));";

impl Page {
    /// Opens `url` in a fresh browser (an empty profile) with a desktop-sized window.
    pub fn open(url: &str) -> Page {
        Page::open_sized(url, (1280, 860))
    }

    pub fn open_sized(url: &str, size: (u32, u32)) -> Page {
        let page = Page::blank(size);
        page.tab.navigate_to(url).unwrap().wait_until_navigated().unwrap();
        page
    }

    /// A browser on about:blank, recording requests from here on.
    pub fn blank(size: (u32, u32)) -> Page {
        let path = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("Debian's chromium is installed (apt-get install chromium); .ci/run installs it");
        let options = LaunchOptions::default_builder()
            .path(Some(path))
            .headless(true)
            .sandbox(false)
            .window_size(Some(size))
            .idle_browser_timeout(Duration::from_secs(300))
            .args(
                [
                    "--disable-gpu",
                    "--no-first-run",
                    // Chromium's own background traffic (updates, safe browsing) is not the page's.
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
        let browser = Browser::new(options).expect("start chromium");
        let tab = browser.new_tab().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        tab.enable_fetch(
            Some(&[Fetch::RequestPattern {
                url_pattern: Some("*".into()),
                resource_Type: None,
                request_stage: Some(Fetch::RequestStage::Request),
            }]),
            None,
        )
        .unwrap();
        tab.enable_request_interception(Arc::new(move |_, _, event: Fetch::events::RequestPausedEvent| {
            let request = event.params.request;
            seen.lock().unwrap().push(SeenRequest {
                url: request.url,
                method: request.method,
                body: request.post_data,
            });
            RequestPausedDecision::Continue(None)
        }))
        .unwrap();
        tab.call_method(AddScriptToEvaluateOnNewDocument {
            source: WATCH_POLICY.into(),
            world_name: None,
            include_command_line_api: None,
            run_immediately: None,
        })
        .unwrap();
        Page { browser, tab, requests }
    }

    /// The browser's process (its renderers are its children).
    pub fn browser_pid(&self) -> u32 {
        self.browser.get_process_id().expect("a browser this test started")
    }

    pub fn goto(&self, url: &str) {
        self.tab.navigate_to(url).unwrap().wait_until_navigated().unwrap();
    }

    pub fn reload(&self) {
        self.tab.reload(false, None).unwrap().wait_until_navigated().unwrap();
    }

    pub fn eval(&self, expression: &str) -> Value {
        let result = self.tab.evaluate(expression, true).unwrap_or_else(|e| panic!("{expression}: {e}"));
        result.value.unwrap_or(Value::Null)
    }

    pub fn text(&self, expression: &str) -> String {
        match self.eval(expression) {
            Value::String(s) => s,
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }

    pub fn count(&self, selector: &str) -> usize {
        let n = self.eval(&format!("document.querySelectorAll({}).length", js_string(selector)));
        n.as_u64().unwrap_or(0) as usize
    }

    /// Waits until `expression` (a JS boolean) is true; fails after a minute, showing the page's text.
    pub fn wait_for(&self, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.eval(expression) != Value::Bool(true) {
            if Instant::now() > deadline {
                panic!("timed out waiting for {expression}; the page shows:\n{}", self.text("document.body.innerText"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the model is ready and the page takes questions.
    pub fn wait_ready(&self) {
        self.wait_for("!document.getElementById('prompt').disabled && !document.getElementById('send').disabled");
    }

    /// Clicks the element with a real mouse event at its position.
    pub fn click(&self, selector: &str) {
        self.tab.find_element(selector).unwrap_or_else(|e| panic!("no {selector}: {e}")).click().unwrap();
    }

    /// Types `text` into the focused element as keyboard input would.
    pub fn insert_text(&self, text: &str) {
        self.tab.call_method(Input::InsertText { text: text.into() }).unwrap();
    }

    /// Focuses `selector`, selects what it holds, and types `text` over it.
    pub fn fill(&self, selector: &str, text: &str) {
        self.click(selector);
        self.eval(&format!("document.querySelector({}).select()", js_string(selector)));
        self.tab.press_key("Delete").unwrap();
        self.insert_text(text);
    }

    pub fn press(&self, key: &str) {
        self.tab.press_key(key).unwrap();
    }

    /// Types a question into the message box and presses Enter.
    pub fn send(&self, text: &str) {
        self.click("#prompt");
        self.insert_text(text);
        self.press("Enter");
    }

    /// Waits until no answer is being written (the Send button is back).
    pub fn wait_answered(&self) {
        self.wait_for(
            "!document.querySelector('.message.streaming') && !document.getElementById('send').hidden \
             && document.getElementById('stop').hidden",
        );
    }

    /// The text of every message of `role` on screen.
    pub fn messages(&self, role: &str) -> Vec<String> {
        let list = self.eval(&format!(
            "JSON.stringify([...document.querySelectorAll('#messages .message.{role} .content')].map(e => e.innerText))"
        ));
        serde_json::from_str(list.as_str().unwrap_or("[]")).unwrap()
    }

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The chat completion requests the page sent, as JSON.
    pub fn chat_requests(&self) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" && r.url.ends_with("/v1/chat/completions"))
            .map(|r| serde_json::from_str(r.body.as_deref().expect("a request body")).unwrap())
            .collect()
    }

    /// Checks the page talked to `origin` alone and its security policy never had to block anything.
    pub fn assert_offline(&self, origin: &str) {
        assert_eq!(self.foreign_requests(origin), Vec::<String>::new(), "requests to other hosts");
        assert_eq!(self.policy_violations(), Vec::<String>::new(), "content the page's policy blocked");
    }

    /// Requests the page made to anywhere but `origin`.
    pub fn foreign_requests(&self, origin: &str) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|r| r.url)
            .filter(|url| !url.starts_with(&format!("{origin}/")) && url != origin && !url.starts_with("blob:"))
            .collect()
    }

    /// What the page's Content-Security-Policy blocked since it loaded.
    pub fn policy_violations(&self) -> Vec<String> {
        let list = self.eval("JSON.stringify(window.__violations || [])");
        serde_json::from_str(list.as_str().unwrap_or("[]")).unwrap()
    }

    /// Emulates the system's colour preference.
    pub fn prefer_dark(&self, dark: bool) {
        let value = if dark { "dark" } else { "light" };
        self.tab
            .call_method(Emulation::SetEmulatedMedia {
                media: None,
                features: Some(vec![Emulation::MediaFeature {
                    name: "prefers-color-scheme".into(),
                    value: value.into(),
                }]),
            })
            .unwrap();
    }

    /// Lets the page download into `dir`.
    pub fn downloads_to(&self, dir: &Path) {
        self.tab
            .call_method(SetDownloadBehavior {
                behavior: SetDownloadBehaviorBehaviorOption::Allow,
                browser_context_id: None,
                download_path: Some(dir.to_str().unwrap().into()),
                events_enabled: None,
            })
            .unwrap();
    }

    /// Hands `path` to the file input `selector`, as choosing it in the file dialog would.
    pub fn choose_file(&self, selector: &str, path: &Path) {
        self.choose_files(selector, &[path]);
    }

    /// Hands several files at once to the file input `selector` (one that takes `multiple`).
    pub fn choose_files(&self, selector: &str, paths: &[&Path]) {
        let paths: Vec<&str> = paths.iter().map(|p| p.to_str().unwrap()).collect();
        self.tab.find_element(selector).unwrap().set_input_files(&paths).unwrap();
    }

    /// Saves a screenshot under target/screenshots for a person to look at.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let png = self.tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// `text` as a JavaScript string literal.
pub fn js_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// Waits for a finished download with this extension in `dir` and returns its path.
pub fn wait_for_file(dir: &Path, extension: &str) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let files: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().filter_map(|e| e.ok().map(|e| e.path())).collect();
        // Chromium first reserves the name with an empty file, writes NAME.crdownload, then renames it over the
        // reserved one: the download is whole once the file has bytes and no .crdownload is left.
        let downloading = files.iter().any(|p| p.extension().is_some_and(|e| e == "crdownload"));
        let found = files.into_iter().find(|p| p.extension().is_some_and(|e| e == extension));
        if let Some(path) = found.filter(|p| !downloading && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)) {
            return path;
        }
        assert!(Instant::now() < deadline, "no .{extension} file was downloaded into {}", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}
