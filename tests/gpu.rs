//! GPU modules: Vulkan on Mesa's software device (lavapipe) offloads every layer and answers exactly as the CPU
//! does with greedy decoding; the same file on a machine without the Vulkan loader library, a machine with a GPU
//! module whose driver is missing, or a GPU backend the file does not carry, runs on the CPU or says why not.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{bundle, scratch, Server};

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The tests of the real Vulkan module, built with the `vulkan` feature (as scripts/test.sh does).
#[cfg(feature = "vulkan")]
mod vulkan {
    use super::*;

    // A question without a near-tie among the first tokens, so that a correct device gives the CPU's greedy answer
    // word for word (with the model's own template, "Name three colours of the rainbow." has one, and lavapipe's
    // different summation order picks the other word).
    const QUESTION: &str = "List the days of the week.";

    /// `stove chat` with greedy decoding, so two backends can be compared token for token.
    fn greedy_chat(command: &mut Command) -> Output {
        command
            .args(["chat", "--threads", "2", "--max-tokens", "32", "--temperature", "0", "-p", QUESTION])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The default bundle, run with only Mesa's software Vulkan device (lavapipe) visible to ggml, which hides
    /// devices of the CPU type unless `GGML_VK_VISIBLE_DEVICES` names them.
    fn on_lavapipe(args: &[&str]) -> Command {
        let icd = std::fs::read_dir("/usr/share/vulkan/icd.d")
            .ok()
            .and_then(|dir| {
                dir.filter_map(Result::ok).map(|e| e.path()).find(|p| p.to_string_lossy().contains("lvp_icd"))
            })
            .expect("Mesa's lavapipe is missing: install Debian's mesa-vulkan-drivers (scripts/setup.sh --test does)");
        let mut command = Command::new(bundle());
        command
            .args(args)
            // Older loaders read VK_ICD_FILENAMES, newer ones VK_DRIVER_FILES; either way only lavapipe is seen.
            .env("VK_ICD_FILENAMES", &icd)
            .env("VK_DRIVER_FILES", &icd)
            .env("GGML_VK_VISIBLE_DEVICES", "0");
        command
    }

    #[test]
    fn vulkan_on_a_software_device_takes_every_layer_and_answers_as_the_cpu_does() {
        let info = on_lavapipe(&["info", "--gpu", "vulkan"]).stdin(Stdio::null()).output().unwrap();
        let text = stdout(&info);
        assert!(info.status.success(), "{}{}", text, stderr(&info));
        assert!(text.contains("\n  vulkan       loaded\n"), "{text}");
        let device =
            text.lines().find(|l| l.contains("(Vulkan:")).unwrap_or_else(|| panic!("no Vulkan device: {text}"));
        assert!(device.contains("llvmpipe"), "{device}");
        let plan = text.lines().find(|l| l.trim_start().starts_with("gpu plan")).expect("a GPU plan");
        let layers: Vec<&str> = plan.split_whitespace().skip(2).take(3).collect();
        assert!(layers[0] == layers[2] && layers[1] == "of", "every layer fits on the device: {plan}");

        let on_gpu = greedy_chat(&mut on_lavapipe(&["--gpu", "vulkan", "--verbose"]));
        assert!(on_gpu.status.success(), "{}", stderr(&on_gpu));
        let log = stderr(&on_gpu);
        // llama.cpp's own count, e.g. "offloaded 31/31 layers to GPU" (the output layer counts too).
        let offloaded = log
            .lines()
            .find_map(|l| l.split("offloaded ").nth(1)?.strip_suffix(" layers to GPU"))
            .unwrap_or_else(|| panic!("llama.cpp logged no offload: {log}"));
        let (on_device, total) = offloaded.split_once('/').unwrap();
        assert_eq!(on_device, total, "every layer on the device: {offloaded}");
        let on_cpu = greedy_chat(Command::new(bundle()).args(["--gpu", "none"]));
        assert!(on_cpu.status.success(), "{}", stderr(&on_cpu));
        assert!(!stdout(&on_cpu).trim().is_empty());
        assert_eq!(stdout(&on_gpu), stdout(&on_cpu), "greedy answers differ between Vulkan and the CPU");
    }

    /// The same file on a machine without the Vulkan loader: a private mount namespace (a user namespace, so no
    /// privileges are needed) where the folder holding the system's `libvulkan.so.1` shows everything else.
    #[test]
    fn without_the_vulkan_loader_the_same_file_runs_on_the_cpu() {
        let dir = scratch().join("no vulkan");
        std::fs::create_dir_all(&dir).unwrap();
        let hide_vulkan_with = |args: &[&str], env: &[(&str, &Path)]| {
            let mut command = Command::new("unshare");
            command.envs(env.iter().copied());
            command.args(["--user", "--map-root-user", "--mount", "sh", "-c"]).arg(
                "set -e; lib=\"$(dirname \"$(readlink -f \"$(PATH=$PATH:/sbin ldconfig -p | sed -n 's/.*libvulkan.so.1 (.*) => //p' | head -1)\")\")\"; \
                 d=\"$(mktemp -d -p \"$1\")\"; mkdir \"$d/real\" \"$d/view\"; \
                 mount --bind \"$lib\" \"$d/real\"; ln -s \"$d/real\"/* \"$d/view/\"; rm -f \"$d/view\"/libvulkan.so*; \
                 mount --bind \"$d/view\" \"$lib\"; shift; exec \"$@\"",
            );
            command.args(["sh", dir.to_str().unwrap()]).arg(bundle()).args(args).stdin(Stdio::null());
            command.output().unwrap()
        };
        let hide_vulkan = |args: &[&str]| hide_vulkan_with(args, &[]);
        let info = hide_vulkan(&["info"]);
        assert!(info.status.success(), "{}", stderr(&info));
        assert!(
            stdout(&info).contains("\n  vulkan       not used: libvulkan.so.1 is not installed\n"),
            "{}",
            stdout(&info)
        );

        let answer = hide_vulkan(&[
            "chat",
            "--max-tokens",
            "12",
            "--temperature",
            "0",
            "-p",
            "Which city is the capital of France?",
        ]);
        assert!(answer.status.success(), "{}", stderr(&answer));
        assert!(stdout(&answer).contains("Paris"), "{}", stdout(&answer));
        let lines: Vec<String> = stderr(&answer).lines().filter(|l| l.contains("vulkan")).map(String::from).collect();
        assert_eq!(lines, ["vulkan: not used: libvulkan.so.1 is not installed"], "one line says why");

        // The launcher does not even copy the module out (30 MB): placed in a cache folder, it is not there.
        let cache = dir.join("cache");
        let in_cache =
            hide_vulkan_with(&["info"], &[("STOVE_ENGINE_IN_MEMORY", Path::new("0")), ("XDG_CACHE_HOME", &cache)]);
        assert!(in_cache.status.success(), "{}", stderr(&in_cache));
        let placed: Vec<String> = std::fs::read_dir(cache.join("stove/engine"))
            .unwrap()
            .flat_map(|engine| std::fs::read_dir(engine.unwrap().path()).unwrap())
            .map(|file| file.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(placed.iter().any(|name| name == "libggml-cpu-x64.so"), "{placed:?}");
        assert!(!placed.iter().any(|name| name.contains("vulkan")), "the Vulkan module was copied out: {placed:?}");
    }

    /// `pack --cpu-only` leaves the GPU modules out: a smaller file that answers on the CPU and, asked for Vulkan,
    /// says it carries none.
    #[test]
    fn a_file_packed_cpu_only_carries_no_gpu_module_and_answers() {
        let cpu_only = scratch().join("cpu-only.stove");
        common::pack(&cpu_only, &["--cpu-only", "--", "--ctx-size", "1024"]);
        let full = engine_files(bundle());
        let vulkan = full.iter().find(|(name, _)| name == "libggml-vulkan.so").expect("the test build carries Vulkan");
        let without = engine_files(&cpu_only);
        assert!(without.iter().all(|(name, _)| !name.contains("vulkan")), "{without:?}");
        assert_eq!(without.len(), full.len() - 1, "only the GPU module is left out: {without:?}");
        let size = |path: &Path| std::fs::metadata(path).unwrap().len();
        assert!(size(&cpu_only) + vulkan.1 <= size(bundle()) + 4096, "the file shrinks by the module's size");

        let output = Command::new(&cpu_only).args(["info", "--gpu", "vulkan"]).stdin(Stdio::null()).output().unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert!(stderr(&output).contains("this stove file carries no vulkan module"), "{}", stderr(&output));
        let answer = Command::new(&cpu_only)
            .args(["chat", "--max-tokens", "12", "--temperature", "0", "-p", "Which city is the capital of France?"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(answer.status.success(), "{}", stderr(&answer));
        assert!(stdout(&answer).contains("Paris"), "{}", stdout(&answer));
        assert!(!stderr(&answer).contains("vulkan"), "no GPU module, nothing to say about one: {}", stderr(&answer));
    }

    /// The engine files a stove file carries: name and size.
    fn engine_files(stove_file: &Path) -> Vec<(String, u64)> {
        let mut archive = zip::ZipArchive::new(std::fs::File::open(stove_file).unwrap()).unwrap();
        (0..archive.len())
            .filter_map(|i| {
                let entry = archive.by_index(i).unwrap();
                Some((entry.name().ok()?.strip_prefix("engine/")?.to_string(), entry.size()))
            })
            .filter(|(name, _)| name != "index.json")
            .collect()
    }
}

#[test]
fn a_gpu_backend_the_file_does_not_carry_is_a_clear_error_and_none_runs_on_the_cpu() {
    // CI builds no CUDA module, so no bundle it packs carries one.
    let output = Command::new(bundle()).args(["info", "--gpu", "cuda"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("--gpu cuda: this stove file carries no cuda module"), "{}", stderr(&output));

    let output = Command::new(bundle()).args(["info", "--gpu", "none"]).stdin(Stdio::null()).output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    for line in stdout(&output).lines().filter(|l| l.trim_start().starts_with("vulkan")) {
        assert!(line.contains("not used: --gpu none"), "{line}");
    }
}

/// A GPU module whose driver library this machine lacks (as `libggml-vulkan.so` without `libvulkan.so.1`): the
/// same file starts, says in one line which library is missing, and answers on the CPU. The module is a stand-in
/// built here, because the real ones need a GPU toolchain: it needs a driver library that exists nowhere.
#[test]
fn a_gpu_module_without_its_driver_is_skipped_with_one_line_and_the_cpu_answers() {
    let dir = scratch().join("stand-in gpu");
    std::fs::create_dir_all(&dir).unwrap();
    let compile = |source: &str, out: &Path, extra: &[&str]| {
        let c = dir.join("source.c");
        std::fs::write(&c, source).unwrap();
        let status = Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(out).arg(&c).args(extra).status();
        assert!(status.expect("a C compiler (cc)").success());
    };
    let driver = dir.join("libstove-test-driver.so.1");
    compile("int stove_test_driver(void) { return 1; }", &driver, &["-Wl,-soname,libstove-test-driver.so.1"]);
    let module = dir.join("libggml-testgpu.so");
    compile(
        "extern int stove_test_driver(void); int ggml_backend_score(void) { return stove_test_driver(); }",
        &module,
        &[driver.to_str().unwrap()],
    );
    std::fs::remove_file(&driver).unwrap();

    // This stove's engine with the module added to its files and its index.
    let base = dir.join("engine");
    assert!(common::run(&["pack", "--engine-only", "-o", base.to_str().unwrap()]).status.success());
    let with_module = dir.join("engine-with-gpu-module");
    add_engine_file(&base, &with_module, "libggml-testgpu.so", &std::fs::read(&module).unwrap());
    let bundle = dir.join("with-gpu-module.stove");
    common::pack(&bundle, &["--engine", with_module.to_str().unwrap()]);

    let info = Command::new(&bundle).arg("info").output().unwrap();
    assert!(
        stdout(&info).contains("testgpu      not used: libstove-test-driver.so.1 is not installed"),
        "{}",
        stdout(&info)
    );
    let server = Server::start(&bundle, &[]);
    let (status, answer) = server.chat(serde_json::json!({
        "messages": [{"role": "user", "content": "Which city is the capital of France?"}], "max_tokens": 12, "temperature": 0
    }));
    assert_eq!(status, 200, "{answer}");
    assert!(answer["choices"][0]["message"]["content"].as_str().unwrap().contains("Paris"), "{answer}");
    let log = server.stop();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("testgpu")).collect();
    assert_eq!(lines, ["testgpu: not used: libstove-test-driver.so.1 is not installed"], "{log}");
}

/// Copies the engine-only stove file `from` to `to` with one more module in its archive and its index.
fn add_engine_file(from: &Path, to: &Path, name: &str, data: &[u8]) {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    let mut archive = zip::ZipArchive::new(std::fs::File::open(from).unwrap()).unwrap();
    let mut index: serde_json::Value = serde_json::from_reader(archive.by_name("engine/index.json").unwrap()).unwrap();
    let launcher_len = index["launcher_len"].as_u64().unwrap();
    let mut out = std::fs::File::create(to).unwrap();
    std::io::copy(&mut std::fs::File::open(from).unwrap().take(launcher_len), &mut out).unwrap();
    let mut zip = zip::ZipWriter::new(out);
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).unwrap();
        if entry.name().unwrap() != "engine/index.json" {
            zip.raw_copy_file(entry).unwrap();
        }
    }
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file(format!("engine/{name}"), stored).unwrap();
    zip.write_all(data).unwrap();
    let sha256 = common::hex(&Sha256::digest(data));
    index["files"].as_array_mut().unwrap().push(serde_json::json!({
        "name": name, "kind": "module", "size": data.len(), "sha256": sha256
    }));
    zip.start_file("engine/index.json", stored).unwrap();
    zip.write_all(&serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    zip.finish().unwrap();
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}
