//! `stove pack`: writes an engine followed by a payload holding a model (layout in [`crate::bundle`]).
//!
//! The model is streamed (constant memory) into a temporary file beside the output, which is checked by
//! reading it back as a bundle and only then renamed over the output: an interrupted or failed pack never
//! leaves a half-written file under the output's name.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};
use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use crate::bundle::{
    self, Bundle, Manifest, ARGS_ENTRY, CHAT_TEMPLATE_ENTRY, DRAFT_ENTRY, EMBEDDING_ENTRY, MANIFEST_ENTRY,
    MMPROJ_ENTRY, MODEL_ALIGNMENT, MODEL_ENTRY, SIGNATURE_ENTRY,
};
use crate::signing;

mod companions;
mod engine;
mod file_system;
mod stick;
use companions::{check_draft, check_projector_fits, projector_manifest, read_chat_template};
pub(crate) use companions::{check_embedding_model, check_projector};
pub use engine::EngineSource;

/// Set by Ctrl-C or SIGTERM while packing: the copy stops and the temporary file is removed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// The zip writer aligns entry data to at most this (its alignment is a u16); see `pack` for how the model
/// still lands on a `MODEL_ALIGNMENT` boundary.
const ZIP_ALIGNMENT: u64 = MODEL_ALIGNMENT / 2;

/// A bundle at least this large cannot live on FAT32, and Windows refuses to run an executable this large.
pub const FAT32_LIMIT: u64 = (4 << 30) - 1;

pub struct PackOptions {
    pub model: PathBuf,
    pub out: PathBuf,
    pub name: Option<String>,
    /// The launcher and engine files to pack with.
    pub engine: EngineSource,
    /// A folder whose files replace the built-in chat page.
    pub web: Option<PathBuf>,
    /// A Jinja chat template that replaces the model's own.
    pub chat_template: Option<String>,
    pub default_args: Vec<String>,
    /// Signs the manifest with this key.
    pub sign: Option<SigningKey>,
    /// A draft model for speculative decoding (a GGUF or another stove file's model), checked to share the
    /// model's vocabulary.
    pub draft: Option<PathBuf>,
    /// An embedding model (a GGUF that pools, or another stove file's model) to serve `/v1/embeddings`.
    pub embedding_model: Option<PathBuf>,
    /// The projector (mmproj GGUF) that lets the model see or hear, checked to load for this model.
    pub mmproj: Option<PathBuf>,
}

pub struct Packed {
    pub bundle: Bundle,
    pub size: u64,
}

/// `stove pack`: checks the arguments, packs, and says what was written.
pub fn run(args: &crate::cli::PackArgs, run: &crate::cli::RunArgs) -> Result<()> {
    // Without this, Ctrl-C would end the process before the temporary file's destructor removes it.
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)).context("while installing a Ctrl-C handler")?;
    let mut engine = match &args.engine {
        Some(path) => EngineSource::from_file(path)?,
        None => EngineSource::running()?,
    };
    if args.cpu_only {
        engine.files.retain(|file| !file.is_for_gpu_only());
    }
    let target = engine.target.clone();
    let stick_plan = match &args.stick {
        Some(dir) => Some(stick::check(dir, args, run, &engine)?),
        None => None,
    };
    let output = match (&args.stick, &args.output) {
        (Some(dir), _) => stick::bundle_path(dir, run)?,
        (None, Some(output)) => output.clone(),
        (None, None) => bail!("give the file to write with -o OUT (or a folder with --stick DIR)"),
    };
    let args = &crate::cli::PackArgs { output: Some(output.clone()), ..args.clone() };
    if args.engine_only {
        if run.model.is_some() {
            bail!("--engine-only writes no model; leave out --model");
        }
        let size = pack_engine_only(&engine, &output)?;
        println!(
            "wrote the {} engine ({} files) to {} ({})",
            engine.target,
            engine.files.len(),
            output.display(),
            crate::hardware::human_bytes(size)
        );
        warn_without_exe(&target, &output);
        return Ok(());
    }
    let Some(model) = &run.model else {
        bail!("pack needs a model: stove pack --model MODEL.gguf -o OUT (or --engine-only)");
    };
    crate::cli::check_default_args(&args.default_args)
        .map_err(|e| anyhow::anyhow!("the default arguments after -- are not valid: {e}"))?;
    let chat_template = args.chat_template.as_deref().map(read_chat_template).transpose()?;
    let packed = pack(&PackOptions {
        model: model.clone(),
        out: output.clone(),
        name: args.name.clone(),
        engine,
        web: args.web.clone(),
        chat_template,
        default_args: args.default_args.clone(),
        sign: args.sign.as_deref().map(signing::load_signing_key).transpose()?,
        draft: run.draft.clone(),
        embedding_model: run.embedding_model.clone(),
        mmproj: run.mmproj.clone(),
    })?;
    let manifest = &packed.bundle.manifest;
    println!(
        "packed {} ({} {}, {}) into {} ({})",
        manifest.name,
        manifest.model.architecture,
        manifest.model.quantization,
        crate::hardware::human_bytes(manifest.model.size),
        output.display(),
        crate::hardware::human_bytes(packed.size)
    );
    warn_without_exe(&target, &output);
    if let (Some(dir), Some(plan)) = (&args.stick, &stick_plan) {
        return stick::finish(dir, plan, &output);
    }
    if packed.size > FAT32_LIMIT {
        eprintln!(
            "warning: {} is over 4 GiB. It will not fit on a FAT32 USB stick (format it as exFAT), and Windows \
             will not run an executable this large: there, copy a bare stove engine beside it and start \
             `stove --model {}`",
            output.display(),
            output.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        );
    }
    Ok(())
}

/// A file for Windows must end in `.exe` to start there; said, not changed, since the person chose the name.
fn warn_without_exe(target: &str, output: &Path) {
    if target.contains("windows") && output.extension().is_none_or(|e| !e.eq_ignore_ascii_case("exe")) {
        eprintln!(
            "note: {} holds a Windows engine; Windows starts it only with a name ending in .exe",
            output.display()
        );
    }
}

pub fn pack(options: &PackOptions) -> Result<Packed> {
    let (span, model) = companions::open(&options.model, None)?.into_manifest();
    let engine_len = options.engine.launcher_len;
    let name = options.name.clone().unwrap_or_else(|| default_name(&model.file_name));
    let draft = options.draft.as_deref().map(|path| check_draft(path, &span)).transpose()?;
    let embedding = options.embedding_model.as_deref().map(check_embedding_model).transpose()?;
    let mmproj = match options.mmproj.as_deref().map(check_projector).transpose()? {
        Some(projector) => {
            check_projector_fits(&projector, &span)?;
            Some((projector.span.clone(), projector_manifest(&projector)?))
        }
        None => None,
    };
    let web_files = match &options.web {
        Some(dir) => collect_web_files(dir)?,
        None => Vec::new(),
    };

    // What will be written, within the archive's few kilobytes of headers.
    let total = engine_len
        + options.engine.files_len()
        + span.len
        + draft.as_ref().map_or(0, |(d, _)| d.len)
        + embedding.as_ref().map_or(0, |(e, _)| e.len)
        + mmproj.as_ref().map_or(0, |(p, _)| p.len);
    file_system::check_fits(output_folder(&options.out).as_path(), total, "write it to another disk with -o")?;
    let temp = temporary_beside(&options.out)?;
    let write_context = || {
        format!(
            "while writing {} (if the disk is full, free at least {} MB there or choose another -o)",
            temp.path().display(),
            total >> 20
        )
    };

    let mut out = BufWriter::with_capacity(1 << 20, temp.as_file().try_clone()?);
    let engine_sha256 = options.engine.copy_launcher(&mut out, "engine", write_context)?;
    // Starting the model's local header at an odd multiple of ZIP_ALIGNMENT puts its data at the next multiple,
    // which is then a multiple of MODEL_ALIGNMENT.
    let header_at = (engine_len.div_ceil(ZIP_ALIGNMENT) | 1) * ZIP_ALIGNMENT;
    io::copy(&mut io::repeat(0).take(header_at - engine_len), &mut out).with_context(write_context)?;

    let args = match options.default_args.is_empty() {
        true => None,
        false => Some(serde_json::to_vec_pretty(&options.default_args)?),
    };
    let chat_template = options.chat_template.clone().map(String::into_bytes);
    let manifest = Manifest {
        format: bundle::FORMAT_VERSION,
        name,
        stove_version: env!("CARGO_PKG_VERSION").to_string(),
        engine_len,
        engine_sha256: Some(engine_sha256.clone()),
        engine_index_sha256: None, // computed while the engine files are written
        args_sha256: args.as_deref().map(|bytes| hex(&Sha256::digest(bytes))),
        chat_template_sha256: chat_template.as_deref().map(|bytes| hex(&Sha256::digest(bytes))),
        web: web_files
            .iter()
            .map(|(name, data)| bundle::FileDigest { name: name.clone(), sha256: hex(&Sha256::digest(data)) })
            .collect(),
        model,
        draft: draft.as_ref().map(|(_, manifest)| manifest.clone()),
        embedding: embedding.as_ref().map(|(_, manifest)| manifest.clone()),
        mmproj: mmproj.as_ref().map(|(_, manifest)| manifest.clone()),
    };
    let payload = Payload {
        manifest,
        engine: &options.engine,
        launcher_sha256: &engine_sha256,
        args,
        chat_template,
        web: &web_files,
        sign: options.sign.as_ref(),
        draft: draft.as_ref().map(|(span, _)| span),
        embedding: embedding.as_ref().map(|(span, _)| span),
        mmproj: mmproj.as_ref().map(|(span, _)| span),
    };
    let (file, manifest) = match write_payload(out, &span, payload) {
        Ok(written) => written,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            bail!("packing was interrupted; {} was not written", options.out.display())
        }
        Err(e) => return Err(e).with_context(write_context),
    };
    file.sync_all().with_context(write_context)?;

    // Read the result back exactly as a run would, before it takes the output's name.
    let bundle = Bundle::find(temp.path())?.context("the packed file has no payload (this is a stove bug)")?;
    if bundle.model.offset % MODEL_ALIGNMENT != 0 || bundle.manifest != manifest {
        bail!("the packed file's layout is wrong (model at byte {}); this is a stove bug", bundle.model.offset);
    }
    set_executable(temp.as_file())?;
    let size = temp.as_file().metadata()?.len();
    temp.persist(&options.out).with_context(|| format!("while moving the packed file to {}", options.out.display()))?;
    let draft = bundle.draft.as_ref().map(|d| d.moved_to(options.out.clone()));
    let embedding = bundle.embedding.as_ref().map(|e| e.moved_to(options.out.clone()));
    let mmproj = bundle.mmproj.as_ref().map(|p| p.moved_to(options.out.clone()));
    let bundle = Bundle { model: bundle.model.moved_to(options.out.clone()), draft, embedding, mmproj, ..bundle };
    Ok(Packed { bundle, size })
}

/// Writes the launcher and the engine's files with no model, through a temporary file like `pack`.
pub fn pack_engine_only(engine: &EngineSource, out: &Path) -> Result<u64> {
    let temp = temporary_beside(out)?;
    let write_context = || format!("while writing {} (is the disk full?)", temp.path().display());
    let mut writer = BufWriter::new(temp.as_file().try_clone()?);
    let launcher_sha256 = engine.copy_launcher(&mut writer, "", write_context)?;
    let mut zip = zip::ZipWriter::new(writer);
    engine::write_files(&mut zip, engine, &launcher_sha256).with_context(write_context)?;
    let file = zip.finish().with_context(write_context)?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().with_context(write_context)?;
    // Read back as the launcher will.
    let written = EngineSource::from_file(temp.path())?;
    if written.files.len() != engine.files.len() {
        bail!(
            "the written engine lists {} files instead of {}; this is a stove bug",
            written.files.len(),
            engine.files.len()
        );
    }
    set_executable(temp.as_file())?;
    let size = temp.as_file().metadata()?.len();
    temp.persist(out).with_context(|| format!("while moving the engine to {}", out.display()))?;
    Ok(size)
}

/// A temporary file in `out`'s folder (so the final rename cannot cross file systems), removed unless persisted.
fn temporary_beside(out: &Path) -> Result<tempfile::NamedTempFile> {
    let out_dir = output_folder(out);
    tempfile::Builder::new()
        .prefix(".stove-pack-")
        .suffix(".partial")
        .tempfile_in(&out_dir)
        .with_context(|| format!("while creating a temporary file in {}", out_dir.display()))
}

/// The folder `out` is written in.
fn output_folder(out: &Path) -> PathBuf {
    match out.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// What goes into the archive besides the model.
struct Payload<'a> {
    /// Complete but for the model's and the engine index's SHA-256, computed while they are written.
    manifest: Manifest,
    engine: &'a EngineSource,
    launcher_sha256: &'a str,
    args: Option<Vec<u8>>,
    chat_template: Option<Vec<u8>>,
    web: &'a [(String, Vec<u8>)],
    sign: Option<&'a SigningKey>,
    draft: Option<&'a bundle::ModelSpan>,
    embedding: Option<&'a bundle::ModelSpan>,
    mmproj: Option<&'a bundle::ModelSpan>,
}

/// Writes the archive after the launcher: the model (aligned, stored), the engine's files and their index,
/// the manifest with the model's and the index's SHA-256, its signature, the default arguments and the page
/// files. Returns the file and the completed manifest.
fn write_payload(out: BufWriter<File>, span: &bundle::ModelSpan, payload: Payload) -> io::Result<(File, Manifest)> {
    let Payload { mut manifest, engine, launcher_sha256, args, chat_template, web, sign, draft, embedding, mmproj } =
        payload;
    let mut zip = zip::ZipWriter::new(out);
    let mut write_entries = |zip: &mut zip::ZipWriter<BufWriter<File>>| -> io::Result<()> {
        let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
        let aligned = stored.with_alignment(ZIP_ALIGNMENT as u16).large_file(span.len >= u32::MAX as u64);
        zip.start_file(MODEL_ENTRY, aligned)?;
        manifest.model.sha256 = copy_with_progress(span, zip)?;
        // The other models and the projector: 32 KiB-aligned, so their data is 32-byte aligned as llama.cpp
        // maps it.
        let others = [
            (DRAFT_ENTRY, draft, manifest.draft.as_mut()),
            (EMBEDDING_ENTRY, embedding, manifest.embedding.as_mut()),
            (MMPROJ_ENTRY, mmproj, manifest.mmproj.as_mut().map(|p| &mut p.file)),
        ];
        for (entry, span, recorded) in others {
            if let (Some(span), Some(recorded)) = (span, recorded) {
                zip.start_file(
                    entry,
                    stored.with_alignment(ZIP_ALIGNMENT as u16).large_file(span.len >= u32::MAX as u64),
                )?;
                recorded.sha256 = copy_with_progress(span, zip)?;
            }
        }
        let index = engine::write_files(zip, engine, launcher_sha256)?;
        manifest.engine_index_sha256 = Some(hex(&Sha256::digest(&index)));
        // These exact bytes are what a signature covers.
        let manifest_bytes = serde_json::to_vec_pretty(&manifest)?;
        zip.start_file(MANIFEST_ENTRY, stored)?;
        zip.write_all(&manifest_bytes)?;
        if let Some(key) = sign {
            zip.start_file(SIGNATURE_ENTRY, stored)?;
            zip.write_all(&signing::sign(&manifest_bytes, key))?;
        }
        if let Some(args) = &args {
            zip.start_file(ARGS_ENTRY, stored)?;
            zip.write_all(args)?;
        }
        if let Some(template) = &chat_template {
            zip.start_file(CHAT_TEMPLATE_ENTRY, stored)?;
            zip.write_all(template)?;
        }
        let deflated = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        for (name, data) in web {
            zip.start_file(format!("{}{name}", bundle::WEB_PREFIX), deflated)?;
            zip.write_all(data)?;
        }
        Ok(())
    };
    if let Err(e) = write_entries(&mut zip) {
        // Dropping the writer would try to finish the broken archive and print that second failure to stderr;
        // the temporary file is deleted by its owner either way.
        std::mem::forget(zip);
        return Err(e);
    }
    let file = zip.finish()?.into_inner().map_err(|e| e.into_error())?;
    Ok((file, manifest))
}

/// Streams the GGUF into the archive, returning its SHA-256, with a progress bar on a terminal.
fn copy_with_progress(span: &bundle::ModelSpan, out: &mut impl Write) -> io::Result<String> {
    let mut model = File::open(&span.path)?;
    model.seek(io::SeekFrom::Start(span.offset))?;
    let (copied, sha256) = copy_hashing(model.take(span.len), span.len, out, "packing")?;
    if copied != span.len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{} ended after {copied} of {} model bytes", span.path.display(), span.len),
        ));
    }
    Ok(sha256)
}

/// Copies `from` (`len` bytes expected) into `to`, returning the bytes copied and their SHA-256. Shows a
/// progress bar labelled `label` on a terminal (none for an empty label); stops with `Interrupted` on Ctrl-C while packing.
pub fn copy_hashing(mut from: impl Read, len: u64, to: &mut impl Write, label: &str) -> io::Result<(u64, String)> {
    let progress = match label {
        "" => ProgressBar::hidden(),
        _ => ProgressBar::new(len).with_style(
            ProgressStyle::with_template(&format!(
                "{label} {{bar:40}} {{bytes}}/{{total_bytes}} {{bytes_per_sec}} {{eta}}"
            ))
            .expect("valid template"),
        ),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0;
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        copied += n as u64;
        progress.set_position(copied);
    }
    progress.finish_and_clear();
    Ok((copied, hex(&hasher.finalize())))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The model file's name without `.gguf`: it names the quantization too, and GGUFs' own `general.name` is
/// often a training-run label ("Smollm2 135M 8k Lc100K Mix1 Ep2").
fn default_name(file_name: &str) -> String {
    file_name.strip_suffix(".gguf").unwrap_or(file_name).to_string()
}

/// The files under `dir`, as (path relative to `dir` with `/` separators, contents), sorted.
fn collect_web_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = fs::read_dir(&current).with_context(|| format!("while reading --web {}", current.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(dir).expect("inside dir");
                let name = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
                files.push((name, path));
            }
        }
    }
    if !files.iter().any(|(name, _)| name == "index.html") {
        bail!("--web {} has no index.html, so it cannot replace the chat page", dir.display());
    }
    files.sort();
    let mut total = 0;
    files
        .into_iter()
        .map(|(name, path)| {
            let data = fs::read(&path).with_context(|| format!("while reading {}", path.display()))?;
            total += data.len() as u64;
            if total > bundle::MAX_WEB_BYTES {
                bail!(
                    "--web {} holds more than {} MiB; a chat page must be smaller",
                    dir.display(),
                    bundle::MAX_WEB_BYTES >> 20
                );
            }
            Ok((name, data))
        })
        .collect()
}

#[cfg(unix)]
fn set_executable(file: &File) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(0o755)).context("while making the packed file executable")
}

#[cfg(not(unix))]
fn set_executable(_file: &File) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_file() {
        assert_eq!(default_name("SmolLM2-135M-Instruct.Q4_1.gguf"), "SmolLM2-135M-Instruct.Q4_1");
        assert_eq!(default_name("model.bin"), "model.bin");
    }
}
