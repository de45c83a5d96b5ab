//! Test fixture: the real stove binary, the real default model, a bundle packed once per test binary, and
//! servers started on a free port that are killed when dropped.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

pub fn stove() -> Command {
    Command::new(engine())
}

/// The engine as built (no model of its own): serve a GGUF with `--model`.
pub fn engine() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_stove"))
}

/// The default model, fetched by `scripts/fetch-model.sh` (which `.ci/run` calls first).
pub fn model() -> PathBuf {
    let path = match std::env::var_os("STOVE_TEST_MODEL") {
        Some(path) => PathBuf::from(path),
        None => {
            let output = Command::new("bash")
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-model.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("run scripts/fetch-model.sh");
            assert!(output.status.success(), "scripts/fetch-model.sh failed");
            PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
        }
    };
    assert!(path.is_file(), "no model at {}; run scripts/fetch-model.sh", path.display());
    path
}

/// A scratch directory for this test binary, removed when the binary exits.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    // A static is never dropped, so a TempDir here was never removed: every run left its bundles (over 1 GB)
    // behind in the temporary folder until the disk filled.
    extern "C" fn remove_scratch() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir").keep();
        // SAFETY: registers a plain function without captures, run once at normal exit.
        unsafe { libc::atexit(remove_scratch) };
        dir
    })
}

/// The test venv's Python (`scripts/setup.sh --test`), with openai, anthropic and gguf.
pub fn python() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let path = std::env::var_os("STOVE_TEST_PYTHON").map(PathBuf::from).unwrap_or(cache.join("stove/venv/bin/python"));
    assert!(path.is_file(), "no test Python at {}; run scripts/setup.sh --test", path.display());
    path
}

/// A fixture file (or folder) made once per test binary in the scratch folder: `writer(out)` is the command
/// that writes `out` (a script of the test venv's Python). Its output is shown only when it fails.
pub fn generated(name: &str, writer: impl FnOnce(&Path) -> Command) -> &'static Path {
    static MADE: std::sync::Mutex<Vec<(String, &'static Path)>> = std::sync::Mutex::new(Vec::new());
    // Held while writing: two tests asking for the same fixture wait for one writer.
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = made.iter().find(|(n, _)| n == name) {
        return path;
    }
    let out: &'static Path = Box::leak(scratch().join(name).into_boxed_path());
    let output = writer(out).output().expect("run the fixture's writer");
    assert!(
        output.status.success(),
        "writing the fixture {name} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    made.push((name.to_string(), out));
    out
}

/// The test venv's Python running `script` (a path under tests/) with `args`.
pub fn python_script(script: &str, args: &[&std::ffi::OsStr]) -> Command {
    let mut command = Command::new(python());
    command.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(script)).args(args);
    command
}

/// Runs `stove` with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    stove().args(args).stdin(Stdio::null()).output().expect("run stove")
}

/// Runs a program this test process has just written. When another test thread forks while the file is being
/// written, its child holds a copy of the writing descriptor until it execs, and until then Linux refuses to run
/// the file ("Text file busy", ETXTBSY); that clears within moments, so the run is tried again on that error only.
pub fn output_of_written_program(command: &mut Command) -> Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match command.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            result => return result.expect("run the program"),
        }
    }
}

/// Packs `model` into `out` with extra arguments; panics with stove's stderr if it fails.
pub fn pack(out: &Path, extra: &[&str]) {
    let output = pack_output(out, extra);
    assert!(output.status.success(), "pack failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// Packs `model` into `out` with extra arguments and returns stove's output, whether it packed or refused.
pub fn pack_output(out: &Path, extra: &[&str]) -> Output {
    let model = model();
    let mut args = vec!["pack", "--model", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

/// Changes one byte of `path` at `offset` in place, as a failing stick or a bad copy would (for `verify` and
/// `--require-signature` to find).
pub fn damage(path: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&[byte[0] ^ 0x55]).unwrap();
}

/// The byte a part starts at, from `stove info`'s line for it (`  {label}… at byte N…`).
pub fn offset_in_info(info: &str, label: &str) -> u64 {
    info.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(label)?.split(" at byte ").nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no {label:?} line with its offset in stove info: {info}"))
}

/// The default model packed once, with a small context to keep tests light.
pub fn bundle() -> &'static Path {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let out = scratch().join("smol.stove");
        pack(&out, &["--", "--ctx-size", "1024"]);
        out
    })
}

/// A running `stove serve`, killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    /// Starts `program` (a bundle or the engine) with `args` plus `--port 0 --no-browser`, and waits until
    /// `/health` answers 200.
    pub fn start(program: &Path, args: &[&str]) -> Server {
        let server = Server::spawn(program, args);
        server.wait_healthy();
        server
    }

    /// Starts it and returns once it has printed its URL, without waiting for the model.
    pub fn spawn(program: &Path, args: &[&str]) -> Server {
        Server::spawn_on(program, 0, args)
    }

    /// Starts it on `port` (0: any free one) and waits for `/health`, as [`Server::start`].
    pub fn start_on(program: &Path, port: u16, args: &[&str]) -> Server {
        let server = Server::spawn_on(program, port, args);
        server.wait_healthy();
        server
    }

    fn spawn_on(program: &Path, port: u16, args: &[&str]) -> Server {
        Server::launch(Server::command(program, port, args))
    }

    fn command(program: &Path, port: u16, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        // One thread each: several test servers share two cores, and llama.cpp's spinning threads would fight.
        command.args(args).args(["--port", &port.to_string(), "--no-browser", "--threads", "1"]);
        command
    }

    /// As [`Server::start`], with standard error written to `log` rather than a pipe: a `--verbose` server
    /// writes more than a pipe holds while nobody reads it.
    pub fn start_logged(program: &Path, args: &[&str], log: &Path) -> Server {
        let log = std::fs::File::create(log).expect("create the log");
        let server = Server::launch_with(Server::command(program, 0, args), Stdio::from(log));
        server.wait_healthy();
        server
    }

    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("the URL ends with the port")
    }

    /// `/metrics` as text.
    pub fn metrics(&self) -> String {
        client().get(format!("{}/metrics", self.url)).send().unwrap().text().unwrap()
    }

    /// Waits until `/metrics` holds every one of `lines` (such as `stove_slots_busy 0`).
    pub fn wait_metrics(&self, lines: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let metrics = self.metrics();
            if lines.iter().all(|line| metrics.lines().any(|l| l == *line)) {
                return;
            }
            assert!(Instant::now() < deadline, "/metrics never showed {lines:?}:\n{metrics}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `command` (stdout and stderr piped) and returns once it has printed its URL.
    pub fn launch(command: Command) -> Server {
        Server::launch_with(command, Stdio::piped())
    }

    fn launch_with(mut command: Command, stderr: Stdio) -> Server {
        let mut child =
            command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(stderr).spawn().expect("start stove");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).expect("read stove's first line");
        let Some(url) = line.trim().split(" at ").nth(1).map(|u| u.trim_end_matches('/').to_string()) else {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!("stove printed no URL: {line:?}; stderr: {}", String::from_utf8_lossy(&output.stderr));
        };
        Server { child, url }
    }

    /// Stops the server and returns what it wrote to stderr.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
        }
        stderr
    }

    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let client = client();
        loop {
            if let Ok(response) = client.get(format!("{}/health", self.url)).send() {
                if response.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "stove did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The greedy answer (temperature 0, 40 tokens at most) to one user message: the same on every run of the
    /// same model, so two ways of running it can be compared word for word.
    pub fn greedy(&self, prompt: &str) -> String {
        let (status, body) = self.chat(serde_json::json!({
            "messages": [{ "role": "user", "content": prompt }],
            "max_tokens": 40,
            "temperature": 0,
        }));
        assert_eq!(status, 200, "{body}");
        body["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    }

    /// The greedy answer of the engine serving the default model on this machine alone: what other ways of
    /// running it (on workers, on another system's engine) are compared with.
    pub fn greedy_alone(prompt: &str) -> String {
        let model = model();
        Server::start(&engine(), &["--model", model.to_str().unwrap()]).greedy(prompt)
    }

    /// POSTs a chat completion and returns (status, JSON body).
    pub fn chat(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let response = client().post(format!("{}/v1/chat/completions", self.url)).json(&body).send().expect("POST");
        let status = response.status().as_u16();
        (status, response.json().expect("a JSON body"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// Reads a server-sent event stream to its end: the text of every chunk (chat `delta.content` or completion
/// `text`), and the chunks. Fails on an error event or a missing `[DONE]`.
pub fn read_stream(response: reqwest::blocking::Response) -> (String, Vec<Value>) {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let mut chunks = Vec::new();
    let mut saw_done = false;
    for line in BufReader::new(response).lines() {
        let line = line.unwrap();
        let Some(data) = line.strip_prefix("data: ") else { continue };
        if data == "[DONE]" {
            saw_done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).unwrap();
        assert!(chunk.get("error").is_none(), "{chunk}");
        let choice = &chunk["choices"][0];
        text.push_str(choice["delta"]["content"].as_str().or(choice["text"].as_str()).unwrap_or_default());
        chunks.push(chunk);
    }
    assert!(saw_done, "the stream must end with [DONE]");
    (text, chunks)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The resident bytes of every mapping of `file` in process `pid` (from /proc/PID/smaps): how much of a file
/// the process reads through mapped pages rather than copies. 0 when the process is gone or maps none of it.
pub fn resident_bytes_of(pid: u32, file: &Path) -> u64 {
    let Ok(smaps) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else { return 0 };
    let file = file.canonicalize().unwrap().display().to_string();
    let mut in_file = false;
    let mut rss_kb = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_file = line.trim_end().ends_with(&file);
        } else if in_file && line.starts_with("Rss:") {
            rss_kb += line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap();
        }
    }
    rss_kb * 1024
}
