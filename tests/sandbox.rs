//! The sandbox (src/sandbox.rs), proved from inside a running server: gdb attaches to the real process and
//! makes each of its threads call `open` and `socket` itself, the way code smuggled in through a bug would.
//! The kernel's answers, not stove's report of them, are what the tests check; `--no-sandbox` is the control
//! that shows the same probe does open the file when nothing confines the process.
//!
//! Needs gdb (`scripts/setup.sh --test` installs it) and a kernel with Landlock and seccomp (Linux 5.13+ with
//! Landlock enabled, as Debian, Ubuntu and Fedora ship it).

mod common;

use std::path::Path;
use std::process::Command;

use common::{client, Server};
use serde_json::Value;

/// Runs each gdb expression in every thread of `pid` and returns the printed values, thread by thread.
fn in_every_thread(pid: u32, expressions: &[&str]) -> Vec<Vec<i64>> {
    // A bound on gdb itself, so a stalled attach fails the test instead of hanging it.
    let mut command = Command::new("timeout");
    command.args(["120", "gdb", "-p", &pid.to_string(), "-batch", "-nx"]);
    for expression in expressions {
        command.args(["-ex", &format!("thread apply all print {expression}")]);
    }
    // No debug-info downloads (there is no network) and no pager or questions.
    command.args(["-iex", "set debuginfod enabled off"]);
    let output = command.output().expect("run gdb: install it with scripts/setup.sh --test");
    let text = String::from_utf8_lossy(&output.stdout);
    // Output: per expression, per thread: "Thread N (...):" then "$K = VALUE".
    let values: Vec<i64> =
        text.lines().filter_map(|line| line.strip_prefix('$')?.split_once(" = ")?.1.trim().parse().ok()).collect();
    let threads = text.lines().filter(|l| l.starts_with("Thread ")).count() / expressions.len().max(1);
    assert!(
        threads >= 2 && values.len() == threads * expressions.len(),
        "gdb could not run the probe in stove's threads (can this user ptrace its own processes?):\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    values.chunks(threads).map(<[i64]>::to_vec).collect()
}

/// `open(path, O_RDONLY)` as gdb calls it (libc has no debug types here, so the call is cast): the descriptor,
/// or minus errno, read in the same expression so that nothing else in the thread can change errno between.
fn open(path: &Path) -> String {
    or_errno(&format!("((int(*)(const char*,int))open)(\"{}\", 0)", path.display()))
}

/// `socket(AF_INET, SOCK_STREAM, 0)`, the first step of any connection out, as [`open`] reports it.
fn tcp_socket() -> String {
    or_errno("((int(*)(int,int,int))socket)(2, 1, 0)")
}

fn or_errno(call: &str) -> String {
    format!("($r = (int){call}) < 0 ? -*((int*(*)(void))__errno_location)() : $r")
}

const EACCES: i64 = 13;

fn proc_status(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(field)).map(|v| v.trim().to_string()).unwrap_or_default()
}

fn info(server: &Server) -> Value {
    client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap()
}

/// A file of the person's, outside everything the sandbox lets the server read.
fn secret() -> std::path::PathBuf {
    let path = common::scratch().join("letters/secret.txt");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, "not for the model").unwrap();
    path
}

#[test]
fn a_running_server_cannot_open_other_files_or_connect_out_from_any_thread() {
    let secret = secret();
    // The engine serving a bundle's model. (Started as the bundle itself, the same sandbox applies, as every
    // other test shows by chatting through it, but gdb stalls attaching to a process whose libraries are memory
    // files.)
    let bundle = common::bundle();
    let server = Server::start(&common::engine(), &["--model", bundle.to_str().unwrap()]);
    let pid = server.pid();
    assert_eq!(proc_status(pid, "NoNewPrivs:"), "1");
    assert_eq!(proc_status(pid, "Seccomp:"), "2", "2 is a seccomp filter");

    let results = in_every_thread(pid, &[&open(&secret), &tcp_socket(), &open(bundle)]);
    let (opened, socket, bundle_fd) = (&results[0], &results[1], &results[2]);
    assert!(
        opened.iter().all(|&r| r == -EACCES),
        "{} opened, or not refused with EACCES: {opened:?}",
        secret.display()
    );
    assert!(socket.iter().all(|&r| r == -EACCES), "a TCP socket made, or not refused with EACCES: {socket:?}");
    // What it needs stays open: its own file, from every thread (so the probe itself works).
    assert!(bundle_fd.iter().all(|&fd| fd >= 0), "the bundle itself could not be opened: {bundle_fd:?}");

    // After all that, it still answers.
    let (status, body) = server.chat(serde_json::json!({
        "messages": [{"role": "user", "content": "Which city is the capital of France?"}],
        "max_tokens": 16, "temperature": 0
    }));
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["message"]["content"].as_str().unwrap().contains("Paris"), "{body}");

    let sandbox = &info(&server)["sandbox"];
    assert_eq!(sandbox["enabled"], true, "{sandbox}");
    assert_ne!(sandbox["landlock"], "none", "this kernel must have Landlock for the sandbox proof: {sandbox}");
    assert_eq!(sandbox["seccomp"], true, "{sandbox}");
    assert_eq!(sandbox["landlock_all_threads"], true, "{sandbox}");
    assert!(sandbox["summary"].as_str().unwrap().contains("no writes, programs or connections"), "{sandbox}");
}

#[test]
fn without_the_sandbox_the_same_probe_opens_the_file() {
    let secret = secret();
    let model = common::model();
    let server = Server::start(&common::engine(), &["--model", model.to_str().unwrap(), "--no-sandbox"]);
    let pid = server.pid();
    assert_eq!(proc_status(pid, "Seccomp:"), "0");
    let results = in_every_thread(pid, &[&open(&secret), &tcp_socket()]);
    assert!(results[0].iter().all(|&fd| fd >= 0), "open failed without a sandbox: {:?}", results[0]);
    assert!(results[1].iter().all(|&fd| fd >= 0), "socket failed without a sandbox: {:?}", results[1]);
    let sandbox = &info(&server)["sandbox"];
    assert_eq!(sandbox["enabled"], false, "{sandbox}");
    assert_eq!(sandbox["summary"], "not confined (--no-sandbox)", "{sandbox}");
}

#[test]
fn a_served_gguf_stays_readable_and_the_chat_command_is_confined_too() {
    let model = common::model();
    // `chat -p` loads the model after confining itself: an answer proves the model's file stayed readable.
    let output = common::run(&[
        "--model",
        model.to_str().unwrap(),
        "chat",
        "-p",
        "Which city is the capital of France?",
        "--max-tokens",
        "16",
        "--temperature",
        "0",
        "--threads",
        "1",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("sandbox:"), "a layer was missing");

    let info = common::run(&["info", model.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("sandbox      Landlock") && text.contains("seccomp"), "{text}");
}
