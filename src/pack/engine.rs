//! The engine a bundle is packed with: a launcher's bytes and the engine files that go with it (llama.cpp's
//! libraries, `libstove.so`, the backend modules). It comes from the running stove, or from any other stove
//! file (`stove pack --engine FILE`), such as one built for another system, so one machine can pack for all.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::launch::{EngineFile, EngineIndex, FileKind, ARCHIVE_DIR, INDEX_ENTRY};

pub struct EngineSource {
    /// The file whose first `launcher_len` bytes are the launcher.
    pub launcher: PathBuf,
    pub launcher_len: u64,
    pub target: String,
    pub files: Vec<SourceFile>,
}

pub struct SourceFile {
    pub name: String,
    pub kind: FileKind,
    origin: Origin,
}

impl SourceFile {
    /// A GPU backend (`libggml-vulkan.so`, `libggml-cuda.so`: a module that is neither one of the CPU variants
    /// nor the RPC backend, which CPU-only workers use too), or a library only such a backend needs (CUDA's
    /// runtime and cuBLAS).
    pub fn is_for_gpu_only(&self) -> bool {
        use crate::hardware::backends::{is_cpu_variant, is_rpc_module};
        match self.kind {
            FileKind::Module => !is_cpu_variant(&self.name) && !is_rpc_module(&self.name),
            FileKind::GpuRuntime => true,
            FileKind::Library | FileKind::Engine => false,
        }
    }
}

enum Origin {
    /// A file on disk, or a memory file of the running engine (`/proc/self/fd/N`).
    Path(PathBuf),
    /// An entry in the archive at the end of a stove file.
    Entry { archive: PathBuf, size: u64 },
}

impl EngineSource {
    /// The engine this stove runs on.
    pub fn running() -> Result<Self> {
        let launch = crate::launch();
        if launch.exe.as_os_str().is_empty() {
            bail!("this engine was not started by stove's launcher, so it has no launcher to pack");
        }
        // From a build directory the files are loose; otherwise they are in the stove file's own archive,
        // which is read again rather than trusting copies in memory.
        if !matches!(launch.placement, crate::launch::Placement::Build(_)) {
            return Self::from_file(&launch.exe);
        }
        Ok(EngineSource {
            launcher: launch.exe.clone(),
            launcher_len: launch.launcher_len,
            target: launch.target.clone(),
            files: launch
                .files
                .iter()
                .map(|f| SourceFile { name: f.name.clone(), kind: f.kind, origin: Origin::Path(f.path.clone()) })
                .collect(),
        })
    }

    /// The engine carried by another stove file: a bundle, or an engine-only file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot read the engine {}", path.display()))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| {
            anyhow::anyhow!("{} is not a stove file with an engine (it has no archive at its end: {e})", path.display())
        })?;
        let mut json = Vec::new();
        archive
            .by_name(INDEX_ENTRY)
            .map_err(|_| {
                anyhow::anyhow!(
                    "{} carries no engine files ({INDEX_ENTRY} is missing); it was packed by an older stove, or \
                     is not a stove file",
                    path.display()
                )
            })?
            .take(1 << 20)
            .read_to_end(&mut json)
            .with_context(|| format!("cannot read {INDEX_ENTRY} in {}", path.display()))?;
        let index: EngineIndex =
            serde_json::from_slice(&json).with_context(|| format!("{INDEX_ENTRY} in {} is damaged", path.display()))?;
        Ok(EngineSource {
            launcher: path.to_path_buf(),
            launcher_len: index.launcher_len,
            target: index.target,
            files: index
                .files
                .into_iter()
                .map(|f| SourceFile {
                    name: f.name,
                    kind: f.kind,
                    origin: Origin::Entry { archive: path.to_path_buf(), size: f.size },
                })
                .collect(),
        })
    }

    /// A stand-in engine for tests of the bundle format: `launcher` and no engine files.
    #[cfg(test)]
    pub fn stand_in(launcher: &Path) -> Self {
        let launcher_len = std::fs::metadata(launcher).map(|m| m.len()).unwrap_or(0);
        EngineSource { launcher: launcher.to_path_buf(), launcher_len, target: "test".into(), files: Vec::new() }
    }

    /// Copies the launcher's bytes into `out` (a progress bar labelled `label` on a terminal) and returns their
    /// SHA-256. Errors while copying are described by `write_context`.
    pub fn copy_launcher(
        &self,
        out: &mut impl Write,
        label: &str,
        write_context: impl Fn() -> String,
    ) -> Result<String> {
        let mut launcher = File::open(&self.launcher)
            .with_context(|| format!("while opening the engine {}", self.launcher.display()))?;
        let (copied, sha256) =
            super::copy_hashing((&mut launcher).take(self.launcher_len), self.launcher_len, out, label)
                .with_context(write_context)?;
        if copied != self.launcher_len {
            bail!("the engine {} changed while it was being read", self.launcher.display());
        }
        Ok(sha256)
    }

    /// Bytes the engine files take, for the disk-space hint.
    pub fn files_len(&self) -> u64 {
        self.files
            .iter()
            .map(|f| match &f.origin {
                Origin::Path(path) => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                Origin::Entry { size, .. } => *size,
            })
            .sum()
    }
}

/// Writes every engine file into `zip` under `engine/` (stored, so the launcher copies it straight out), then
/// the index listing them. Returns the index's exact bytes, which the manifest's hash covers.
pub fn write_files<W: Write + io::Seek>(
    zip: &mut zip::ZipWriter<W>,
    source: &EngineSource,
    launcher_sha256: &str,
) -> io::Result<Vec<u8>> {
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .unix_permissions(0o755);
    let mut files = Vec::with_capacity(source.files.len());
    for file in &source.files {
        zip.start_file(format!("{ARCHIVE_DIR}{}", file.name), stored)?;
        let (size, sha256) = match &file.origin {
            Origin::Path(path) => {
                let from = File::open(path).map_err(|e| annotate(e, &file.name, path))?;
                copy_hashed(from, zip)?
            }
            Origin::Entry { archive, size } => {
                let mut reader = zip::ZipArchive::new(File::open(archive)?).map_err(io::Error::other)?;
                let entry = reader.by_name(&format!("{ARCHIVE_DIR}{}", file.name)).map_err(io::Error::other)?;
                // The archive's CRC check fails the copy if the source's bytes are damaged.
                let copied = copy_hashed(entry, zip).map_err(|e| annotate(e, &file.name, archive))?;
                if copied.0 != *size {
                    return Err(io::Error::other(format!("{} in {} is cut short", file.name, archive.display())));
                }
                copied
            }
        };
        files.push(EngineFile { name: file.name.clone(), kind: file.kind, size, sha256 });
    }
    let index = EngineIndex {
        target: source.target.clone(),
        launcher_len: source.launcher_len,
        launcher_sha256: launcher_sha256.to_string(),
        files,
    };
    let bytes = serde_json::to_vec_pretty(&index)?;
    zip.start_file(INDEX_ENTRY, stored.unix_permissions(0o644))?;
    zip.write_all(&bytes)?;
    Ok(bytes)
}

fn copy_hashed(from: impl Read, to: &mut impl Write) -> io::Result<(u64, String)> {
    super::copy_hashing(from, 0, to, "")
}

fn annotate(error: io::Error, name: &str, from: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("while copying the engine's {name} from {}: {error}", from.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_only_packs_leave_out_gpu_modules_and_their_runtimes() {
        let file = |name: &str, kind| SourceFile { name: name.into(), kind, origin: Origin::Path(PathBuf::new()) };
        assert!(file("libggml-vulkan.so", FileKind::Module).is_for_gpu_only());
        assert!(file("libggml-cuda.so", FileKind::Module).is_for_gpu_only());
        assert!(file("libcublasLt.so.13", FileKind::GpuRuntime).is_for_gpu_only());
        assert!(!file("libggml-cpu-haswell.so", FileKind::Module).is_for_gpu_only());
        assert!(!file("libggml-rpc.so", FileKind::Module).is_for_gpu_only());
        assert!(!file("libggml-base.so.0", FileKind::Library).is_for_gpu_only());
        assert!(!file("libstove.so", FileKind::Engine).is_for_gpu_only());
    }
}
