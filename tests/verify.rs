//! Trusting a file: `stove verify` names the damaged part with an exit code scripts can use, `stove keygen`
//! and `pack --sign` make signed bundles, and `--require-signature` refuses anything else at start; a signed
//! file accounts for every byte (no added entry, comment, padding change or trailing bytes); on a signed USB stick
//! a bare engine with `--require-signature` serves the bundle beside it only while it is signed and intact, and
//! its `verify` checks that bundle.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{pack, run, scratch, Server};

/// A key pair made by `stove keygen` in the scratch folder.
fn keygen(name: &str) -> (PathBuf, PathBuf) {
    let prefix = scratch().join(name);
    let output = run(&["keygen", "-o", prefix.to_str().unwrap()]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    (prefix.with_extension("key"), prefix.with_extension("pub"))
}

fn verify(bundle: &Path, key: Option<&Path>) -> (i32, String) {
    let mut args = vec!["verify", bundle.to_str().unwrap()];
    if let Some(key) = key {
        args.extend(["--key", key.to_str().unwrap()]);
    }
    let Output { status, stdout, stderr } = run(&args);
    (status.code().unwrap(), format!("{}{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)))
}

#[test]
fn verify_names_the_damaged_part_with_an_exit_code() {
    let (secret, public) = keygen("verify-kitchen");
    let (_, other_public) = keygen("verify-other");
    let signed = scratch().join("signed.stove");
    pack(&signed, &["--sign", secret.to_str().unwrap(), "--", "--ctx-size", "1024"]);

    let (code, out) = verify(&signed, None);
    assert_eq!(code, 0, "{out}");
    for line in ["launcher           intact", "model              intact", "default arguments  intact"] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert!(out.lines().any(|l| l.trim_start().starts_with("engine (") && l.contains("files)  intact")), "{out}");
    assert!(out.contains("signature          valid, by key SHA256:"), "{out}");
    let (code, out) = verify(&signed, Some(&public));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid, by the required key"), "{out}");
    // Signed, but not by the key an administrator approved.
    let (code, out) = verify(&signed, Some(&other_public));
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("BY ANOTHER KEY"), "{out}");

    // Unsigned: fine on its own, refused when a key is required.
    let plain = scratch().join("plain.stove");
    pack(&plain, &[]);
    assert_eq!(verify(&plain, None).0, 0);
    let (code, out) = verify(&plain, Some(&public));
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("NOT SIGNED"), "{out}");

    // One byte of the weights changes: the model is named as damaged, the rest stays intact.
    let damaged = scratch().join("damaged.stove");
    std::fs::copy(&signed, &damaged).unwrap();
    let model_offset = std::fs::metadata(&damaged).unwrap().len() / 2;
    common::damage(&damaged, model_offset);
    let (code, out) = verify(&damaged, Some(&public));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("model              DAMAGED"), "{out}");
    assert!(out.contains("launcher           intact"), "{out}");

    // One byte of the launcher's code changes.
    let patched = scratch().join("patched-engine.stove");
    std::fs::copy(&signed, &patched).unwrap();
    common::damage(&patched, 4096);
    let (code, out) = verify(&patched, None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("launcher           DAMAGED"), "{out}");

    // One byte of a CPU variant the engine carries changes: verify names it, and the file refuses to start
    // rather than load damaged code.
    let module = scratch().join("damaged-module.stove");
    std::fs::copy(&signed, &module).unwrap();
    let (offset, name) = entry_offset(&module, "engine/libggml-cpu-x64.so");
    common::damage(&module, offset + 5000);
    let (code, out) = verify(&module, None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("engine {} DAMAGED", name.trim_start_matches("engine/"))), "{out}");
    let started = std::process::Command::new(&module).args(["--no-browser", "--port", "0"]).output().unwrap();
    assert_eq!(started.status.code(), Some(1));
    let message = String::from_utf8_lossy(&started.stderr);
    assert!(message.contains("is damaged") && message.contains("libggml-cpu-x64.so"), "{message}");

    // A copy cut short.
    let cut = scratch().join("cut.stove");
    let bytes = std::fs::read(&signed).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let (code, out) = verify(&cut, None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("truncated"), "{out}");

    // Nothing to verify in a bare GGUF.
    let (code, out) = verify(&common::model(), None);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("nothing to verify"), "{out}");
}

#[test]
fn require_signature_refuses_all_but_the_approved_signed_bundle() {
    let (secret, public) = keygen("start-kitchen");
    let (other_secret, _) = keygen("start-other");
    let signed = scratch().join("approved.stove");
    pack(&signed, &["--sign", secret.to_str().unwrap(), "--", "--ctx-size", "1024"]);
    let key = public.to_str().unwrap();

    // The approved bundle starts and answers.
    let server = Server::start(&signed, &["--require-signature", key]);
    let (status, _) =
        server.chat(serde_json::json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}));
    assert_eq!(status, 200);
    assert!(server.stop().contains("signed by the required key"));

    // Signed by someone else, unsigned, or altered: stove says why and does not start.
    let foreign = scratch().join("foreign.stove");
    pack(&foreign, &["--sign", other_secret.to_str().unwrap()]);
    let unsigned = scratch().join("unsigned.stove");
    pack(&unsigned, &[]);
    let altered = scratch().join("altered.stove");
    std::fs::copy(&signed, &altered).unwrap();
    common::damage(&altered, std::fs::metadata(&altered).unwrap().len() / 2);
    for (bundle, reason) in [
        (&foreign, "signed by another key"),
        (&unsigned, "is not signed"),
        (&altered, "is damaged (model does not match its manifest)"),
    ] {
        let output = std::process::Command::new(bundle)
            .args(["--require-signature", key, "--port", "0", "--no-browser"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{} started", bundle.display());
        assert!(stderr.contains(reason), "{}: {stderr}", bundle.display());
        assert!(output.stdout.is_empty(), "it must not print a URL: {}", String::from_utf8_lossy(&output.stdout));
    }
    // --verify alone checks integrity without asking for a signature.
    let output =
        std::process::Command::new(&altered).args(["--verify", "--port", "0", "--no-browser"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("is damaged"));
}

#[test]
fn keys_are_never_overwritten() {
    let (secret, _) = keygen("never-twice");
    let before = std::fs::read(&secret).unwrap();
    let output = run(&["keygen", "-o", scratch().join("never-twice").to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&secret).unwrap(), before);
}

/// Where an archive entry's data starts in the file, and its name.
fn entry_offset(path: &std::path::Path, name: &str) -> (u64, String) {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let entry = archive.by_name(name).unwrap();
    (entry.data_start().unwrap(), entry.name().unwrap().into_owned())
}

#[test]
fn a_signed_file_carries_no_unsigned_content() {
    let (secret, public) = keygen("every-byte");
    let signed = scratch().join("every-byte.stove");
    pack(&signed, &["--sign", secret.to_str().unwrap(), "--", "--ctx-size", "1024"]);
    let (code, out) = verify(&signed, Some(&public));
    assert_eq!(code, 0, "a file as packed accounts for every byte: {out}");
    let copy = |name: &str| {
        let path = scratch().join(name);
        std::fs::copy(&signed, &path).unwrap();
        path
    };
    let append_entry = |path: &Path, comment: Option<&str>, entry: Option<&str>| {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut zip = zip::ZipWriter::new_append(file).unwrap();
        if let Some(name) = entry {
            zip.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
            std::io::Write::write_all(&mut zip, b"#!/bin/sh\necho pwned\n").unwrap();
        }
        if let Some(comment) = comment {
            zip.set_comment(comment).unwrap();
        }
        zip.finish().unwrap();
    };

    let extra_entry = copy("extra-entry.stove");
    append_entry(&extra_entry, None, Some("payload/evil.sh"));
    let comment = copy("comment.stove");
    append_entry(&comment, Some("unsigned words"), None);
    let appended = copy("appended.stove");
    let mut bytes = std::fs::read(&appended).unwrap();
    bytes.extend_from_slice(b"trailing bytes");
    std::fs::write(&appended, bytes).unwrap();
    let gap = copy("gap.stove");
    let launcher_len = {
        let manifest = entry_text(&gap, "stove/manifest.json");
        let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        manifest["engine_len"].as_u64().unwrap()
    };
    common::damage(&gap, launcher_len + 16);

    for (path, what) in [
        (&extra_entry, "archive entry payload/evil.sh"),
        (&comment, "the archive's comment"),
        (&appended, "bytes after the archive's end"),
        (&gap, "the padding between the launcher and the archive"),
    ] {
        let (code, out) = verify(path, Some(&public));
        assert_eq!(code, 1, "{}: {out}", path.display());
        assert!(out.contains(what), "{}: {out}", path.display());
        // And the same rule when such a file is started with --require-signature.
        let output = std::process::Command::new(path)
            .args(["--require-signature", public.to_str().unwrap(), "--port", "0", "--no-browser"])
            .output()
            .unwrap();
        assert!(!output.status.success(), "{} started", path.display());
    }
}

/// The text of one archive entry.
fn entry_text(path: &Path, name: &str) -> String {
    let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut archive.by_name(name).unwrap(), &mut text).unwrap();
    text
}

#[test]
fn a_signed_stick_serves_the_bundle_beside_the_engine_only_while_it_is_signed_and_intact() {
    let (key, public) = keygen("stick-key");
    let stick = scratch().join("signed-stick");
    let model = common::model();
    let packed = run(&[
        "pack",
        "--model",
        model.to_str().unwrap(),
        "--stick",
        stick.to_str().unwrap(),
        "--sign",
        key.to_str().unwrap(),
    ]);
    assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));
    // A bare engine beside it, as on a stick for another computer of the same system.
    let engine = stick.join("stove-engine");
    assert!(run(&["pack", "--engine-only", "-o", engine.to_str().unwrap()]).status.success());
    let ask = || {
        common::output_of_written_program(Command::new(&engine).args([
            "chat",
            "--require-signature",
            public.to_str().unwrap(),
            "--temperature",
            "0",
            "--max-tokens",
            "8",
            "-p",
            "Which city is the capital of France?",
        ]))
    };
    let answer = ask();
    let said = String::from_utf8_lossy(&answer.stderr).into_owned();
    assert!(answer.status.success(), "{said}");
    assert!(said.contains("verified, signed by the required key"), "{said}");
    assert!(String::from_utf8_lossy(&answer.stdout).contains("Paris"), "{said}");
    // `verify` on the engine checks the bundle it serves beside it, with the exit code of that check.
    let verify_beside = || {
        let output = Command::new(&engine).args(["verify", "--key", public.to_str().unwrap()]).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap(), said)
    };
    let (code, said) = verify_beside();
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("verifying") && said.contains("the one it serves beside it"), "{said}");
    assert!(said.contains("intact and validly signed"), "{said}");

    // The bundle beside it altered: refused, naming the damage; nothing served.
    let bundle = stick.join(format!("{}.stove", model.file_stem().unwrap().to_string_lossy()));
    common::damage(&bundle, std::fs::metadata(&bundle).unwrap().len() / 2);
    let altered = ask();
    let said = String::from_utf8_lossy(&altered.stderr).into_owned();
    assert!(!altered.status.success(), "{said}");
    assert!(said.contains("is damaged"), "{said}");
    let (code, said) = verify_beside();
    assert_eq!(code, 1, "{said}");
    assert!(said.contains("DAMAGED"), "{said}");

    // An unsigned bundle in its place: refused for want of a signature.
    std::fs::remove_file(&bundle).unwrap();
    pack(&bundle, &[]);
    let unsigned = ask();
    let said = String::from_utf8_lossy(&unsigned.stderr).into_owned();
    assert!(!unsigned.status.success(), "{said}");
    assert!(said.contains("is not signed, and --require-signature asks for a signature"), "{said}");
    let (code, said) = verify_beside();
    assert_eq!(code, 3, "{said}");

    // A second bundle beside the engine: verify lists both and checks neither.
    std::fs::copy(&bundle, stick.join("another.stove")).unwrap();
    let (code, said) = verify_beside();
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("2 models are beside it") && said.contains("verify NAME"), "{said}");
}
