//! `stove verify`, and `--verify` / `--require-signature` at start: every part of a bundle re-hashed
//! against its manifest, and its signature checked, so a damaged or altered copy is named part by part.
//!
//! Exit codes of `stove verify`, for scripts: 0 intact (and signed by `--key` when given), 1 damaged or
//! truncated, 2 nothing to verify or unreadable, 3 unsigned while `--key` asks for a signature, 4 a signature
//! that does not match the manifest or is not by `--key`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

use crate::bundle::{
    Bundle, BundleError, ModelSource, ARGS_ENTRY, CHAT_TEMPLATE_ENTRY, DRAFT_ENTRY, EMBEDDING_ENTRY, MANIFEST_ENTRY,
    MMPROJ_ENTRY, MODEL_ENTRY, SIGNATURE_ENTRY, WEB_PREFIX,
};
use crate::cli::{RunArgs, VerifyArgs};
use crate::hardware::human_bytes;
use crate::launch::{EngineIndex, ARCHIVE_DIR, INDEX_ENTRY};
use crate::pack::{copy_hashing, hex};
use crate::signing::{self, SignatureStatus};

pub const EXIT_INTACT: u8 = 0;
pub const EXIT_DAMAGED: u8 = 1;
pub const EXIT_UNREADABLE: u8 = 2;
pub const EXIT_UNSIGNED: u8 = 3;
pub const EXIT_BAD_SIGNATURE: u8 = 4;

#[derive(Debug, Clone, PartialEq)]
pub enum State {
    Intact,
    /// The bytes hash to something else than the manifest records.
    Changed,
    /// The manifest records it, the bundle lacks it.
    Missing,
    /// The bundle has it, the manifest does not record it.
    Unrecorded,
}

#[derive(Debug, Clone)]
pub struct Part {
    /// "engine", "model", "default arguments", "page index.html".
    pub name: String,
    pub size: Option<u64>,
    pub state: State,
}

#[derive(Debug)]
pub struct Report {
    pub parts: Vec<Part>,
    pub signature: SignatureStatus,
}

impl Report {
    pub fn damaged(&self) -> impl Iterator<Item = &Part> {
        self.parts.iter().filter(|p| p.state != State::Intact)
    }

    pub fn exit_code(&self, key_required: bool) -> u8 {
        if self.damaged().next().is_some() {
            return EXIT_DAMAGED;
        }
        match &self.signature {
            SignatureStatus::Invalid { .. } | SignatureStatus::OtherKey { .. } => EXIT_BAD_SIGNATURE,
            SignatureStatus::Unsigned if key_required => EXIT_UNSIGNED,
            _ => EXIT_INTACT,
        }
    }
}

/// Re-hashes every part of `bundle` and checks its signature (against `required` when given).
pub fn check(bundle: &Bundle, required: Option<&VerifyingKey>) -> Result<Report> {
    let manifest = &bundle.manifest;
    let path = &bundle.model.path;
    let mut parts = Vec::new();
    let hashed = |offset: u64, len: u64, label: &str| -> Result<String> {
        let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        file.seek(SeekFrom::Start(offset))?;
        let (read, sha256) = copy_hashing(file.take(len), len, &mut io::sink(), label)
            .with_context(|| format!("cannot read {}", path.display()))?;
        // A file that shrank since it was opened reads short: that is damage, not a match.
        Ok(if read == len { sha256 } else { String::new() })
    };
    let compare = |actual: &str, recorded: Option<&str>| match recorded {
        Some(recorded) if recorded == actual => State::Intact,
        Some(_) => State::Changed,
        None => State::Unrecorded,
    };

    let launcher = hashed(0, manifest.engine_len, "checking launcher")?;
    parts.push(Part {
        name: "launcher".into(),
        size: Some(manifest.engine_len),
        state: compare(&launcher, manifest.engine_sha256.as_deref()),
    });
    parts.extend(check_engine_files(path, manifest.engine_index_sha256.as_deref())?);
    let model = hashed(bundle.model.offset, bundle.model.len, "checking model")?;
    parts.push(Part {
        name: "model".into(),
        size: Some(bundle.model.len),
        state: compare(&model, Some(&manifest.model.sha256)),
    });
    let others = [
        ("draft model", &bundle.draft, manifest.draft.as_ref()),
        ("embedding model", &bundle.embedding, manifest.embedding.as_ref()),
        ("projector", &bundle.mmproj, manifest.mmproj.as_ref().map(|p| &p.file)),
    ];
    for (name, span, recorded) in others {
        match (span, recorded) {
            (None, None) => {}
            (Some(span), recorded) => {
                let actual = hashed(span.offset, span.len, &format!("checking {name}"))?;
                parts.push(Part {
                    name: name.into(),
                    size: Some(span.len),
                    state: compare(&actual, recorded.map(|r| r.sha256.as_str())),
                });
            }
            (None, Some(_)) => parts.push(Part { name: name.into(), size: None, state: State::Missing }),
        }
    }
    match (&bundle.args_bytes, &manifest.args_sha256) {
        (None, None) => {}
        (Some(args), recorded) => parts.push(Part {
            name: "default arguments".into(),
            size: Some(args.len() as u64),
            state: compare(&hex(&Sha256::digest(args)), recorded.as_deref()),
        }),
        (None, Some(_)) => parts.push(Part { name: "default arguments".into(), size: None, state: State::Missing }),
    }
    match (&bundle.chat_template, &manifest.chat_template_sha256) {
        (None, None) => {}
        (Some(template), recorded) => parts.push(Part {
            name: "chat template".into(),
            size: Some(template.len() as u64),
            state: compare(&hex(&Sha256::digest(template.as_bytes())), recorded.as_deref()),
        }),
        (None, Some(_)) => parts.push(Part { name: "chat template".into(), size: None, state: State::Missing }),
    }
    for digest in &manifest.web {
        let state = match bundle.web.iter().find(|(name, _)| *name == digest.name) {
            Some((_, data)) => compare(&hex(&Sha256::digest(data)), Some(&digest.sha256)),
            None => State::Missing,
        };
        parts.push(Part { name: format!("page {}", digest.name), size: None, state });
    }
    for (name, data) in &bundle.web {
        if !manifest.web.iter().any(|d| d.name == *name) {
            parts.push(Part { name: format!("page {name}"), size: Some(data.len() as u64), state: State::Unrecorded });
        }
    }
    parts.extend(check_layout(bundle)?);
    let signature = signing::check(&bundle.manifest_bytes, bundle.signature.as_deref(), required);
    Ok(Report { parts, signature })
}

/// Accounts for every byte of the file, so that a signed file cannot carry unsigned content: the padding
/// between the launcher and the archive is zeros, the archive holds only the entries stove writes (each
/// of them checked above), one after another with nothing between them, and the file ends with the archive's
/// end record, without a comment or anything after it.
fn check_layout(bundle: &Bundle) -> Result<Vec<Part>> {
    let path = &bundle.model.path;
    let manifest = &bundle.manifest;
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file_len = file.metadata()?.len();
    let mut archive = zip::ZipArchive::new(File::open(path)?)
        .with_context(|| format!("cannot read the archive in {}", path.display()))?;
    let mut parts = Vec::new();
    let mut spans = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let entry =
            archive.by_index_raw(i).with_context(|| format!("cannot read the archive in {}", path.display()))?;
        // A name that is not UTF-8 is nothing stove wrote.
        let name = entry
            .name()
            .map(|n| n.into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(entry.name_raw()).into_owned());
        let known = [
            MODEL_ENTRY,
            DRAFT_ENTRY,
            EMBEDDING_ENTRY,
            MMPROJ_ENTRY,
            MANIFEST_ENTRY,
            SIGNATURE_ENTRY,
            ARGS_ENTRY,
            CHAT_TEMPLATE_ENTRY,
        ]
        .contains(&name.as_str())
            || name.starts_with(ARCHIVE_DIR)
            || name.starts_with(WEB_PREFIX);
        if !known {
            parts.push(Part {
                name: format!("archive entry {name}"),
                size: Some(entry.size()),
                state: State::Unrecorded,
            });
        }
        let start = entry.header_start();
        let end = entry.data_start().unwrap_or(start) + entry.compressed_size();
        spans.push((start, end, name));
    }
    spans.sort();
    let gap = |what: String, size: u64| Part { name: what, size: Some(size), state: State::Unrecorded };
    // Between the launcher and the first entry: the zeros `pack` writes to align the model.
    let first = spans.first().map_or(archive.central_directory_start(), |(start, _, _)| *start);
    if first < manifest.engine_len {
        parts.push(gap("the launcher's end, overlapped by the archive".into(), manifest.engine_len - first));
    } else if first > manifest.engine_len {
        file.seek(SeekFrom::Start(manifest.engine_len))?;
        let mut padding = Vec::new();
        (&mut file).take(first - manifest.engine_len).read_to_end(&mut padding)?;
        if padding.iter().any(|&b| b != 0) {
            parts.push(Part {
                name: "the padding between the launcher and the archive".into(),
                size: Some(padding.len() as u64),
                state: State::Changed,
            });
        }
    }
    for pair in spans.windows(2) {
        let ((_, end, name), (next, _, _)) = (&pair[0], &pair[1]);
        if next != end {
            parts.push(gap(format!("bytes after the archive entry {name}"), next.abs_diff(*end)));
        }
    }
    if let Some((_, end, name)) = spans.last() {
        if *end != archive.central_directory_start() {
            parts.push(gap(
                format!("bytes after the archive entry {name}"),
                archive.central_directory_start().abs_diff(*end),
            ));
        }
    }
    if !archive.comment().is_empty() {
        parts.push(gap("the archive's comment".into(), archive.comment().len() as u64));
    }
    // The end-of-archive record (22 bytes with an empty comment) is the file's last bytes.
    let mut tail = [0u8; 22];
    let ends_with_record = file_len >= 22
        && file.seek(SeekFrom::Start(file_len - 22)).is_ok()
        && file.read_exact(&mut tail).is_ok()
        && tail[..4] == *b"PK\x05\x06"
        && tail[20..22] == [0, 0];
    if !ends_with_record && archive.comment().is_empty() {
        parts.push(gap("bytes after the archive's end".into(), 0));
    }
    Ok(parts)
}

/// The engine's files in the archive: the index against the manifest, each file against the index. One part
/// for all of them when they are intact, one per file that is not.
fn check_engine_files(path: &Path, recorded_index: Option<&str>) -> Result<Vec<Part>> {
    let mut archive =
        zip::ZipArchive::new(File::open(path).with_context(|| format!("cannot read {}", path.display()))?)
            .with_context(|| format!("cannot read the archive in {}", path.display()))?;
    let mut index_bytes = Vec::new();
    let has_index = match archive.by_name(INDEX_ENTRY) {
        Ok(entry) => entry.take(1 << 20).read_to_end(&mut index_bytes).is_ok(),
        Err(_) => false,
    };
    let index_state = match (has_index, recorded_index) {
        (false, None) => return Ok(Vec::new()),
        (false, Some(_)) => State::Missing,
        (true, None) => State::Unrecorded,
        (true, Some(recorded)) if hex(&Sha256::digest(&index_bytes)) == recorded => State::Intact,
        (true, Some(_)) => State::Changed,
    };
    let Ok(index) = serde_json::from_slice::<EngineIndex>(&index_bytes).map_err(|_| ()).and_then(|index| {
        if index_state == State::Intact {
            Ok(index)
        } else {
            Err(())
        }
    }) else {
        return Ok(vec![Part { name: "engine index".into(), size: None, state: index_state }]);
    };
    let mut damaged = Vec::new();
    let mut total = 0;
    for file in &index.files {
        total += file.size;
        let state = match archive.by_name(&format!("{ARCHIVE_DIR}{}", file.name)) {
            Err(_) => State::Missing,
            // No progress bar: each file takes milliseconds.
            Ok(entry) => match copy_hashing(entry, file.size, &mut io::sink(), "") {
                Ok((read, sha256)) if read == file.size && sha256 == file.sha256 => State::Intact,
                _ => State::Changed,
            },
        };
        if state != State::Intact {
            damaged.push(Part { name: format!("engine {}", file.name), size: Some(file.size), state });
        }
    }
    if damaged.is_empty() {
        return Ok(vec![Part {
            name: format!("engine ({} files)", index.files.len()),
            size: Some(total),
            state: State::Intact,
        }]);
    }
    Ok(damaged)
}

/// `stove verify [FILE] [--key PUB]`: prints each part's state and returns the exit code.
pub fn run(args: &VerifyArgs) -> Result<u8> {
    let path = match &args.file {
        Some(path) => path.clone(),
        None => match served_by_this_file()? {
            Some(path) => path,
            None => return Ok(EXIT_UNREADABLE),
        },
    };
    let key = args.key.as_deref().map(signing::load_verifying_key).transpose()?;
    let bundle = match Bundle::find(&path) {
        Ok(Some(bundle)) => bundle,
        Ok(None) => {
            eprintln!(
                "{}: no stove payload, so nothing to verify (a bare engine, a GGUF, or another file)",
                path.display()
            );
            return Ok(EXIT_UNREADABLE);
        }
        Err(e @ BundleError::Io { .. }) => {
            eprintln!("{e}");
            return Ok(EXIT_UNREADABLE);
        }
        Err(e) => {
            println!("{}: DAMAGED: {e}", path.display());
            return Ok(EXIT_DAMAGED);
        }
    };
    let report = check(&bundle, key.as_ref())?;
    println!("{}", path.display());
    for part in &report.parts {
        let size = part.size.map(|s| format!(" ({})", human_bytes(s))).unwrap_or_default();
        let state = match part.state {
            State::Intact => "intact",
            State::Changed => "DAMAGED: its bytes differ from those packed",
            State::Missing => "MISSING: the manifest lists it but the bundle lacks it",
            State::Unrecorded => "NOT RECORDED in the manifest, so it cannot be trusted",
        };
        println!("  {:<18} {state}{size}", part.name);
    }
    println!("  {:<18} {}", "signature", describe(&report.signature, key.as_ref()));
    let code = report.exit_code(key.is_some());
    let verdict = match code {
        EXIT_INTACT if matches!(report.signature, SignatureStatus::Valid { .. }) => "intact and validly signed",
        EXIT_INTACT => "intact",
        EXIT_DAMAGED => "DAMAGED: copy it again from the original",
        EXIT_UNSIGNED => "intact but NOT SIGNED, and a signature was required",
        _ => "NOT TRUSTED: its signature does not hold",
    };
    println!("{}: {verdict}", path.display());
    Ok(code)
}

/// What `verify` with no file checks: this file; or, when it holds no model (an engine file on a stick), the
/// bundle it serves from beside it, as serving would pick it (the only model there). Several there are listed
/// to choose from (`None`: said on stderr; verify's exit code then says nothing was checked).
fn served_by_this_file() -> Result<Option<PathBuf>> {
    let exe = crate::this_file()?;
    if !matches!(Bundle::find(&exe), Ok(None)) {
        return Ok(Some(exe));
    }
    let beside = crate::bundle::models_beside(&exe);
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "stove".into());
    match beside.as_slice() {
        [] => Ok(Some(exe)),
        [(path, _)] => {
            eprintln!("stove: this engine holds no model; verifying {}, the one it serves beside it", path.display());
            Ok(Some(path.clone()))
        }
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|(path, _)| path.file_name().unwrap_or_default().to_string_lossy().into_owned())
                .collect();
            eprintln!(
                "stove: this engine holds no model, and {} models are beside it: {}. Verify one with `{name} verify \
                 NAME`",
                names.len(),
                names.join(", ")
            );
            Ok(None)
        }
    }
}

fn describe(signature: &SignatureStatus, required: Option<&VerifyingKey>) -> String {
    match signature {
        SignatureStatus::Unsigned => "none".into(),
        SignatureStatus::Valid { fingerprint } if required.is_some() => {
            format!("valid, by the required key {fingerprint}")
        }
        SignatureStatus::Valid { fingerprint } => {
            format!("valid, by key {fingerprint} (pass --key PUB to require that key)")
        }
        SignatureStatus::OtherKey { fingerprint } => format!("BY ANOTHER KEY ({fingerprint}) than the one required"),
        SignatureStatus::Invalid { reason } => format!("INVALID: {reason}"),
    }
}

/// `--verify` and `--require-signature PUB` before serving or chatting: refuses to start on a damaged,
/// unsigned or wrongly signed bundle, naming what is wrong.
pub fn before_start(source: &ModelSource, run: &RunArgs) -> Result<()> {
    if !run.verify && run.require_signature.is_none() {
        return Ok(());
    }
    let ModelSource::Bundle(bundle) = source else {
        if run.require_signature.is_some() {
            bail!("--require-signature needs a signed bundle; a bare GGUF carries no signature (sign one with `stove pack --sign KEY`)");
        }
        bail!("--verify checks a bundle against its manifest; a bare GGUF has none");
    };
    let key = run.require_signature.as_deref().map(signing::load_verifying_key).transpose()?;
    let report = check(bundle, key.as_ref())?;
    let path = bundle.model.path.display();
    if let Some(part) = report.damaged().next() {
        bail!("{path} is damaged ({} does not match its manifest); copy it again from the original, or run `stove verify` on it for details", part.name);
    }
    match (&report.signature, key.is_some()) {
        (SignatureStatus::Invalid { reason }, _) => bail!("{path} is not trusted: {reason}"),
        (SignatureStatus::OtherKey { fingerprint }, _) => {
            bail!("{path} is signed by another key ({fingerprint}) than the one --require-signature names")
        }
        (SignatureStatus::Unsigned, true) => {
            bail!("{path} is not signed, and --require-signature asks for a signature")
        }
        _ => {}
    }
    eprintln!("{}: verified{}", path, if key.is_some() { ", signed by the required key" } else { "" });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_put_damage_before_signatures() {
        let part = |state| Part { name: "model".into(), size: None, state };
        let report = |state, signature| Report { parts: vec![part(state)], signature };
        let valid = SignatureStatus::Valid { fingerprint: "f".into() };
        let invalid = SignatureStatus::Invalid { reason: "r".into() };
        assert_eq!(report(State::Intact, valid.clone()).exit_code(true), EXIT_INTACT);
        assert_eq!(report(State::Intact, SignatureStatus::Unsigned).exit_code(false), EXIT_INTACT);
        assert_eq!(report(State::Intact, SignatureStatus::Unsigned).exit_code(true), EXIT_UNSIGNED);
        assert_eq!(report(State::Intact, invalid.clone()).exit_code(false), EXIT_BAD_SIGNATURE);
        assert_eq!(report(State::Changed, invalid).exit_code(true), EXIT_DAMAGED);
        assert_eq!(report(State::Unrecorded, valid).exit_code(false), EXIT_DAMAGED);
    }
}
