//! A path for the projector, which llama.cpp's multimodal loader needs: `mtmd_init_from_file` (clip's loader)
//! opens a path and reads the GGUF from its byte 0, so a projector stored inside the bundle cannot be read in
//! place the way the model is mapped.
//!
//! - A projector that is a whole file (`--mmproj FILE`) is loaded from that file.
//! - On Linux, a stored one is copied into an anonymous memory file (`memfd_create`, as the launcher does with
//!   the engine) and loaded through `/proc/self/fd/N`: nothing is written to disk, and the copy is freed as soon
//!   as the projector has loaded. Clip copies every weight into its own buffers (CPU or GPU) rather than mapping
//!   the file, so the copy costs the projector's size in memory for the seconds the load takes, and nothing after.
//!   The memory file is on the kernel's internal mount, which Landlock does not confine, so this works inside
//!   the sandbox.
//! - Elsewhere (Windows), it is extracted once into the per-user cache, named after its SHA-256
//!   (`%LOCALAPPDATA%\stove\mmproj\<sha256>.gguf`), and checked against that hash before every use, as the
//!   engine's own files are.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::bundle::ModelSpan;

/// The projector's bytes as a file mtmd can open. Whatever backs it (a memory file) lives as long as this.
pub struct ProjectorFile {
    path: PathBuf,
    /// The memory file's descriptor, closed (and its memory freed) when this is dropped.
    _backing: Option<File>,
}

impl ProjectorFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes the projector in `span` loadable by path; `sha256` is what the bundle's manifest records of it.
pub fn open(span: &ModelSpan, sha256: Option<&str>) -> Result<ProjectorFile, String> {
    let whole_file = span.offset == 0 && std::fs::metadata(&span.path).is_ok_and(|m| m.len() == span.len);
    if whole_file {
        return Ok(ProjectorFile { path: span.path.clone(), _backing: None });
    }
    placed(span, sha256)
}

/// Copies `len` bytes at `offset` of `path` into `out`.
fn copy_span(span: &ModelSpan, out: &mut File) -> io::Result<()> {
    let mut file = File::open(&span.path)?;
    file.seek(SeekFrom::Start(span.offset))?;
    let copied = io::copy(&mut file.take(span.len), out)?;
    if copied != span.len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the file ends inside the projector"));
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn placed(span: &ModelSpan, _sha256: Option<&str>) -> Result<ProjectorFile, String> {
    use std::os::fd::{AsRawFd, FromRawFd};

    let name = c"stove:mmproj.gguf";
    // SAFETY: `name` is NUL-terminated and static; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "cannot hold the projector in memory to load it (memfd_create: {}); start with --mmproj naming the \
             projector's own GGUF file",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    copy_span(span, &mut file)
        .map_err(|e| format!("cannot copy the projector out of {} into memory: {e}", span.path.display()))?;
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    Ok(ProjectorFile { path, _backing: Some(file) })
}

#[cfg(not(target_os = "linux"))]
fn placed(span: &ModelSpan, sha256: Option<&str>) -> Result<ProjectorFile, String> {
    use sha2::{Digest, Sha256};

    let sha256 = sha256.ok_or("the bundle's manifest records no SHA-256 for its projector; pack it again")?;
    let base = std::env::var_os(if cfg!(windows) { "LOCALAPPDATA" } else { "HOME" })
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .ok_or("no per-user cache folder (LOCALAPPDATA is not set) to load the projector from")?;
    let dir = base.join("stove").join("mmproj");
    let path = dir.join(format!("{sha256}.gguf"));
    let digest = |path: &Path| -> io::Result<String> {
        let mut hasher = Sha256::new();
        io::copy(&mut File::open(path)?, &mut hasher)?;
        Ok(crate::pack::hex(&hasher.finalize()))
    };
    if digest(&path).is_ok_and(|actual| actual == sha256) {
        return Ok(ProjectorFile { path, _backing: None });
    }
    let write = || -> io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let partial = dir.join(format!("{sha256}.{}.partial", std::process::id()));
        let mut out = File::create(&partial)?;
        copy_span(span, &mut out)?;
        out.sync_all()?;
        drop(out);
        if digest(&partial)? != sha256 {
            let _ = std::fs::remove_file(&partial);
            return Err(io::Error::other(
                "the copy does not match the SHA-256 the bundle records (is it damaged? run `stove verify`)",
            ));
        }
        std::fs::rename(&partial, &path)
    };
    write().map_err(|e| format!("cannot place the projector in {} to load it: {e}", dir.display()))?;
    Ok(ProjectorFile { path, _backing: None })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_stored_projector_reads_back_from_its_memory_file_and_a_whole_file_is_used_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bundle");
        std::fs::write(&path, b"launcher.GGUF projector bytes.index").unwrap();
        let stored = open(&ModelSpan::new(path.clone(), 9, 20), None).unwrap();
        assert!(stored.path().starts_with("/proc/self/fd"));
        assert_eq!(std::fs::read(stored.path()).unwrap(), b"GGUF projector bytes");

        let whole = open(&ModelSpan::new(path.clone(), 0, 35), None).unwrap();
        assert_eq!(whole.path(), path);
        assert!(open(&ModelSpan::new(path, 30, 20), None).is_err(), "a span past the file's end is an error");
    }
}
