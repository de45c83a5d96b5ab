//! The GGUFs a bundle carries (the model, a draft model, an embedding model) and its chat template, each opened
//! and checked before a byte is written: a template llama.cpp can read, a draft with the model's vocabulary, an
//! embedding model that pools. A GGUF may also be taken from another stove file.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::bundle::{self, ModelManifest, ModelSpan, ProjectorManifest, ProjectorSource};
use crate::gguf::GgufInfo;

/// A GGUF to pack, opened: where its bytes are, what its header says, and the file name the manifest records
/// (another stove file's model keeps the name it was packed under).
pub(super) struct Opened {
    span: ModelSpan,
    info: GgufInfo,
    file_name: String,
}

impl Opened {
    /// Its bytes, and what the manifest records of it (the SHA-256 is filled in while it is copied).
    pub fn into_manifest(self) -> (ModelSpan, ModelManifest) {
        let Opened { span, info, file_name } = self;
        let manifest = ModelManifest {
            file_name,
            size: span.len,
            sha256: String::new(),
            architecture: info.architecture,
            parameters: info.parameters,
            quantization: info.quantization,
            context_length: info.context_length,
            has_chat_template: info.chat_template.is_some(),
        };
        (span, manifest)
    }
}

/// What the manifest records of a projector (the SHA-256 is filled in while it is copied).
pub(super) fn projector_manifest(projector: &ProjectorSource) -> Result<ProjectorManifest> {
    let info = projector.span.read_info()?;
    let file = Opened { span: projector.span.clone(), info, file_name: projector.file_name.clone() }.into_manifest().1;
    Ok(ProjectorManifest {
        file,
        projector_type: projector.header.kind.clone(),
        vision: projector.header.vision,
        audio: projector.header.audio,
    })
}

/// Opens the GGUF at `path` (or the model of the stove file there); `flag` names the option in errors.
pub(super) fn open(path: &Path, flag: Option<&str>) -> Result<Opened> {
    let source = match flag {
        Some(flag) => bundle::open_model(path).with_context(|| format!("{flag} {}", path.display()))?,
        None => bundle::open_model(path)?,
    };
    let span = source.span().clone();
    let info = span.read_info()?;
    let file_name = match &source {
        bundle::ModelSource::Bundle(b) => b.manifest.model.file_name.clone(),
        bundle::ModelSource::Gguf(_) => {
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.gguf".into())
        }
    };
    Ok(Opened { span, info, file_name })
}

/// Reads a chat template for `pack --chat-template` and checks that llama.cpp can read it, so a broken one is
/// refused now and not when the bundle starts.
pub(super) fn read_chat_template(path: &Path) -> Result<String> {
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the chat template {} (it must be UTF-8 text)", path.display()))?;
    if source.len() > bundle::MAX_CHAT_TEMPLATE_BYTES {
        bail!(
            "the chat template {} is over {} KiB; no real template is that large",
            path.display(),
            bundle::MAX_CHAT_TEMPLATE_BYTES >> 10
        );
    }
    crate::llama::chat::ChatTemplates::from_source(&source)
        .with_context(|| format!("llama.cpp cannot read the chat template {}", path.display()))?;
    Ok(source)
}

/// The draft model `--draft` names. Refused when its vocabulary is not the model's (llama.cpp's rule, reading
/// only the two vocabularies), so a bundle never carries a draft that cannot guess its model's tokens.
pub(super) fn check_draft(path: &Path, model: &ModelSpan) -> Result<(ModelSpan, ModelManifest)> {
    let draft = open(path, Some("--draft"))?;
    let matches = crate::llama::speculative::vocabularies_match_at(
        (&model.path, model.offset),
        (&draft.span.path, draft.span.offset),
    )
    .map_err(anyhow::Error::msg)?;
    if !matches {
        bail!(
            "the draft model {} has another vocabulary than the model, so it cannot guess its tokens; use a \
             smaller model of the same family (the same tokenizer)",
            path.display()
        );
    }
    Ok(draft.into_manifest())
}

/// The embedding model `--embedding-model` names (at pack time and at run time). Refused unless its GGUF names
/// a pooling type (what embedding models carry, and what makes llama.cpp give one vector per text): a chat
/// model's vectors are already served without it.
pub(crate) fn check_embedding_model(path: &Path) -> Result<(ModelSpan, ModelManifest)> {
    let embedder = open(path, Some("--embedding-model"))?;
    if !embedder.info.pools {
        bail!(
            "{} is not an embedding model: its GGUF names no pooling type ({}.pooling_type); pack a model made \
             for embeddings (nomic-embed-text, bge, e5, gte …); without one, /v1/embeddings uses the chat model",
            path.display(),
            embedder.info.architecture
        );
    }
    Ok(embedder.into_manifest())
}

/// The projector `--mmproj` names (at pack time and at run time): the mmproj GGUF published beside a vision or
/// audio model. Refused unless its header says it is one (architecture `clip`) with an encoder; whether it was
/// made for this model is llama.cpp's to say when it loads (`pack` loads it once to check).
pub(crate) fn check_projector(path: &Path) -> Result<ProjectorSource> {
    let len = std::fs::metadata(path)
        .with_context(|| {
            format!(
                "--mmproj {}: cannot read it (it is the projector GGUF published beside a vision model)",
                path.display()
            )
        })?
        .len();
    let span = ModelSpan::new(path.to_path_buf(), 0, len);
    let info = span.read_info().with_context(|| format!("--mmproj {}", path.display()))?;
    let Some(header) = info.projector.filter(|p| p.vision || p.audio) else {
        bail!(
            "--mmproj {} is not a projector: its GGUF is a {} model, not the `clip` encoder llama.cpp's multimodal \
             library loads; pass the mmproj-….gguf published beside the vision model",
            path.display(),
            info.architecture
        );
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "mmproj.gguf".into());
    Ok(ProjectorSource { span, file_name, header, sha256: None })
}

/// Loads the projector once against the model's description (no weights): what llama.cpp checks when the
/// bundle starts (that it was made for a model of this width, of a kind it supports) is checked before a byte
/// is written.
pub(super) fn check_projector_fits(projector: &ProjectorSource, model: &ModelSpan) -> Result<()> {
    // Clip runs its check on a backend: the CPU's is enough, and no GPU needs waking to pack.
    crate::hardware::backends::load(crate::hardware::backends::GpuChoice::None).map_err(anyhow::Error::msg)?;
    let description = crate::llama::load_description_at(&model.path, model.offset)?;
    crate::llama::vision::Projector::load(&projector.span.path, &description, 1, false, 512)
        .map_err(anyhow::Error::msg)?;
    Ok(())
}
