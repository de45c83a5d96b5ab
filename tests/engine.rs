//! The engine a stove file carries: ggml's score picks the CPU variant (the best on this machine, a baseline
//! on a processor without AVX, run under qemu), the files are loaded from memory, from a verified per-user
//! cache, or from a temporary directory that is removed, and no engine file needs a C++ runtime, OpenMP,
//! OpenSSL or a glibc newer than 2.28 from the host.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{bundle, scratch, Server};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `stove info` of the bundle, run with `env` set.
fn info(env: &[(&str, &Path)]) -> String {
    let mut command = Command::new(bundle());
    command.arg("info").stdin(Stdio::null());
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(output.status.success(), "info failed: {}", stderr(&output));
    stdout(&output)
}

/// From `cpu variant  haswell (ggml's score of each: x64=1 sse42=2 …)`: the chosen variant and the scores.
fn chosen_variant(info: &str) -> (String, Vec<(String, i32)>) {
    let line = info.lines().find(|l| l.trim_start().starts_with("cpu variant")).expect("a cpu variant line");
    let rest = line.trim_start().trim_start_matches("cpu variant").trim();
    let (chosen, scores) = rest.split_once(" (ggml's score of each: ").expect("scores listed");
    let scores = scores
        .trim_end_matches(')')
        .split(' ')
        .map(|pair| {
            let (name, score) = pair.split_once('=').unwrap();
            (name.to_string(), score.parse().unwrap())
        })
        .collect();
    (chosen.to_string(), scores)
}

#[test]
fn this_machine_gets_the_variant_ggml_rates_best() {
    let info = info(&[]);
    let (chosen, scores) = chosen_variant(&info);
    assert!(scores.len() >= 10, "the x86-64 engine carries ggml's CPU variants: {info}");
    let best = scores.iter().max_by_key(|(_, score)| *score).unwrap();
    assert_eq!(chosen, best.0, "{info}");
    // The processor's own features bound the choice: with AVX2 nothing older than haswell-class code is used.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    if cpuinfo.contains(" avx2") {
        assert!(!["x64", "sse42", "sandybridge", "ivybridge"].contains(&chosen.as_str()), "{info}");
    }
    assert!(info.contains("loaded from memory"), "{info}");

    let server = Server::start(bundle(), &[]);
    let info_json: serde_json::Value =
        common::client().get(format!("{}/stove/info", server.url)).send().unwrap().json().unwrap();
    assert_eq!(info_json["runtime"]["cpu_variant"], chosen.as_str(), "{info_json}");
    let log = server.stop();
    assert!(log.contains(&format!("CPU: {chosen}")), "the startup line names the variant: {log}");
}

/// A processor without AVX (Intel Westmere, 2010), emulated by qemu: the same file starts, picks a variant
/// that needs no AVX, and answers.
#[test]
fn a_processor_without_avx_gets_a_baseline_variant_and_answers() {
    let Some(qemu) = which("qemu-x86_64") else {
        panic!("qemu-x86_64 is missing: install Debian's qemu-user (scripts/setup.sh --test does)");
    };
    let run = |args: &[&str]| {
        Command::new(&qemu).args(["-cpu", "Westmere"]).arg(bundle()).args(args).stdin(Stdio::null()).output().unwrap()
    };
    let output = run(&["info"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let (chosen, scores) = chosen_variant(&stdout(&output));
    assert!(["x64", "sse42"].contains(&chosen.as_str()), "chose {chosen}: {}", stdout(&output));
    assert!(scores.iter().any(|(name, score)| name == "haswell" && *score == 0), "{}", stdout(&output));

    let output = run(&[
        "chat",
        "--threads",
        "2",
        "--max-tokens",
        "12",
        "--temperature",
        "0",
        "-p",
        "Which city is the capital of France?",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("Paris"), "{}", stdout(&output));
}

#[test]
fn without_memory_files_the_engine_comes_from_a_verified_cache() {
    let cache = scratch().join("cache home");
    let env = [("STOVE_ENGINE_IN_MEMORY", Path::new("0")), ("XDG_CACHE_HOME", &cache)];
    let first = info(&env);
    assert!(first.contains("loaded from cache"), "{first}");
    let engines: Vec<PathBuf> = read_dir(&cache.join("stove/engine"));
    assert_eq!(engines.len(), 1, "one engine, in a folder named after its hash: {engines:?}");
    let files = read_dir(&engines[0]);
    assert!(files.iter().any(|f| f.ends_with("libstove.so")), "{files:?}");

    // A cached file that changed (damage, or tampering) is noticed and replaced before it is loaded.
    let module = files.iter().find(|f| f.to_string_lossy().contains("libggml-cpu-x64")).unwrap();
    let original = std::fs::read(module).unwrap();
    std::fs::write(module, b"not a library").unwrap();
    let second = info(&env);
    assert!(second.contains("loaded from cache"), "{second}");
    assert_eq!(std::fs::read(module).unwrap(), original);
    assert_eq!(chosen_variant(&first).0, chosen_variant(&second).0);
}

#[test]
fn an_interrupted_first_start_leaves_nothing_after_the_next_one_and_the_cache_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let cache = scratch().join("interrupted cache");
    let engines = cache.join("stove/engine");
    // What a start killed while copying leaves: a partial folder named after its (now gone) process id.
    let killed = engines.join(".partial-999999999-abc123");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join("libstove.so"), vec![0u8; 1 << 20]).unwrap();
    // And one that another stove, still running (this test process stands in for it), is filling now.
    let running = engines.join(format!(".partial-{}-def456", std::process::id()));
    std::fs::create_dir_all(&running).unwrap();
    std::fs::set_permissions(&engines, std::fs::Permissions::from_mode(0o755)).unwrap();

    let env = [("STOVE_ENGINE_IN_MEMORY", Path::new("0")), ("XDG_CACHE_HOME", &cache)];
    let output = info(&env);
    assert!(output.contains("loaded from cache"), "{output}");
    assert!(!killed.exists(), "the killed start's copy is removed");
    assert!(running.exists(), "a running stove's copy is left alone");
    let left: Vec<PathBuf> = read_dir(&engines).into_iter().filter(|p| *p != running).collect();
    assert_eq!(left.len(), 1, "only the engine itself: {left:?}");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&engines), 0o700, "the cache is this user's alone");
    assert_eq!(mode(&left[0]), 0o700);
}

#[test]
fn with_no_usable_cache_a_temporary_copy_is_used_and_removed() {
    let temporary = scratch().join("tmp");
    std::fs::create_dir_all(&temporary).unwrap();
    // A cache "folder" below a regular file can never be created, like a read-only or full home.
    let blocked = scratch().join("not-a-folder");
    std::fs::write(&blocked, "").unwrap();
    let mut command = Command::new(bundle());
    command
        .args(["--port", "0", "--no-browser"])
        .env("STOVE_ENGINE_IN_MEMORY", "0")
        .env("XDG_CACHE_HOME", blocked.join("cache"))
        .env("TMPDIR", &temporary);
    let server = Server::launch(command);
    server.wait_healthy();
    let (status, answer) = server.chat(serde_json::json!({
        "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4
    }));
    assert_eq!(status, 200, "{answer}");
    assert!(read_dir(&temporary).is_empty(), "the temporary copy is removed once loaded: {:?}", read_dir(&temporary));
    let log = server.stop();
    assert!(log.contains("engine cache not usable"), "the person is told why: {log}");
}

/// The bundle's engine files, unpacked once into the scratch folder: (name, path).
fn unpacked_engine() -> &'static [(String, PathBuf)] {
    static FILES: std::sync::OnceLock<Vec<(String, PathBuf)>> = std::sync::OnceLock::new();
    FILES.get_or_init(|| {
        let dir = scratch().join("unpacked engine");
        std::fs::create_dir_all(&dir).unwrap();
        let mut archive = zip::ZipArchive::new(std::fs::File::open(bundle()).unwrap()).unwrap();
        let names: Vec<String> = archive
            .file_names()
            .filter_map(|n| Some(n.ok()?.strip_prefix("engine/")?.to_string()))
            .filter(|n| n.contains(".so"))
            .collect();
        assert!(names.len() >= 15, "{names:?}");
        names
            .into_iter()
            .map(|name| {
                let path = dir.join(&name);
                let mut entry = archive.by_name(&format!("engine/{name}")).unwrap();
                std::io::copy(&mut entry, &mut std::fs::File::create(&path).unwrap()).unwrap();
                (name, path)
            })
            .collect()
    })
}

/// The engine needs nothing from the host but the C library (and, for a GPU module, that GPU's driver).
#[test]
fn engine_files_need_no_c_plus_plus_runtime_openmp_or_openssl() {
    let files = unpacked_engine();
    let host = [
        "libc.so.6",
        "libm.so.6",
        "libgcc_s.so.1",
        "ld-linux-x86-64.so.2",
        "libdl.so.2",
        "libpthread.so.0",
        "librt.so.1",
        "libutil.so.1",
    ];
    let drivers = ["libvulkan.so.1", "libcuda.so.1"];
    for (name, path) in files {
        let output = Command::new("readelf").arg("-d").arg(path).output().expect("readelf (binutils)");
        for needed in stdout(&output).lines().filter_map(|l| l.split("Shared library: [").nth(1)) {
            let needed = needed.trim_end_matches(']');
            let allowed = host.contains(&needed) || drivers.contains(&needed) || files.iter().any(|(o, _)| o == needed);
            assert!(allowed, "{name} needs {needed} from the host");
        }
    }
}

/// Every engine file and the launcher ask for glibc 2.28's symbol versions at most, so the file starts on
/// Debian 10, RHEL 8, Ubuntu 20.04 and newer, though it is built on a newer system (scripts/glibc-compat.sh).
#[test]
fn engine_files_and_launcher_need_glibc_2_28_at_most() {
    let launcher = ("launcher".to_string(), bundle().to_path_buf());
    for (name, path) in unpacked_engine().iter().chain([&launcher]) {
        let output = Command::new("objdump").arg("-p").arg(path).output().expect("objdump (binutils)");
        assert!(output.status.success(), "{}", stderr(&output));
        let text = stdout(&output);
        let references = text.split("Version References:").nth(1).unwrap_or_else(|| panic!("{name}: {text}"));
        let newest = references
            .split_whitespace()
            .filter_map(|word| word.strip_prefix("GLIBC_2."))
            .filter_map(|minor| minor.split('.').next()?.parse::<u32>().ok())
            .max()
            .unwrap_or_else(|| panic!("{name} asks for no glibc version: {references}"));
        assert!(newest <= 28, "{name} needs GLIBC_2.{newest}:{references}");
    }
}

#[test]
fn info_says_whether_the_model_fits_and_what_else_this_machine_can_run() {
    let info = info(&[]);
    assert!(info.contains("this model here (4 conversations of 4096 tokens)"), "{info}");
    assert!(info.contains("a good fit for main memory"), "{info}");
    let table = info.split("what this machine can run").nth(1).expect("the capacity table");
    // A 0.5B model fits in any machine that runs the tests; a 70B one at Q8_0 needs about 90 GB.
    let row = |size: &str| table.lines().find(|l| l.trim_start().starts_with(size)).unwrap().to_string();
    assert!(row("0.5B").contains("RAM ~"), "{table}");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let available_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    if available_kib < 80 << 20 {
        assert_eq!(row("70B").split_whitespace().nth(1), Some("-"), "{table}");
    }
}

fn read_dir(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    entries
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(program)).find(|path| path.is_file())
}
