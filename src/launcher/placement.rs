//! Making the engine's files loadable without installing anything or writing beside the stove file.
//!
//! First choice, memory: each file is copied into an anonymous memory file (`memfd_create`) and loaded through
//! `/proc/self/fd/N`; nothing touches a disk. Where the kernel refuses that (no memfd, or executable memfds
//! forbidden by `vm.memfd_noexec`), the files are extracted once into a per-user cache named after the
//! engine's hash and checked against their SHA-256 before every use. Where the cache cannot be written
//! (read-only home, full disk), a temporary directory is used for this run and removed once loaded.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::launch::{EngineIndex, Launch, PlacedFile, ARCHIVE_DIR};

type Archive = zip::ZipArchive<File>;

/// Places every file of `index` from `archive` (the end of `exe`) where it can be loaded. `index_json` is the
/// index's exact bytes: the cache directory is named after their hash, which covers every file's hash.
pub fn place(exe: &Path, mut archive: Archive, index: &EngineIndex, index_json: &[u8]) -> Result<Launch, String> {
    let mut launch = Launch {
        exe: exe.to_path_buf(),
        launcher_len: index.launcher_len,
        target: index.target.clone(),
        ..Launch::default()
    };
    if std::env::var_os("STOVE_ENGINE_IN_MEMORY").is_some_and(|v| v == "0") {
        launch.notes.push("engine files not placed in memory: STOVE_ENGINE_IN_MEMORY=0".into());
    } else {
        match in_memory(&mut archive, index) {
            Ok(files) => {
                launch.placement = "memory".into();
                launch.files = files;
                return Ok(launch);
            }
            Err(Refused::Damaged(message)) => return Err(damaged(exe, &message)),
            Err(Refused::Unavailable(why)) => launch.notes.push(format!("engine files not placed in memory: {why}")),
        }
    }
    let key = &hex(&Sha256::digest(index_json))[..16];
    match cache_dir(key).map(|dir| in_directory(&mut archive, index, &dir, true)) {
        Some(Ok(files)) => {
            launch.placement = format!("cache {}", files_dir(&files).display());
            launch.files = files;
            return Ok(launch);
        }
        Some(Err(Refused::Damaged(message))) => return Err(damaged(exe, &message)),
        Some(Err(Refused::Unavailable(why))) => launch.notes.push(format!("engine cache not usable: {why}")),
        None => launch.notes.push("engine cache not usable: neither XDG_CACHE_HOME nor HOME is set".into()),
    }
    let temporary = tempfile::Builder::new()
        .prefix("stove-engine-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory for the engine: {e}"))?
        .keep();
    match in_directory(&mut archive, index, &temporary, false) {
        Ok(files) => {
            launch.placement = format!("temporary {}", temporary.display());
            launch.files = files;
            launch.cleanup = Some(temporary);
            Ok(launch)
        }
        Err(refused) => {
            let _ = fs::remove_dir_all(&temporary);
            match refused {
                Refused::Damaged(message) => Err(damaged(exe, &message)),
                Refused::Unavailable(why) => Err(format!(
                    "cannot make the engine loadable in memory, in the cache or in {}: {why}. {}",
                    temporary.display(),
                    launch.notes.join("; ")
                )),
            }
        }
    }
}

enum Refused {
    /// The file itself is bad: every other place would fail the same way.
    Damaged(String),
    /// This place cannot be used here; the next one may.
    Unavailable(String),
}

fn damaged(exe: &Path, message: &str) -> String {
    format!("{} is damaged: {message}. Copy it again from the original", exe.display())
}

/// Copies every file into its own executable memory file.
fn in_memory(archive: &mut Archive, index: &EngineIndex) -> Result<Vec<PlacedFile>, Refused> {
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

/// Extracts every file into `dir`, or, for the cache, reuses what an earlier run extracted there once each
/// file's SHA-256 matches. Cache directories are filled under a temporary name and renamed whole, so a run
/// interrupted halfway never leaves a partial engine for the next.
fn in_directory(
    archive: &mut Archive,
    index: &EngineIndex,
    dir: &Path,
    reuse: bool,
) -> Result<Vec<PlacedFile>, Refused> {
    let placed = |dir: &Path| {
        index.files.iter().map(|f| PlacedFile { name: f.name.clone(), kind: f.kind, path: dir.join(&f.name) }).collect()
    };
    if reuse && dir.is_dir() {
        if index.files.iter().all(|f| sha256_of(&dir.join(&f.name)).is_some_and(|digest| digest == f.sha256)) {
            return Ok(placed(dir));
        }
        // Damaged or tampered with since it was extracted: replace it.
        let _ = fs::remove_dir_all(dir);
    }
    let unavailable = |e: io::Error| Refused::Unavailable(format!("{}: {e}", dir.display()));
    let parent = dir.parent().unwrap_or(dir);
    let staging = if reuse {
        fs::create_dir_all(parent).map_err(unavailable)?;
        tempfile::Builder::new().prefix(".partial-").tempdir_in(parent).map_err(unavailable)?.keep()
    } else {
        dir.to_path_buf()
    };
    let result = index.files.iter().try_for_each(|entry| {
        let path = staging.join(&entry.name);
        let mut file = File::create(&path).map_err(unavailable)?;
        extract(archive, &entry.name, entry.size, &mut file, Some(&entry.sha256))?;
        file.sync_all().map_err(unavailable)
    });
    if let Err(refused) = result {
        if reuse {
            let _ = fs::remove_dir_all(&staging);
        }
        return Err(refused);
    }
    if reuse {
        if let Err(e) = fs::rename(&staging, dir) {
            let _ = fs::remove_dir_all(&staging);
            // Another stove started at the same moment and won the race: its copy is the same files.
            if !dir.is_dir() {
                return Err(unavailable(e));
            }
        }
    }
    Ok(placed(dir))
}

/// Copies one engine file out of the archive, checking its size, its CRC (the archive's) and, when given,
/// its SHA-256.
fn extract(archive: &mut Archive, name: &str, size: u64, to: &mut File, sha256: Option<&str>) -> Result<(), Refused> {
    let entry_name = format!("{ARCHIVE_DIR}{name}");
    let entry = archive.by_name(&entry_name).map_err(|e| Refused::Damaged(format!("{entry_name}: {e}")))?;
    if entry.size() != size {
        return Err(Refused::Damaged(format!("{entry_name} is {} bytes, its index says {size}", entry.size())));
    }
    let mut hasher = Sha256::new();
    // Read to the end, not just `size` bytes: the archive checks the CRC only when its reader reaches the end.
    let mut reader = entry;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        // The archive's own CRC check fails the last read if the bytes changed.
        let n = reader.read(&mut buf).map_err(|e| Refused::Damaged(format!("{entry_name}: {e}")))?;
        if n == 0 {
            break;
        }
        if sha256.is_some() {
            hasher.update(&buf[..n]);
        }
        to.write_all(&buf[..n]).map_err(|e| Refused::Unavailable(format!("writing {name}: {e}")))?;
    }
    if let Some(expected) = sha256 {
        if hex(&hasher.finalize()) != expected {
            return Err(Refused::Damaged(format!("{entry_name} does not match its SHA-256")));
        }
    }
    Ok(())
}

fn cache_dir(key: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|home| PathBuf::from(home).join(".cache"))
    })?;
    Some(base.join("stove").join("engine").join(key))
}

fn files_dir(files: &[PlacedFile]) -> &Path {
    files.first().and_then(|f| f.path.parent()).unwrap_or(Path::new("?"))
}

fn sha256_of(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).ok()?;
    Some(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
