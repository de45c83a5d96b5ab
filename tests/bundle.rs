//! The single file: what `stove pack` writes and how a bundle fails when damaged.
//!
//! Checks: the bundle is a ZIP with the model stored at a 64 KiB-aligned offset and a manifest naming it;
//! it is executable; default arguments are stored and checked; re-packing replaces the payload; a truncated
//! copy fails with a clear message; an engine without a model says how to pack one; bad pack inputs leave no
//! output; an interrupted pack or a full disk leaves nothing behind, a killed one the old file or the new one;
//! a bundle too large for a FAT32 stick is refused before anything is written there;
//! `info`, `chat -p` and `chat` on stdin work.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{bundle, model, pack, run, scratch, MODEL_SHA256};

/// The temporary files `pack` left in `dir`, with their sizes.
fn partial_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bundle_is_an_executable_zip_with_the_model_aligned_and_described() {
    let path = bundle();
    assert_eq!(fs::metadata(path).unwrap().permissions().mode() & 0o777, 0o755);
    let mut archive = zip::ZipArchive::new(fs::File::open(path).unwrap()).expect("a bundle is a valid zip");
    let names: Vec<String> = archive.file_names().map(|n| n.unwrap().into_owned()).collect();
    assert!(names.contains(&"stove/model.gguf".to_string()), "{names:?}");
    let (offset, size, stored) = {
        let entry = archive.by_name("stove/model.gguf").unwrap();
        (entry.data_start().unwrap(), entry.size(), entry.compression() == zip::CompressionMethod::Stored)
    };
    assert!(stored, "the model must be stored uncompressed to be mapped");
    assert_eq!(offset % 65536, 0, "model at byte {offset}");
    assert_eq!(size, fs::metadata(model()).unwrap().len());
    // The bytes at that offset are the model itself.
    let bytes = fs::read(path).unwrap();
    assert_eq!(&bytes[offset as usize..offset as usize + 4], b"GGUF");

    let manifest: serde_json::Value = serde_json::from_reader(archive.by_name("stove/manifest.json").unwrap()).unwrap();
    assert_eq!(manifest["model"]["sha256"], MODEL_SHA256);
    assert_eq!(manifest["model"]["architecture"], "llama");
    assert_eq!(manifest["model"]["quantization"], "Q4_1");
    assert_eq!(manifest["model"]["context_length"], 8192);
    assert_eq!(manifest["model"]["has_chat_template"], true);
    assert_eq!(manifest["model"]["file_name"], "SmolLM2-135M-Instruct.Q4_1.gguf");
    let parameters = manifest["model"]["parameters"].as_u64().unwrap();
    assert!((130_000_000..140_000_000).contains(&parameters), "{parameters}");
    assert_eq!(manifest["stove_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(manifest["name"], "SmolLM2-135M-Instruct.Q4_1");

    let args: Vec<String> = serde_json::from_reader(archive.by_name("stove/args.json").unwrap()).unwrap();
    assert_eq!(args, ["--ctx-size", "1024"]);
}

#[test]
fn packing_onto_a_bundle_replaces_its_payload() {
    let first = bundle();
    let second = scratch().join("repacked.stove");
    pack(&second, &["--engine", first.to_str().unwrap(), "--name", "Again"]);
    let third = scratch().join("repacked-twice.stove");
    pack(&third, &["--engine", second.to_str().unwrap()]);
    let sizes = [first, &second, &third].map(|p| fs::metadata(p).unwrap().len());
    // No stacking: each bundle differs only by its small manifest and args.
    assert!(sizes[1].abs_diff(sizes[0]) < 4096 && sizes[2].abs_diff(sizes[0]) < 4096, "{sizes:?}");
    let archive = zip::ZipArchive::new(fs::File::open(&third).unwrap()).unwrap();
    assert_eq!(archive.file_names().filter(|n| n.as_ref().unwrap().ends_with(".gguf")).count(), 1);
    let info = run(&["info", third.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains("SmolLM2-135M-Instruct.Q4_1"));
}

#[test]
fn an_engine_only_file_runs_on_its_own_and_packs_models_elsewhere() {
    // The engine alone, as one carries it or builds it for another system; in a folder of its own, since an
    // engine with no model serves the one model beside it.
    let engine = scratch().join("engine-alone/stove-engine");
    fs::create_dir_all(engine.parent().unwrap()).unwrap();
    let output = run(&["pack", "--engine-only", "-o", engine.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("x86_64-unknown-linux-gnu engine"));
    let archive = zip::ZipArchive::new(fs::File::open(&engine).unwrap()).unwrap();
    assert!(archive.file_names().all(|n| n.as_ref().unwrap().starts_with("engine/")), "no model, no page");

    // It starts from where it lies (not the build folder), and says it holds no model.
    let started = std::process::Command::new(&engine).arg("--no-browser").output().unwrap();
    assert!(stderr(&started).contains("holds no model"), "{}", stderr(&started));
    let info = std::process::Command::new(&engine).arg("info").output().unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("loaded from memory"), "{}", stderr(&info));

    // Another stove packs a model with it, and the bundle is whole and answers.
    let packed = scratch().join("with-carried-engine.stove");
    pack(&packed, &["--engine", engine.to_str().unwrap()]);
    let verified = run(&["verify", packed.to_str().unwrap()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));
    let answer = std::process::Command::new(&packed)
        .args(["chat", "--temperature", "0", "--max-tokens", "8", "-p", "Which city is the capital of France?"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer.stdout).contains("Paris"), "{}", stderr(&answer));

    // A file with no engine files is refused with the reason.
    let not_engine = scratch().join("notes.txt");
    fs::write(&not_engine, "hello").unwrap();
    let never = scratch().join("never-packed.stove");
    let refused = run(&[
        "pack",
        "--engine",
        not_engine.to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
        "-o",
        never.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("is not a stove file with an engine"), "{}", stderr(&refused));
    assert!(!never.exists());
}

#[test]
fn an_engine_with_no_model_serves_the_one_beside_it_and_lists_several() {
    // A stick: the engine file and a model in one folder.
    let stick = scratch().join("stick");
    fs::create_dir_all(&stick).unwrap();
    let engine = stick.join("stove-engine");
    let output = run(&["pack", "--engine-only", "-o", engine.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let beside = stick.join("SmolLM2.gguf");
    fs::hard_link(model(), &beside).or_else(|_| fs::copy(model(), &beside).map(drop)).unwrap();
    // Not models: ignored.
    fs::write(stick.join("notes.txt"), "hello").unwrap();
    fs::write(stick.join("broken.gguf"), "GGUF and nothing else").unwrap();

    let ask = |engine: &std::path::Path| {
        common::output_of_written_program(std::process::Command::new(engine).args([
            "chat",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "-p",
            "Which city is the capital of France?",
        ]))
    };
    let answer = ask(&engine);
    assert!(answer.status.success(), "{}", stderr(&answer));
    assert!(String::from_utf8_lossy(&answer.stdout).contains("Paris"), "{}", stderr(&answer));
    let first = stderr(&answer).lines().next().unwrap_or_default().to_string();
    assert!(first.contains("holds no model; serving") && first.contains("SmolLM2.gguf"), "{first}");

    // Two models: it names both and serves neither.
    fs::copy(bundle(), stick.join("another.stove")).unwrap();
    let several = ask(&engine);
    assert_eq!(several.status.code(), Some(1));
    let message = stderr(&several);
    assert!(message.contains("2 models are beside it: SmolLM2.gguf, another.stove"), "{message}");
    assert!(message.contains("--model NAME"), "{message}");
    // It wrote nothing there.
    let mut names: Vec<String> =
        fs::read_dir(&stick).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["SmolLM2.gguf", "another.stove", "broken.gguf", "notes.txt", "stove-engine"]);
}

#[test]
fn pack_stick_writes_the_bundle_and_a_readme_and_names_what_is_missing() {
    let stick = scratch().join("usb-stick");
    let output = run(&["pack", "--model", model().to_str().unwrap(), "--stick", stick.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut names: Vec<String> =
        fs::read_dir(&stick).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let bundle_name = format!("{}.stove", model().file_stem().unwrap().to_string_lossy());
    assert_eq!(names, ["README.txt".to_string(), bundle_name.clone()]);
    let readme = fs::read_to_string(stick.join("README.txt")).unwrap();
    assert!(readme.contains(&format!("double-click {bundle_name}")), "{readme}");
    assert!(readme.contains(&format!("./{bundle_name} verify")), "{readme}");
    let verified = run(&["verify", stick.join(&bundle_name).to_str().unwrap()]);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stdout));

    // A system asked for without its engine: refused before anything is written, naming how to build it.
    let other = scratch().join("usb-windows");
    let model = model();
    let args = ["pack", "--model", model.to_str().unwrap(), "--stick", other.to_str().unwrap()];
    let refused = run(&[&args[..], &["--systems", "windows-x86_64"]].concat());
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("`scripts/build-engine windows`"), "{}", stderr(&refused));
    assert!(!other.exists() || fs::read_dir(&other).unwrap().next().is_none(), "nothing written");

    // A second engine for the bundle's own system: one per system.
    let engine = scratch().join("usb-engine/stove-engine");
    fs::create_dir_all(engine.parent().unwrap()).unwrap();
    assert!(run(&["pack", "--engine-only", "-o", engine.to_str().unwrap()]).status.success());
    let twice = run(&[&args[..], &["--stick-engine", engine.to_str().unwrap()]].concat());
    assert!(stderr(&twice).contains("a second engine for linux-x86_64"), "{}", stderr(&twice));
}

/// A FAT32 file system mounted through FUSE (fusefat: the kernel's own FAT driver needs privileges to mount and
/// is often not built), unmounted when dropped; `None`, said on stderr, on a machine without FUSE.
struct Fat32 {
    mount: std::path::PathBuf,
}

impl Fat32 {
    fn mount(name: &str) -> Option<Fat32> {
        if !std::path::Path::new("/dev/fuse").exists() {
            eprintln!("skipped: this machine has no /dev/fuse, so no FAT32 file system can be mounted for the test");
            return None;
        }
        let root = scratch().join(name);
        let (image, mount) = (root.join("fat32.img"), root.join("mnt"));
        fs::create_dir_all(&mount).unwrap();
        fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
        // mkfs.vfat lives in /usr/sbin, which a test's PATH may lack.
        let mkfs = ["/usr/sbin/mkfs.vfat", "/sbin/mkfs.vfat"].into_iter().find(|p| std::path::Path::new(p).exists());
        let made = std::process::Command::new(mkfs.expect("mkfs.vfat (dosfstools; scripts/setup.sh --test)"))
            .args(["-F", "32"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(made.status.success(), "{}", stderr(&made));
        // rw+: fusefat's writing (nothing is written in these tests, but a read-only mount would refuse earlier).
        let mounted = std::process::Command::new("fusefat")
            .args(["-o", "rw+"])
            .arg(&image)
            .arg(&mount)
            .output()
            .expect("fusefat (scripts/setup.sh --test installs it)");
        assert!(mounted.status.success(), "{}", stderr(&mounted));
        Some(Fat32 { mount })
    }

    fn entries(&self) -> Vec<String> {
        fs::read_dir(&self.mount).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }
}

impl Drop for Fat32 {
    /// Unmounts with FUSE 2's or FUSE 3's tool, whichever fusefat's dependency brought (or umount, as root).
    fn drop(&mut self) {
        for (tool, flag) in [("fusermount", "-u"), ("fusermount3", "-u"), ("umount", "-l")] {
            let done = std::process::Command::new(tool).arg(flag).arg(&self.mount).status();
            if done.is_ok_and(|status| status.success()) {
                return;
            }
        }
    }
}

#[test]
fn a_bundle_too_large_for_a_fat32_stick_is_refused_before_anything_is_written() {
    let Some(fat) = Fat32::mount("fat32") else { return };
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts.contains(&format!("{} ", fat.mount.display())) && mounts.contains("fuse.fusefat"), "{mounts}");
    // A model over 4 GiB: the real one with a sparse tail, which nothing reads before the refusal.
    let big = scratch().join("fat32-model/Big.gguf");
    fs::create_dir_all(big.parent().unwrap()).unwrap();
    fs::copy(model(), &big).unwrap();
    fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(4608 << 20).unwrap();

    let stick = fat.mount.join("stick");
    let refused = run(&["pack", "--model", big.to_str().unwrap(), "--stick", stick.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    let message = stderr(&refused);
    assert!(message.contains("is on a FAT32"), "{message}");
    assert!(message.contains("cannot hold a file over 4 GiB") && message.contains("format the stick as exFAT"));
    assert!(message.contains("--stick"), "{message}");
    assert_eq!(fat.entries(), Vec::<String>::new(), "not even the stick's folder is made");

    let out = fat.mount.join("Big.stove");
    let refused = run(&["pack", "--model", big.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("is on a FAT32"), "{}", stderr(&refused));
    assert!(stderr(&refused).contains("write it to another disk with -o"), "{}", stderr(&refused));
    assert_eq!(fat.entries(), Vec::<String>::new(), "no partial file either");

    // A bundle that fits passes the check: the small model gets as far as writing (which fusefat's
    // experimental writing may then fail; the kernel's FAT driver writes it).
    let small = run(&["pack", "--model", model().to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(!stderr(&small).contains("is on a FAT32"), "{}", stderr(&small));
}

#[test]
fn a_truncated_copy_fails_clearly_instead_of_crashing() {
    let bytes = fs::read(bundle()).unwrap();
    for (name, keep) in [("half", bytes.len() / 2), ("tail", bytes.len() - 10), ("head", 12 << 20)] {
        let cut = scratch().join(format!("cut-{name}.stove"));
        fs::write(&cut, &bytes[..keep]).unwrap();
        fs::set_permissions(&cut, fs::Permissions::from_mode(0o755)).unwrap();
        let output =
            common::output_of_written_program(std::process::Command::new(&cut).args(["--no-browser", "--port", "0"]));
        assert_eq!(output.status.code(), Some(1), "{name}: {}", stderr(&output));
        let message = stderr(&output);
        assert!(message.contains("is truncated") && message.contains("copy it again"), "{name}: {message}");
    }
}

#[test]
fn an_engine_without_a_model_says_how_to_pack_one() {
    let output = run(&["--no-browser"]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains("holds no model") && message.contains("pack --model"), "{message}");
}

#[test]
fn bad_pack_inputs_are_named_and_leave_no_output() {
    let out = scratch().join("never.stove");
    let missing = run(&["pack", "--model", "/nonexistent/model.gguf", "-o", out.to_str().unwrap()]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("/nonexistent/model.gguf"), "{}", stderr(&missing));

    let not_gguf = scratch().join("notes.txt");
    fs::write(&not_gguf, "just some text").unwrap();
    let wrong = run(&["pack", "--model", not_gguf.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(stderr(&wrong).contains("neither a GGUF model nor a stove bundle"), "{}", stderr(&wrong));

    let model = model();
    let typo = run(&["pack", "--model", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--", "--ctx-sise", "1"]);
    assert!(stderr(&typo).contains("default arguments"), "{}", stderr(&typo));

    assert!(!out.exists());
    let leftovers = partial_files(scratch());
    assert!(leftovers.is_empty(), "temporary files left behind: {leftovers:?}");
}

#[test]
fn info_describes_the_bundle_and_the_machine() {
    let output = run(&["info", bundle().to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    for expected in ["llama", "Q4_1", "8192 tokens", MODEL_SHA256, "--ctx-size 1024", "physical", "device"] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}

#[test]
fn chat_answers_one_prompt_on_stdout() {
    let output = std::process::Command::new(bundle())
        .args(["chat", "-p", "Which city is the capital of France?", "--temperature", "0", "--max-tokens", "24"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let answer = String::from_utf8_lossy(&output.stdout);
    assert!(answer.contains("Paris"), "{answer}");
}

#[test]
fn a_bare_engine_serves_a_plain_gguf_or_another_bundle() {
    for source in [model(), bundle().to_path_buf()] {
        let output = run(&["chat", "-m", source.to_str().unwrap(), "-p", "Say hello", "--max-tokens", "8"]);
        assert!(output.status.success(), "{}: {}", source.display(), stderr(&output));
        assert!(!String::from_utf8_lossy(&output.stdout).trim().is_empty());
    }
}

#[test]
fn a_bundles_default_verbose_shows_llama_cpp_log() {
    // Its default arguments are merged before logging is set, so `--verbose` among them counts.
    let verbose = scratch().join("verbose.stove");
    pack(&verbose, &["--", "--verbose"]);
    for (source, expected) in [(verbose.as_path(), true), (bundle(), false)] {
        let output = run(&["chat", "-m", source.to_str().unwrap(), "-p", "Hi", "--max-tokens", "1"]);
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(stderr(&output).contains("llama_model_loader"), expected, "{}", stderr(&output));
    }
}

#[test]
fn an_interrupted_pack_leaves_nothing_behind() {
    let dir = scratch().join("interrupted");
    fs::create_dir_all(&dir).unwrap();
    // A valid GGUF header followed by 3 GiB of (sparse) zeros: large enough to interrupt mid-copy.
    let big = dir.join("big.gguf");
    fs::copy(model(), &big).unwrap();
    fs::File::options().write(true).open(&big).unwrap().set_len(3 << 30).unwrap();
    let out = dir.join("big.stove");
    let mut child = common::stove()
        .args(["pack", "--model", big.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let partial_size = || partial_files(&dir).into_iter().map(|(_, size)| size).max();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while partial_size().unwrap_or(0) < 64 << 20 {
        assert!(std::time::Instant::now() < deadline, "pack never got going");
        assert!(child.try_wait().unwrap().is_none(), "pack ended before it could be interrupted");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("interrupted"), "{}", stderr(&output));
    assert!(!out.exists());
    assert_eq!(partial_size(), None, "the temporary file was left behind");
}

#[test]
fn chat_reads_a_conversation_from_stdin() {
    use std::io::Write;
    let mut child = std::process::Command::new(bundle())
        .args(["chat", "--temperature", "0", "--max-tokens", "16", "--threads", "1"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"Which city is the capital of France?\nAnd of Italy?\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let answers = String::from_utf8_lossy(&output.stdout);
    assert!(answers.contains("Paris"), "{answers}");
    assert!(answers.contains("Rome"), "the second answer follows the first: {answers}");
}

#[test]
fn a_full_disk_is_named_and_leaves_nothing_behind() {
    // A 50 MB tmpfs in a private mount namespace (inside a user namespace, so no privileges are needed); the
    // 98 MB model cannot fit. What is left on it is listed from inside, before the namespace goes away.
    let dir = scratch().join("small-disk");
    fs::create_dir_all(&dir).unwrap();
    let out = dir.join("too-big.stove");
    let output = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg("mount -t tmpfs -o size=50m tmpfs \"$1\" || exit 99; \"$2\" pack --model \"$3\" -o \"$4\"; echo \"exit $?\"; ls -A \"$1\"")
        .args(["sh", dir.to_str().unwrap(), env!("CARGO_BIN_EXE_stove"), model().to_str().unwrap(), out.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_ne!(output.status.code(), Some(99), "cannot mount a tmpfs: {}", stderr(&output));
    let message = stderr(&output);
    assert_eq!(stdout.trim(), "exit 1", "pack must fail and leave the disk empty; it printed {stdout:?}");
    assert!(message.contains("No space left on device") && message.contains("free at least"), "{message}");
    assert!(!message.contains("ZipWriter"), "only one clear message: {message}");
}

#[test]
fn a_pack_killed_at_any_moment_leaves_the_old_file_or_the_new_one() {
    let dir = scratch().join("killed");
    fs::create_dir_all(&dir).unwrap();
    let out = dir.join("model.stove");
    pack(&out, &["--", "--ctx-size", "512"]);
    let old = fs::read(&out).unwrap();
    let model = model();
    let repack = || {
        common::stove()
            .args(["pack", "--model", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--", "--ctx-size", "2048"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let is_new = || {
        run(&["verify", out.to_str().unwrap()]).status.success()
            && String::from_utf8_lossy(&run(&["info", out.to_str().unwrap()]).stdout).contains("--ctx-size 2048")
    };
    let mut kept_old = 0;
    // SIGKILL cannot be caught: whatever pack was doing (copying, syncing, renaming) just stops.
    for delay_ms in [0, 5, 20, 50, 100, 200, 350, 600] {
        let mut child = repack();
        // Not a wait for readiness: the point is to kill at an arbitrary moment.
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        if fs::read(&out).unwrap() == old {
            kept_old += 1;
        } else {
            assert!(is_new(), "after a kill at {delay_ms} ms the output is neither the old bundle nor the new one");
        }
    }
    assert!(kept_old > 0, "every kill came too late to interrupt a pack");
    // Left alone, the same pack completes and replaces the old file.
    assert!(repack().wait().unwrap().success());
    assert!(is_new());
    // And the input model was only ever read.
    use sha2::Digest;
    assert_eq!(common::hex(&sha2::Sha256::digest(fs::read(&model).unwrap())), MODEL_SHA256);
}

#[test]
fn several_models_beside_an_engine_are_offered_on_a_page_and_the_chosen_one_is_served_there() {
    let stick = scratch().join("chooser-stick");
    fs::create_dir_all(&stick).unwrap();
    let engine = stick.join("stove-engine");
    assert!(run(&["pack", "--engine-only", "-o", engine.to_str().unwrap()]).status.success());
    let beside = stick.join("SmolLM2.gguf");
    fs::hard_link(model(), &beside).or_else(|_| fs::copy(model(), &beside).map(drop)).unwrap();
    fs::copy(bundle(), stick.join("another.stove")).unwrap();
    // webbrowser honours $BROWSER: a script that only succeeds (the test reads the address from stdout).
    let browser = stick.join("browser.sh");
    fs::write(&browser, "#!/bin/sh\nexit 0\n").unwrap();
    fs::set_permissions(&browser, fs::Permissions::from_mode(0o755)).unwrap();

    // `--browser` stands in for a double-click (no terminal, no arguments), which a test cannot make.
    let mut child = std::process::Command::new(&engine)
        .args(["--browser", "--port", "0", "--threads", "1"])
        .env("BROWSER", &browser)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.contains("2 models are beside this engine; choose one at"), "{line}");
    let url = line.trim().rsplit(" at ").next().unwrap().trim_end_matches('/').to_string();
    let client = common::client();
    let page = client.get(format!("{url}/")).send().unwrap().text().unwrap();
    assert!(page.contains("SmolLM2.gguf") && page.contains("another.stove"), "{page}");
    // Another site cannot choose for the person.
    let foreign = client
        .post(format!("{url}/choose"))
        .header("Origin", "http://evil.example")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("model=1")
        .send()
        .unwrap();
    assert_eq!(foreign.status(), 403);
    // The page's own choice: the button that names SmolLM2.gguf.
    let before = &page[..page.find("SmolLM2.gguf").unwrap()];
    let index = before[before.rfind("value=").unwrap() + 6..].split('>').next().unwrap().to_string();
    let chosen = client
        .post(format!("{url}/choose"))
        .header("Origin", &url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("model={index}"))
        .send()
        .unwrap();
    assert_eq!(chosen.status(), 200);
    assert!(chosen.text().unwrap().contains("Starting SmolLM2.gguf"));

    // The same file starts again on the same address with that model, and the page there is the chat.
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.contains("chat with SmolLM2") && line.trim().ends_with(&format!("{url}/")), "{line}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while client.get(format!("{url}/health")).send().map(|r| r.status() != 200).unwrap_or(true) {
        assert!(std::time::Instant::now() < deadline, "the chosen model never became ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let models: serde_json::Value = client.get(format!("{url}/v1/models")).send().unwrap().json().unwrap();
    assert!(models["data"][0]["id"].as_str().unwrap().contains("SmolLM2"), "{models}");
    let _ = child.kill();
    let _ = child.wait();
}
