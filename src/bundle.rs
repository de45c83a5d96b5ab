//! The payload a bundle carries after its engine, and how stove finds and checks it.
//!
//! A bundle is stove's launcher followed by a ZIP archive (so `unzip -l bundle` lists it, as with
//! llamafile). The archive holds, in this order:
//!
//! | entry                 | what                                                         |
//! |-----------------------|--------------------------------------------------------------|
//! | `stove/model.gguf`    | the GGUF, stored, its first byte at a 64 KiB-aligned offset  |
//! | `stove/draft.gguf`    | optional: a draft model for speculative decoding, stored, 32 KiB-aligned |
//! | `stove/embedding.gguf`| optional: an embedding model that serves `/v1/embeddings`, stored, 32 KiB-aligned |
//! | `stove/mmproj.gguf`   | optional: the projector that lets the model see or hear (mtmd), stored, 32 KiB-aligned |
//! | `engine/...`          | the engine the launcher loads, and `engine/index.json` listing it ([`crate::launch`]) |
//! | `stove/manifest.json` | [`Manifest`]: what the model is, who packed it, every part's SHA-256 |
//! | `stove/signature.json`| optional Ed25519 signature over the manifest's bytes ([`crate::signing`]) |
//! | `stove/args.json`     | optional default arguments, a JSON array of strings          |
//! | `stove/chat_template.jinja` | optional chat template that replaces the model's own   |
//! | `web/...`             | optional chat page files that replace the built-in ones      |
//!
//! The model comes first so that a bundle cut short (a copy to a USB stick that did not finish) can still be
//! recognised from its first entry's header, and reported as truncated rather than as "no model".

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use zip::CompressionMethod;

use crate::gguf::{self, GgufError, GgufInfo, ProjectorHeader};

pub const MODEL_ENTRY: &str = "stove/model.gguf";
/// A draft model for speculative decoding (`pack --draft`), stored and aligned like the model.
pub const DRAFT_ENTRY: &str = "stove/draft.gguf";
/// An embedding model (`pack --embedding-model`) that serves `/v1/embeddings` in place of the chat model.
pub const EMBEDDING_ENTRY: &str = "stove/embedding.gguf";
/// A vision or audio model's projector (`pack --mmproj`), which llama.cpp's `mtmd` loads beside the model.
pub const MMPROJ_ENTRY: &str = "stove/mmproj.gguf";
pub const MANIFEST_ENTRY: &str = "stove/manifest.json";
pub const ARGS_ENTRY: &str = "stove/args.json";
pub const CHAT_TEMPLATE_ENTRY: &str = "stove/chat_template.jinja";
/// Largest chat template a bundle may carry (published ones are a few KiB to tens of KiB).
pub const MAX_CHAT_TEMPLATE_BYTES: usize = 1 << 20;
pub const SIGNATURE_ENTRY: &str = "stove/signature.json";
pub const WEB_PREFIX: &str = "web/";

/// The GGUF's first byte sits at a multiple of this, so it can be mapped with 4K, 16K or 64K pages.
pub const MODEL_ALIGNMENT: u64 = 64 * 1024;
/// The bundle format this stove writes and reads. 2: the engine is carried as files in the archive.
pub const FORMAT_VERSION: u32 = 2;
/// Largest chat page override stove will load into memory.
pub const MAX_WEB_BYTES: u64 = 64 << 20;

/// `stove/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    /// The name shown on the page and in `/v1/models`.
    pub name: String,
    pub stove_version: String,
    /// Bytes of the launcher before the archive.
    pub engine_len: u64,
    /// SHA-256 of those launcher bytes (absent in bundles packed before stove recorded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_sha256: Option<String>,
    /// SHA-256 of `engine/index.json`, which lists every engine file with its own SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_index_sha256: Option<String>,
    pub model: ModelManifest,
    /// The draft model (`stove/draft.gguf`), when the bundle carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<ModelManifest>,
    /// The embedding model (`stove/embedding.gguf`), when the bundle carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<ModelManifest>,
    /// The projector (`stove/mmproj.gguf`), when the bundle carries one: what the model can see or hear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmproj: Option<ProjectorManifest>,
    /// SHA-256 of `stove/args.json`, when the bundle has default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_sha256: Option<String>,
    /// SHA-256 of `stove/chat_template.jinja`, when the bundle carries its own chat template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_sha256: Option<String>,
    /// SHA-256 of each `web/` file, by its name under `web/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub web: Vec<FileDigest>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileDigest {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelManifest {
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
    pub architecture: String,
    pub parameters: u64,
    pub quantization: String,
    pub context_length: Option<u64>,
    pub has_chat_template: bool,
}

/// A projector as the manifest records it: its file, and what it reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProjectorManifest {
    #[serde(flatten)]
    pub file: ModelManifest,
    /// llama.cpp's name for its kind (`clip.projector_type`: gemma3, idefics3, ultravox …).
    pub projector_type: String,
    /// Whether the model can be shown pictures, and whether it can hear sound.
    pub vision: bool,
    pub audio: bool,
}

/// A projector to load or pack beside a model: its bytes, the name it was published under, what it reads, and
/// (from a bundle's manifest) its SHA-256.
#[derive(Debug, Clone)]
pub struct ProjectorSource {
    pub span: ModelSpan,
    pub file_name: String,
    pub header: ProjectorHeader,
    pub sha256: Option<String>,
}

/// What a projector lets the model do, in words: "sees pictures", "hears sound", "sees pictures and hears sound".
pub fn senses(vision: bool, audio: bool) -> &'static str {
    match (vision, audio) {
        (true, true) => "sees pictures and hears sound",
        (true, false) => "sees pictures",
        (false, true) => "hears sound",
        (false, false) => "reads text only",
    }
}

/// Where the bytes of a GGUF are: a whole `.gguf` file, or an entry inside a bundle.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpan {
    pub path: PathBuf,
    pub offset: u64,
    pub len: u64,
    /// The header, read once: opening the model checks it, and the engine, `info` and `pack` use it.
    header: OnceLock<Box<GgufInfo>>,
}

impl ModelSpan {
    pub fn new(path: PathBuf, offset: u64, len: u64) -> Self {
        ModelSpan { path, offset, len, header: OnceLock::new() }
    }

    /// The same bytes, found at another path (a bundle renamed into place).
    pub fn moved_to(&self, path: PathBuf) -> Self {
        ModelSpan { path, ..self.clone() }
    }

    /// The GGUF header inside this span, read on first use.
    pub fn read_info(&self) -> Result<GgufInfo, BundleError> {
        if let Some(header) = self.header.get() {
            return Ok(GgufInfo::clone(header));
        }
        let file = open(&self.path)?;
        let header = gguf::read_info(file, self.offset, self.len)
            .map_err(|source| BundleError::BadModel { path: self.path.clone(), source })?;
        Ok(GgufInfo::clone(self.header.get_or_init(|| Box::new(header))))
    }
}

/// A bundle's payload, checked against the real file.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    pub model: ModelSpan,
    /// The draft model for speculative decoding, when the bundle carries one.
    pub draft: Option<ModelSpan>,
    /// The embedding model that serves `/v1/embeddings`, when the bundle carries one.
    pub embedding: Option<ModelSpan>,
    /// The projector that lets the model see or hear, when the bundle carries one.
    pub mmproj: Option<ModelSpan>,
    pub default_args: Vec<String>,
    /// Files under `web/` in the payload, with that prefix removed.
    pub web: Vec<(String, Vec<u8>)>,
    /// The exact bytes of `stove/manifest.json`, which a signature covers.
    pub manifest_bytes: Vec<u8>,
    /// The exact bytes of `stove/args.json`, if present.
    pub args_bytes: Option<Vec<u8>>,
    /// `stove/chat_template.jinja`, if the bundle carries a chat template of its own.
    pub chat_template: Option<String>,
    /// `stove/signature.json`, if the bundle is signed.
    pub signature: Option<Vec<u8>>,
}

/// A model to serve: a bundle's, or a bare GGUF's.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Bundle(Box<Bundle>),
    Gguf(ModelSpan),
}

impl ModelSource {
    pub fn span(&self) -> &ModelSpan {
        match self {
            ModelSource::Bundle(bundle) => &bundle.model,
            ModelSource::Gguf(span) => span,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is truncated: it is {actual} bytes but its model needs {expected}. \
         It was probably copied incompletely; copy it again from the original"
    )]
    Truncated { path: PathBuf, expected: u64, actual: u64 },
    #[error(
        "{path} is truncated: its model is complete but the archive index at its end is missing. \
         It was probably copied incompletely; copy it again from the original"
    )]
    IndexMissing { path: PathBuf },
    #[error("{path} holds a damaged stove payload: {reason}. Pack it again with `stove pack`")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path} is neither a GGUF model nor a stove bundle")]
    NotAModel { path: PathBuf },
    #[error("{path}: the model inside is not a usable GGUF: {source}")]
    BadModel { path: PathBuf, source: GgufError },
}

fn open(path: &Path) -> Result<File, BundleError> {
    File::open(path).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_path_buf(), source }
}

/// Opens what `--model` names: a `.gguf`, or any file holding a stove payload.
pub fn open_model(path: &Path) -> Result<ModelSource, BundleError> {
    let mut file = open(path)?;
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(io_err(path))?;
    if n == 4 && &magic == b"GGUF" {
        let span = ModelSpan::new(path.to_path_buf(), 0, len);
        span.read_info()?;
        return Ok(ModelSource::Gguf(span));
    }
    match Bundle::find(path)? {
        Some(bundle) => Ok(ModelSource::Bundle(Box::new(bundle))),
        None => Err(BundleError::NotAModel { path: path.to_path_buf() }),
    }
}

/// The models in the folder of `exe`, an engine file carried beside them (as on a stick): the `.gguf`, `.stove`
/// and `.exe` files there other than `exe` itself, each opened, sorted by path. Files that hold no model are left
/// out; damaged ones are kept with their error (`verify` reports them, serving passes them by). Nothing is
/// written there.
pub fn models_beside(exe: &Path) -> Vec<(PathBuf, Result<ModelSource, BundleError>)> {
    let folder = exe.parent().unwrap_or(Path::new("."));
    let own = exe.canonicalize().ok();
    let mut found: Vec<(PathBuf, Result<ModelSource, BundleError>)> = std::fs::read_dir(folder)
        .map(|entries| entries.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|path| {
            let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            matches!(extension.as_deref(), Some("gguf" | "stove" | "exe"))
                && path.is_file()
                && path.canonicalize().ok() != own
        })
        .filter_map(|path| match open_model(&path) {
            Err(BundleError::NotAModel { .. }) => None,
            opened => Some((path, opened)),
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

impl Bundle {
    /// The projector this bundle carries, with what its manifest records of it.
    pub fn projector(&self) -> Option<ProjectorSource> {
        let (span, recorded) = (self.mmproj.as_ref()?, self.manifest.mmproj.as_ref()?);
        Some(ProjectorSource {
            span: span.clone(),
            file_name: recorded.file.file_name.clone(),
            header: ProjectorHeader {
                kind: recorded.projector_type.clone(),
                vision: recorded.vision,
                audio: recorded.audio,
            },
            sha256: Some(recorded.file.sha256.clone()),
        })
    }

    /// Finds the payload at the end of `path`. `Ok(None)` means the file carries none (a bare engine).
    pub fn find(path: &Path) -> Result<Option<Bundle>, BundleError> {
        let mut file = open(path)?;
        let file_len = file.metadata().map_err(io_err(path))?.len();
        let mut archive = match zip::ZipArchive::new(&mut file) {
            Ok(archive) => archive,
            // No readable archive index at the end: a bare engine, or a bundle whose end was cut off.
            Err(_) => {
                return match find_model_header_end(&mut open(path)?, path, file_len)? {
                    None => Ok(None),
                    Some(expected) if expected > file_len => {
                        Err(BundleError::Truncated { path: path.to_path_buf(), expected, actual: file_len })
                    }
                    Some(_) => Err(BundleError::IndexMissing { path: path.to_path_buf() }),
                }
            }
        };
        // No model entry: a bare engine (its archive holds only the engine).
        let Some(model) = stored_gguf(&mut archive, path, MODEL_ENTRY, file_len)? else { return Ok(None) };
        let draft = stored_gguf(&mut archive, path, DRAFT_ENTRY, file_len)?;
        let embedding = stored_gguf(&mut archive, path, EMBEDDING_ENTRY, file_len)?;
        let mmproj = stored_gguf(&mut archive, path, MMPROJ_ENTRY, file_len)?;
        let manifest_bytes = read_entry(&mut archive, path, MANIFEST_ENTRY, 1 << 20)?;
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| corrupt(path, format!("{MANIFEST_ENTRY} is not valid: {e}")))?;
        if manifest.format > FORMAT_VERSION {
            return Err(corrupt(
                path,
                format!(
                    "it uses bundle format {} but this stove reads up to {FORMAT_VERSION}; use a newer stove",
                    manifest.format
                ),
            ));
        }
        if manifest.engine_len > model.offset {
            return Err(corrupt(path, "the manifest's engine length runs into the model".into()));
        }
        let args_bytes = match archive.index_for_name(ARGS_ENTRY) {
            Some(_) => Some(read_entry(&mut archive, path, ARGS_ENTRY, 1 << 20)?),
            None => None,
        };
        let default_args = match &args_bytes {
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|e| corrupt(path, format!("{ARGS_ENTRY} is not a JSON array of strings: {e}")))?,
            None => Vec::new(),
        };
        let chat_template = match archive.index_for_name(CHAT_TEMPLATE_ENTRY) {
            Some(_) => {
                let bytes = read_entry(&mut archive, path, CHAT_TEMPLATE_ENTRY, MAX_CHAT_TEMPLATE_BYTES as u64)?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| corrupt(path, format!("{CHAT_TEMPLATE_ENTRY} is not UTF-8 text")))?;
                Some(text)
            }
            None => None,
        };
        let signature = match archive.index_for_name(SIGNATURE_ENTRY) {
            Some(_) => Some(read_entry(&mut archive, path, SIGNATURE_ENTRY, 64 << 10)?),
            None => None,
        };
        let web_names: Vec<String> = archive
            .file_names_raw()
            .filter_map(|name| std::str::from_utf8(name).ok())
            .filter(|name| name.starts_with(WEB_PREFIX) && !name.ends_with('/'))
            .map(str::to_owned)
            .collect();
        let mut web = Vec::with_capacity(web_names.len());
        let mut web_bytes = 0;
        for name in web_names {
            let data = read_entry(&mut archive, path, &name, MAX_WEB_BYTES - web_bytes)?;
            web_bytes += data.len() as u64;
            web.push((name[WEB_PREFIX.len()..].to_string(), data));
        }
        Ok(Some(Bundle {
            manifest,
            model,
            draft,
            embedding,
            mmproj,
            default_args,
            web,
            manifest_bytes,
            args_bytes,
            chat_template,
            signature,
        }))
    }
}

/// Where the GGUF stored under `name` lies in the file, checked to be stored whole (so it can be mapped), inside
/// the file and 32-byte aligned; `None` when the archive has no such entry.
fn stored_gguf(
    archive: &mut zip::ZipArchive<&mut File>,
    path: &Path,
    name: &str,
    file_len: u64,
) -> Result<Option<ModelSpan>, BundleError> {
    let entry = match archive.by_name(name) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(corrupt(path, format!("cannot read {name}: {e}"))),
    };
    if entry.compression() != CompressionMethod::Stored {
        return Err(corrupt(path, format!("{name} is compressed, so it cannot be mapped")));
    }
    let offset = entry.data_start().ok_or_else(|| corrupt(path, format!("{name} has no data offset")))?;
    check_span_fits(path, offset, entry.size(), file_len)?;
    if offset % 32 != 0 {
        return Err(corrupt(path, format!("{name} starts at byte {offset}, not 32-byte aligned")));
    }
    Ok(Some(ModelSpan::new(path.to_path_buf(), offset, entry.size())))
}

fn corrupt(path: &Path, reason: String) -> BundleError {
    BundleError::Corrupt { path: path.to_path_buf(), reason }
}

fn check_span_fits(path: &Path, offset: u64, len: u64, file_len: u64) -> Result<(), BundleError> {
    let end = offset.checked_add(len).ok_or_else(|| corrupt(path, "the model's size overflows".into()))?;
    if end > file_len {
        return Err(BundleError::Truncated { path: path.to_path_buf(), expected: end, actual: file_len });
    }
    Ok(())
}

fn read_entry(
    archive: &mut zip::ZipArchive<&mut File>,
    path: &Path,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, BundleError> {
    let entry = archive.by_name(name).map_err(|e| corrupt(path, format!("cannot read {name}: {e}")))?;
    if entry.size() > limit {
        return Err(corrupt(path, format!("{name} is {} bytes, more than stove accepts", entry.size())));
    }
    let mut data = Vec::with_capacity(entry.size() as usize);
    entry.take(limit).read_to_end(&mut data).map_err(|e| corrupt(path, format!("cannot read {name}: {e}")))?;
    Ok(data)
}

/// Scanning for a cut-off bundle's first entry stops after this many bytes: engines are far smaller.
const ENGINE_SCAN_LIMIT: u64 = 4 << 30;

/// In a file with no archive index at its end, finds a stove model entry's local header and returns where
/// that model's data would end; `None` if there is no such header (a bare engine, or some other file).
fn find_model_header_end(file: &mut File, path: &Path, file_len: u64) -> Result<Option<u64>, BundleError> {
    const LOCAL_HEADER: &[u8; 4] = b"PK\x03\x04";
    const FIXED: usize = 30;
    let name = MODEL_ENTRY.as_bytes();
    let finder = memchr::memmem::Finder::new(name);
    let mut buf = vec![0u8; 8 << 20];
    let overlap = FIXED + name.len();
    let mut chunk_start: u64 = 0;
    let scan_end = file_len.min(ENGINE_SCAN_LIMIT);
    while chunk_start < scan_end {
        file.seek(SeekFrom::Start(chunk_start)).map_err(io_err(path))?;
        let want = buf.len().min((file_len - chunk_start) as usize);
        file.read_exact(&mut buf[..want]).map_err(io_err(path))?;
        let chunk = &buf[..want];
        for at in finder.find_iter(chunk) {
            let Some(header) = at.checked_sub(FIXED).map(|h| &chunk[h..at]) else { continue };
            let name_len = u16::from_le_bytes([header[26], header[27]]) as usize;
            if &header[..4] != LOCAL_HEADER || name_len != name.len() {
                continue;
            }
            let extra_len = u16::from_le_bytes([header[28], header[29]]) as u64;
            let data_start = chunk_start + (at + name.len()) as u64 + extra_len;
            let mut size = u32::from_le_bytes(header[18..22].try_into().expect("4 bytes")) as u64;
            if size == u32::MAX as u64 {
                // ZIP64: the real sizes are in extra field 0x0001 (uncompressed, then compressed).
                let mut extra = vec![0u8; extra_len as usize];
                file.seek(SeekFrom::Start(data_start - extra_len)).map_err(io_err(path))?;
                file.read_exact(&mut extra).map_err(|_| BundleError::Truncated {
                    path: path.to_path_buf(),
                    expected: data_start,
                    actual: file_len,
                })?;
                size = zip64_size(&extra).unwrap_or(u64::MAX - data_start);
            }
            return Ok(Some(data_start.saturating_add(size)));
        }
        if chunk_start + want as u64 >= file_len {
            break;
        }
        chunk_start += (want - overlap) as u64;
    }
    Ok(None)
}

/// The uncompressed size from a ZIP64 extended information extra field in a local header.
fn zip64_size(mut extra: &[u8]) -> Option<u64> {
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = u16::from_le_bytes([extra[2], extra[3]]) as usize;
        let body = extra.get(4..4 + len)?;
        if id == 0x0001 && len >= 8 {
            return Some(u64::from_le_bytes(body[..8].try_into().ok()?));
        }
        extra = &extra[4 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// A real bundle packed from a tiny GGUF onto a stand-in engine, with default arguments and a page.
    /// Its bytes: the folder it was packed in is removed at once (a static is never dropped).
    fn packed() -> &'static Vec<u8> {
        static PACKED: OnceLock<Vec<u8>> = OnceLock::new();
        PACKED.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let engine = dir.path().join("engine");
            std::fs::write(&engine, vec![0x7f; 3000]).unwrap();
            let engine = crate::pack::EngineSource::stand_in(&engine);
            let model = dir.path().join("tiny.gguf");
            std::fs::write(&model, crate::gguf::sample::sample()).unwrap();
            let web = dir.path().join("web");
            std::fs::create_dir(&web).unwrap();
            std::fs::write(web.join("index.html"), "<p>hi</p>").unwrap();
            let out = dir.path().join("tiny.stove");
            crate::pack::pack(&crate::pack::PackOptions {
                model,
                out: out.clone(),
                name: None,
                engine,
                web: Some(web),
                chat_template: Some("{{ messages[0].content }}".into()),
                default_args: vec!["--ctx-size".into(), "512".into()],
                sign: None,
                draft: None,
                embedding_model: None,
                mmproj: None,
            })
            .unwrap();
            std::fs::read(&out).unwrap()
        })
    }

    #[test]
    fn the_packed_sample_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.stove");
        std::fs::write(&path, packed()).unwrap();
        let bundle = Bundle::find(&path).unwrap().unwrap();
        assert_eq!(bundle.default_args, ["--ctx-size", "512"]);
        assert_eq!(bundle.web.len(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Bytes of the payload changed and the file cut anywhere: finding the bundle gives a bundle whose
        /// model lies inside the file, or an error; never a panic.
        #[test]
        fn any_damage_to_a_payload_is_found_safely_or_refused(
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in prop::option::of(any::<prop::sample::Index>()),
        ) {
            let original = packed();
            let mut bytes = original.clone();
            // The payload starts after the 3000-byte engine; damage there and in the index at the end.
            let payload = 3000..bytes.len();
            for (at, value) in edits {
                let at = payload.start + at.index(payload.len());
                bytes[at] = value;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), &bytes).unwrap();
            if let Ok(Some(bundle)) = Bundle::find(file.path()) {
                prop_assert!(bundle.model.offset + bundle.model.len <= bytes.len() as u64);
                let _ = crate::verify::check(&bundle, None);
            }
        }
    }
}
