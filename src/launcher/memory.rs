//! Linux: the engine's files as anonymous memory files, loaded through `/proc/self/fd/N`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use super::placement::{extract, Archive, Refused};
use crate::launch::{EngineIndex, PlacedFile};

/// Copies every file into its own executable memory file.
pub(super) fn place(archive: &mut Archive, index: &EngineIndex) -> Result<Vec<PlacedFile>, Refused> {
    let mut files = Vec::with_capacity(index.files.len());
    for entry in &index.files {
        let fd = memfd(&entry.name).map_err(|e| Refused::Unavailable(format!("memfd_create: {e}")))?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        if files.is_empty() && !path.exists() {
            return Err(Refused::Unavailable("/proc is not mounted".into()));
        }
        let mut file = File::from(fd);
        extract(archive, &entry.name, entry.size, &mut file, None)?;
        if files.is_empty() {
            executable_mapping_allowed(&file).map_err(|e| Refused::Unavailable(format!("executable memory: {e}")))?;
        }
        // The descriptor stays open until exit: the engine loads modules and re-reads its files (to pack)
        // through this path.
        std::mem::forget(file);
        files.push(PlacedFile { name: entry.name.clone(), kind: entry.kind, path });
    }
    Ok(files)
}

/// An anonymous memory file that may be mapped executable. Closed on exec, so a browser started from stove
/// does not inherit it.
fn memfd(name: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(format!("stove:{name}")).map_err(io::Error::other)?;
    // MFD_EXEC asks for executable memory on kernels whose default is to forbid it; older kernels do not know
    // the flag (EINVAL) and allow it anyway.
    for flags in [libc::MFD_CLOEXEC | libc::MFD_EXEC, libc::MFD_CLOEXEC] {
        // SAFETY: `name` is NUL-terminated and outlives the call; the result is checked.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: a fresh descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINVAL) {
            return Err(error);
        }
    }
    Err(io::Error::last_os_error())
}

/// Whether the kernel lets code be mapped from `file` (a memfd may be sealed against it).
fn executable_mapping_allowed(file: &File) -> io::Result<()> {
    // SAFETY: maps one page of a file we own and unmaps it at once; nothing reads the mapping.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        if page == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        libc::munmap(page, 4096);
    }
    Ok(())
}
