//! The Windows engine on a stick, under wine. Runs where `scripts/build-engine windows` has been run (it writes
//! dist/stove-engine-x86_64-windows.exe, or STOVE_WINDOWS_ENGINE names one, and makes wine's prefix); elsewhere
//! it says why it is skipped.
//!
//! Checks: a stick packed here with that engine holds the Linux bundle, `stove.exe` and a README naming it;
//! `stove.exe` started with no model serves the bundle beside it, its weights mapped out of that file (wine
//! carries a Windows file mapping onto the file itself, so /proc shows it), and answers over HTTP;
//! `--require-signature` and `verify` let a signed bundle through and refuse an unsigned one in its place. The Windows
//! engine as `stove worker` lends its processor to this machine's stove over the link: every layer placed there,
//! the same greedy answer as this machine's alone.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{client, run, scratch, Server};
use serde_json::{json, Value};

/// wine with the prefix `scripts/build-engine windows` made (it holds the DLL Rust programs need under wine 8).
/// One test at a time: each ends wine's session for the prefix when done, which would end another's programs.
struct Wine {
    engine: PathBuf,
    prefix: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Wine {
    fn find() -> Option<Wine> {
        let engine = std::env::var_os("STOVE_WINDOWS_ENGINE")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/stove-engine-x86_64-windows.exe"));
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))?;
        let prefix = cache.join("stove/wine");
        let wine_runs = Command::new("wine").arg("--version").output().is_ok_and(|o| o.status.success());
        let why = if !engine.exists() {
            format!("there is no Windows engine at {}", engine.display())
        } else if !wine_runs {
            "wine is not installed".into()
        } else if !prefix.join("drive_c/windows").exists() {
            format!("wine's prefix {} was not made", prefix.display())
        } else {
            let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            return Some(Wine { engine, prefix, _turn: turn });
        };
        eprintln!("skipped: {why}; `scripts/build-engine windows` builds the engine and sets wine up");
        None
    }

    /// `program` (a Windows file) under wine, quietly.
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("wine");
        command
            .arg(program)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=");
        command
    }
}

impl Wine {
    /// Ends what is left of wine's session for this prefix (its server lingers for a few seconds otherwise).
    fn end_session(&self) {
        let _ = Command::new("wineserver").arg("-k").env("WINEPREFIX", &self.prefix).status();
    }
}

impl Drop for Wine {
    fn drop(&mut self) {
        self.end_session();
    }
}

/// How a Windows program under wine names a file of this machine: on drive Z:, the whole file system.
fn windows_path(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

/// The resident bytes of `file` mapped into the process running `program`, found by its command line (wine
/// starts the Windows program in a process of its own).
fn mapped_by(program: &Path, file: &Path) -> u64 {
    let program = program.file_name().unwrap().to_string_lossy().into_owned();
    let running = std::fs::read_dir("/proc").unwrap().flatten().filter_map(|entry| {
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
        String::from_utf8_lossy(&cmdline).contains(&program).then_some(pid)
    });
    running.map(|pid| common::resident_bytes_of(pid, file)).max().unwrap_or(0)
}

#[test]
fn a_sticks_windows_engine_serves_and_maps_the_bundle_beside_it() {
    let Some(wine) = Wine::find() else { return };
    let keys = scratch().join("windows-stick-key");
    assert!(run(&["keygen", "-o", keys.to_str().unwrap()]).status.success());
    let stick = scratch().join("windows-stick");
    let model = common::model();
    let packed = run(&[
        "pack",
        "--model",
        model.to_str().unwrap(),
        "--stick",
        stick.to_str().unwrap(),
        "--stick-engine",
        wine.engine.to_str().unwrap(),
        "--sign",
        keys.with_extension("key").to_str().unwrap(),
    ]);
    assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));
    let bundle_name = format!("{}.stove", model.file_stem().unwrap().to_string_lossy());
    let mut names: Vec<String> =
        std::fs::read_dir(&stick).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["README.txt", bundle_name.as_str(), "stove.exe"]);
    let readme = std::fs::read_to_string(stick.join("README.txt")).unwrap();
    assert!(readme.contains("double-click stove.exe (it serves"), "{readme}");
    assert!(readme.contains("stove.exe verify") && readme.contains("Windows (x86-64)"), "{readme}");
    let windows_engine = stick.join("stove.exe");

    // Asked a question with no model: the one beside it, checked against the required key.
    let public = windows_path(&keys.with_extension("pub"));
    let asked = wine
        .command(&windows_engine)
        .args(["chat", "--require-signature", &public, "--temperature", "0", "--max-tokens", "24"])
        .args(["-p", "List the days of the week."])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&asked.stderr).into_owned();
    assert!(asked.status.success(), "{said}");
    let serving = said.lines().find(|line| line.contains("holds no model; serving")).unwrap_or_default();
    assert!(serving.contains(&bundle_name), "{said}");
    assert!(said.contains("verified, signed by the required key"), "{said}");
    assert!(String::from_utf8_lossy(&asked.stdout).contains("Monday"), "{said}");
    // `verify` checks the bundle it serves.
    let verify = || wine.command(&windows_engine).args(["verify", "--key", &public]).output().unwrap();
    let verified = verify();
    let report = String::from_utf8_lossy(&verified.stdout).into_owned();
    assert_eq!(verified.status.code(), Some(0), "{report}{}", String::from_utf8_lossy(&verified.stderr));
    assert!(report.contains(&bundle_name) && report.contains("intact and validly signed"), "{report}");

    // Serving: the weights are pages of the bundle beside it, as when a bundle maps its own.
    let mut serve = wine.command(&windows_engine);
    serve.args(["--port", "0", "--no-browser", "--threads", "1"]);
    let server = Server::launch(serve);
    server.wait_healthy();
    let (status, reply) = server.chat(json!({
        "messages": [{ "role": "user", "content": "List the days of the week." }],
        "temperature": 0,
        "max_tokens": 24,
    }));
    assert_eq!(status, 200, "{reply}");
    assert!(reply["choices"][0]["message"]["content"].as_str().unwrap().contains("Monday"), "{reply}");
    let model_size = std::fs::metadata(&model).unwrap().len();
    let resident = mapped_by(&windows_engine, &stick.join(&bundle_name));
    assert!(resident > model_size * 9 / 10, "only {resident} bytes of the bundle are mapped and resident");
    drop(server);

    // An unsigned bundle in its place: refused for want of a signature.
    std::fs::remove_file(stick.join(&bundle_name)).unwrap();
    common::pack(&stick.join(&bundle_name), &[]);
    let refused =
        wine.command(&windows_engine).args(["chat", "--require-signature", &public, "-p", "Hello"]).output().unwrap();
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("is not signed, and --require-signature asks for a signature"), "{said}");
    assert_eq!(verify().status.code(), Some(3), "verify: intact but not signed");
}

#[test]
fn a_windows_worker_lends_its_processor_to_this_machine() {
    let Some(wine) = Wine::find() else { return };
    let model = common::model();
    let model = model.to_str().unwrap();
    let prompt = "Name three colours of the rainbow.";
    let expected = Server::greedy_alone(prompt);

    // On loopback a worker takes any key from this machine. Its first line says where it listens (ggml's own
    // banner kept out).
    let mut worker = wine
        .command(&wine.engine)
        .args(["worker", "--listen", "127.0.0.1:0", "--threads", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(worker.stdout.take().unwrap()).lines();
    let first = stdout.next().and_then(Result::ok).unwrap_or_default();
    std::thread::spawn(move || stdout.for_each(drop));
    let stderr = worker.stderr.take().unwrap();
    let said = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());
    let address = first.strip_prefix("stove worker: lending CPU").and_then(|rest| rest.rsplit(" on ").next());
    let Some(address) = address.map(str::to_string) else {
        let _ = worker.kill();
        panic!("the Windows worker's first line is {first:?}: {:?}", said.join().unwrap());
    };

    let server = Server::start(&common::engine(), &["--model", model, "--worker", &address]);
    assert_eq!(server.greedy(prompt), expected, "the same greedy answer as on this machine alone");
    let info: Value = client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap();
    let listed = &info["workers"][0];
    assert_eq!(listed["state"], "connected", "{info}");
    assert!(listed["bytes_sent"].as_u64().unwrap() > 1_000_000, "weights went to the worker: {info}");
    let offload = &info["runtime"]["offload"];
    assert_eq!(offload["layers"], offload["total_layers"], "every layer placed on the worker: {offload}");
    drop(server);
    let _ = worker.kill();
    let _ = worker.wait();
    wine.end_session();
    let said = said.join().unwrap();
    assert!(said.iter().any(|line| line.starts_with("worker: serving 127.0.0.1:")), "{said:?}");
}
