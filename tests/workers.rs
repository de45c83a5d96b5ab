//! Several machines (src/rpc/): `stove worker` lends its devices, `--worker` borrows them, over stove's own
//! authenticated, encrypted link. All on this one machine, over loopback: the main instance and two workers
//! are separate processes that talk only through their TCP ports, as they would across a network.

mod common;
#[path = "browser/page.rs"]
mod page;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{client, stove, Server};
use serde_json::{json, Value};

/// A key pair made by `stove keygen` in the scratch folder: (PREFIX.key, PREFIX.pub).
fn keygen(name: &str) -> (PathBuf, PathBuf) {
    // The tests run at once and share keys; keygen never overwrites, so one makes each.
    static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let prefix = common::scratch().join(format!("workers-{name}"));
    if !prefix.with_extension("key").exists() {
        let output = common::run(&["keygen", "-o", prefix.to_str().unwrap()]);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    (prefix.with_extension("key"), prefix.with_extension("pub"))
}

/// A running `stove worker`: its address, and its standard error line by line (what it says about peers).
struct Worker {
    child: Child,
    address: String,
    said: mpsc::Receiver<String>,
}

impl Worker {
    /// Starts `stove worker` on a free loopback port with `args`, and returns once it says where it listens.
    fn start(args: &[&str]) -> Worker {
        let mut child = stove()
            .args(["worker", "--listen", "127.0.0.1:0", "--threads", "1"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start stove worker");
        // The first line says where it listens (ggml's own server's banner, naming its loopback port, is kept
        // out). The rest is read on, so the worker never writes to a closed pipe.
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = stdout.next().and_then(Result::ok).unwrap_or_default();
        let address = first.strip_prefix("stove worker: lending ").and_then(|rest| rest.rsplit(" on ").next());
        let address = address.map(str::to_string);
        std::thread::spawn(move || stdout.for_each(drop));
        let Some(address) = address else {
            let output = child.wait_with_output().unwrap();
            panic!(
                "the worker's first line is {first:?}, not where it listens: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let (tell, said) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tell.send(line);
            }
        });
        Worker { child, address, said }
    }

    /// The next line the worker writes that contains `text` (earlier ones are skipped).
    fn wait_for(&self, text: &str) -> String {
        loop {
            let line = self.said.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("no {text:?}"));
            if line.contains(text) {
                return line;
            }
        }
    }

    /// `--worker` for this worker, naming its public key.
    fn spec(&self, key: &Path) -> String {
        format!("{}@{}", self.address, key.display())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn info(server: &Server) -> Value {
    client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap()
}

/// The main instance's arguments for the default model and these workers.
fn main_args<'a>(model: &'a str, identity: &'a str, workers: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["--model", model, "--identity", identity];
    for worker in workers {
        args.extend(["--worker", worker.as_str()]);
    }
    args
}

#[test]
fn two_workers_take_every_layer_and_answer_as_this_machine_does() {
    let model = common::model();
    let model = model.to_str().unwrap();
    let prompt = "Name three colours of the rainbow.";
    let expected = Server::greedy_alone(prompt);

    let (main_key, main_pub) = keygen("main");
    let (one_key, one_pub) = keygen("one");
    let (two_key, two_pub) = keygen("two");
    let allow = ["--allow-key", main_pub.to_str().unwrap()];
    let one = Worker::start(&[&["--identity", one_key.to_str().unwrap()][..], &allow].concat());
    let two = Worker::start(&[&["--identity", two_key.to_str().unwrap()][..], &allow].concat());
    let workers = [one.spec(&one_pub), two.spec(&two_pub)];
    let mut args = main_args(model, main_key.to_str().unwrap(), &workers);
    args.push("--verbose");
    let log = common::scratch().join("workers-main.log");
    let server = Server::start_logged(&common::engine(), &args, &log);
    one.wait_for("worker: serving");
    two.wait_for("worker: serving");

    assert_eq!(server.greedy(prompt), expected, "the same greedy answer as on this machine alone");
    let info = info(&server);
    let listed = info["workers"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{info}");
    for (worker, address) in listed.iter().zip([&one.address, &two.address]) {
        assert_eq!(worker["address"], address.as_str());
        assert_eq!(worker["state"], "connected");
        assert!(worker["bytes_sent"].as_u64().unwrap() > 1_000_000, "weights went to {address}: {worker}");
    }
    let offload = &info["runtime"]["offload"];
    assert_eq!(offload["layers"], offload["total_layers"], "every layer placed on the workers: {offload}");

    // A worker serves one instance at a time: another is turned away and told why.
    let mut second = Command::new(common::engine());
    second.args(["--model", model, "--worker", &workers[0], "--identity", main_key.to_str().unwrap()]);
    let output = second.args(["--port", "0", "--no-browser"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("it is busy: this worker serves another stove instance"), "{said}");
    assert!(one.wait_for("turned").contains("away: serving"));

    // llama.cpp's own log: it uses both workers' devices, places the layers as the plan said, and offloads
    // every one.
    drop(server);
    let log = std::fs::read_to_string(&log).unwrap();
    for share in offload["split"].as_array().unwrap() {
        let device = share["device"].as_str().unwrap();
        assert!(log.contains(&format!("using device {device}")), "llama.cpp uses {device}:\n{log}");
        let placed = log.lines().filter(|l| l.contains(&format!("assigned to device {device},"))).count() as u64;
        let planned = share["layers"].as_u64().unwrap() + u64::from(share["output"] == true);
        assert_eq!(placed, planned, "{device}: the plan said {share}");
    }
    let offloaded = log.lines().find(|l| l.contains("load_tensors: offloaded")).expect("llama.cpp's offload line");
    // llama.cpp counts the output layer as one more.
    let all = offload["total_layers"].as_u64().unwrap() + 1;
    assert!(offloaded.ends_with(&format!("offloaded {all}/{all} layers to GPU")), "{offloaded}");
}

#[test]
fn strangers_garbage_and_silence_are_refused_and_the_worker_keeps_serving() {
    let model = common::model();
    let model = model.to_str().unwrap();
    let (main_key, main_pub) = keygen("main");
    let (stranger_key, _) = keygen("stranger");
    let (worker_key, worker_pub) = keygen("one");
    let worker =
        Worker::start(&["--identity", worker_key.to_str().unwrap(), "--allow-key", main_pub.to_str().unwrap()]);
    let spec = worker.spec(&worker_pub);

    // A peer that connects and says nothing holds no one up.
    let silent = TcpStream::connect(&worker.address).unwrap();

    // A key the worker was not given, and no key at all: the main instance does not start, and says why.
    for identity in [Some(stranger_key.to_str().unwrap()), None] {
        let mut command = Command::new(common::engine());
        command.args(["--model", model, "--worker", &spec, "--port", "0", "--no-browser"]);
        if let Some(identity) = identity {
            command.args(["--identity", identity]);
        }
        let output = common::output_of_written_program(&mut command);
        assert_eq!(output.status.code(), Some(1));
        let said = String::from_utf8_lossy(&output.stderr);
        assert!(said.contains(&format!("worker {}", worker.address)), "{said}");
        assert!(said.contains("does not accept this instance's key"), "{said}");
        let line = worker.wait_for("refused");
        assert!(line.contains("is not one this worker accepts"), "{line}");
    }

    // Garbage, and a handshake's first message replayed from a recording: nothing reaches ggml.
    let mut garbage = TcpStream::connect(&worker.address).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: worker\r\n\r\n").unwrap();
    garbage.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(worker.wait_for("refused").contains("does not speak stove's link"));
    let first = recorded_first_message(&worker, &spec, model, &main_key);
    for _ in 0..2 {
        let mut replay = TcpStream::connect(&worker.address).unwrap();
        replay.write_all(&first).unwrap();
        let mut answer = [0u8; 2];
        replay.read_exact(&mut answer).unwrap();
        // The third message cannot be forged without the first one's secret: here, noise.
        replay.write_all(&[0, 96]).unwrap();
        replay.write_all(&[0u8; 96]).unwrap();
        assert!(worker.wait_for("refused").contains("does not speak stove's link"));
    }

    // The right key is served, while the silent peer is still connected.
    let server = Server::start(&common::engine(), &main_args(model, main_key.to_str().unwrap(), &[spec]));
    worker.wait_for("worker: serving");
    assert!(!server.greedy("Say hello.").is_empty());
    drop(silent);

    // A worker open to the network without a key it accepts does not start.
    let output = stove().args(["worker", "--listen", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--allow-key"));
}

/// The first link message a real main instance sends `worker`, recorded by a relay in between (the main
/// instance dials the relay, which it believes is the worker).
fn recorded_first_message(worker: &Worker, spec: &str, model: &str, key: &Path) -> Vec<u8> {
    let relay = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_address = relay.local_addr().unwrap();
    let to = worker.address.clone();
    let recorder = std::thread::spawn(move || {
        let (mut from_main, _) = relay.accept().unwrap();
        let mut length = [0u8; 2];
        from_main.read_exact(&mut length).unwrap();
        let mut message = vec![0u8; u16::from_be_bytes(length) as usize];
        from_main.read_exact(&mut message).unwrap();
        // Passed on, so the worker sees a whole (refused) handshake rather than a half one.
        let mut to_worker = TcpStream::connect(&to).unwrap();
        to_worker.write_all(&length).unwrap();
        to_worker.write_all(&message).unwrap();
        [length.to_vec(), message].concat()
    });
    let relayed = spec.replacen(&worker.address, &relay_address.to_string(), 1);
    // The main instance waits for an answer the relay never gives; only its first message matters.
    let mut main = Command::new(common::engine())
        .args(["--model", model, "--worker", &relayed, "--identity", key.to_str().unwrap(), "--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = recorder.join().unwrap();
    let _ = main.kill();
    let _ = main.wait();
    worker.wait_for("refused");
    first
}

#[test]
fn an_unreachable_worker_stops_the_start_unless_it_is_optional() {
    let model = common::model();
    let model = model.to_str().unwrap();
    // A port nothing listens on.
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let mut command = Command::new(common::engine());
    command.args(["--model", model, "--worker", &address, "--port", "0", "--no-browser"]);
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains(&format!("worker {address}: cannot connect")) && said.contains("--worker-optional"),
        "{said}"
    );

    let server = Server::start(&common::engine(), &["--model", model, "--worker", &address, "--worker-optional"]);
    assert!(!server.greedy("Say hello.").is_empty());
    assert_eq!(info(&server)["workers"].as_array().unwrap().len(), 0);
    let said = server.stop();
    assert!(said.contains(&format!("worker {address}: not used (--worker-optional)")), "{said}");
}

#[test]
fn a_worker_killed_mid_answer_ends_it_with_an_error_and_the_server_stays_up() {
    let model = common::model();
    let model = model.to_str().unwrap();
    let (main_key, main_pub) = keygen("main");
    let (worker_key, worker_pub) = keygen("one");
    let cache = common::scratch().join("workers-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let worker_args = [
        "--identity",
        worker_key.to_str().unwrap(),
        "--allow-key",
        main_pub.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
    ];
    let worker = Worker::start(&worker_args);
    let spec = [worker.spec(&worker_pub)];
    let args = main_args(model, main_key.to_str().unwrap(), &spec);
    let server = Server::start(&common::engine(), &args);
    let prompt = "Say something about the sea.";
    let expected = server.greedy(prompt);
    let first_transfer = info(&server)["workers"][0]["bytes_sent"].as_u64().unwrap();
    // The page's model panel shows the worker, what it holds, and that it is there.
    let page = page::Page::open(&server.url);
    page.wait_ready();
    page.click("#toggle-panel");
    let facts = page.text("document.getElementById('model-facts').innerText");
    let address = worker.address.clone();
    assert!(facts.contains(&format!("{address} · 30 layers and the output · connected")), "{facts}");

    // A long streamed answer; the worker dies after its first piece.
    let response = client()
        .post(format!("{}/v1/chat/completions", server.url))
        .json(&json!({
            "messages": [{"role": "user", "content": "List the numbers from 1 to 300, one per line."}],
            "max_tokens": 2000,
            "temperature": 0,
            "stream": true,
        }))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut lines = BufReader::new(response).lines();
    let first = lines.by_ref().find(|l| l.as_ref().is_ok_and(|l| l.starts_with("data: "))).unwrap().unwrap();
    assert!(first.contains("choices"), "{first}");
    drop(worker); // SIGKILL
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let error = rest.iter().find(|l| l.contains("\"error\"")).unwrap_or_else(|| panic!("no error event: {rest:?}"));
    assert!(error.contains("cannot be used any more"), "{error}");

    // The server is up, says why it cannot answer, and refuses new requests with 503.
    let health = client().get(format!("{}/health", server.url)).send().unwrap();
    assert_eq!(health.status(), 503);
    let health: Value = health.json().unwrap();
    assert_eq!(health["status"], "unusable", "{health}");
    assert_eq!(health["workers"][0]["state"], "lost", "{health}");
    let (status, body) = server.chat(json!({"messages": [{"role": "user", "content": "Hello"}]}));
    assert_eq!(status, 503, "{body}");
    let down = format!("stove_worker_up{{worker=\"{address}\"}} 0");
    assert!(server.metrics().lines().any(|l| l == down), "{down}");
    // The page notices while it sits idle: it says why, takes no question, and shows the worker lost.
    page.wait_for("document.getElementById('status').textContent.includes('cannot be used any more')");
    page.wait_for("document.getElementById('prompt').disabled || document.getElementById('send').disabled");
    let facts = page.text("document.getElementById('model-facts').innerText");
    assert!(facts.contains(&format!("{address} · 30 layers and the output · lost: worker")), "{facts}");
    drop(page);
    drop(server);

    // Worker and main instance restarted: the same answer, and the weights ggml cached are not sent again.
    let worker = Worker::start(&worker_args);
    let spec = [worker.spec(&worker_pub)];
    let args = main_args(model, main_key.to_str().unwrap(), &spec);
    let server = Server::start(&common::engine(), &args);
    assert_eq!(server.greedy(prompt), expected);
    let second_transfer = info(&server)["workers"][0]["bytes_sent"].as_u64().unwrap();
    assert!(
        second_transfer + 10_000_000 < first_transfer,
        "the tensor cache spared the large weights: {first_transfer} bytes the first time, {second_transfer} the second"
    );
}
