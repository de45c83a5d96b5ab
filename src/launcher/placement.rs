//! Making the engine's files loadable without installing anything or writing beside the stove file.
//!
//! First choice, on Linux, memory: each file is copied into an anonymous memory file (`memfd_create`) and loaded
//! through `/proc/self/fd/N`; nothing touches a disk. Where the kernel refuses that (no memfd, or executable
//! memfds forbidden by `vm.memfd_noexec`), where CUDA's 600 MB runtime is to be placed, and always on Windows,
//! which can load a DLL only from a file, the files are extracted once into a per-user cache named after the
//! engine's hash (`~/.cache/stove/engine`, `%LOCALAPPDATA%\stove\engine`) and checked against their SHA-256
//! before every use. Where the cache cannot be written (read-only home, full disk), a temporary directory is used
//! for this run and removed once loaded (not on Windows, where a loaded DLL cannot be deleted: there it is left
//! to the system's temporary-file cleanup).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::launch::{EngineIndex, Launch, PlacedFile, Placement, ARCHIVE_DIR};

pub(super) type Archive = zip::ZipArchive<File>;

/// Places every file of `index` from `archive` (the end of `exe`) where it can be loaded. `index_json` is the
/// index's exact bytes: the cache directory is named after their hash, which covers every file's hash.
pub fn place(exe: &Path, mut archive: Archive, index: &EngineIndex, index_json: &[u8]) -> Result<Launch, String> {
    let mut launch = Launch {
        exe: exe.to_path_buf(),
        launcher_len: index.launcher_len,
        target: index.target.clone(),
        ..Launch::default()
    };
    // CUDA's runtime and cuBLAS are 600 MB, of which a run uses a small part: mapped from a file, the rest is
    // never read into memory, but copied into memory files all of it would be, for as long as stove runs. An
    // engine that places them goes to the cache instead (a GPU machine has a disk; the files are SHA-256 checked).
    #[cfg(target_os = "linux")]
    let carries_gpu_runtime = index.files.iter().any(|f| f.kind == crate::launch::FileKind::GpuRuntime);
    #[cfg(target_os = "linux")]
    if std::env::var_os("STOVE_ENGINE_IN_MEMORY").is_some_and(|v| v == "0") {
        launch.notes.push("engine files not placed in memory: STOVE_ENGINE_IN_MEMORY=0".into());
    } else if !carries_gpu_runtime {
        match super::memory::place(&mut archive, index) {
            Ok(files) => {
                launch.placement = Placement::Memory;
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
            launch.placement = Placement::Cache(files_dir(&files).to_path_buf());
            launch.files = files;
            return Ok(launch);
        }
        Some(Err(Refused::Damaged(message))) => return Err(damaged(exe, &message)),
        Some(Err(Refused::Unavailable(why))) => launch.notes.push(format!("engine cache not usable: {why}")),
        None => launch.notes.push(format!("engine cache not usable: {NO_CACHE_BASE}")),
    }
    let temporary = tempfile::Builder::new()
        .prefix("stove-engine-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory for the engine: {e}"))?
        .keep();
    match in_directory(&mut archive, index, &temporary, false) {
        Ok(files) => {
            launch.placement = Placement::Temporary(temporary.to_path_buf());
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

pub(super) enum Refused {
    /// The file itself is bad: every other place would fail the same way.
    Damaged(String),
    /// This place cannot be used here; the next one may.
    Unavailable(String),
}

fn damaged(exe: &Path, message: &str) -> String {
    format!("{} is damaged: {message}. Copy it again from the original", exe.display())
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
            // Folders made by older stoves were readable by everyone.
            let _ = private_dir(dir);
            return Ok(placed(dir));
        }
        // Damaged or tampered with since it was extracted: replace it.
        let _ = fs::remove_dir_all(dir);
    }
    let unavailable = |e: io::Error| Refused::Unavailable(format!("{}: {e}", dir.display()));
    let parent = dir.parent().unwrap_or(dir);
    let staging = if reuse {
        private_dir(parent).map_err(unavailable)?;
        sweep_stale_partials(parent);
        // The process id in the name tells a later run whether the stove filling it is still alive.
        let prefix = format!("{PARTIAL}{}-", std::process::id());
        let staging = tempfile::Builder::new().prefix(&prefix).tempdir_in(parent).map_err(unavailable)?.keep();
        private_dir(&staging).map_err(unavailable)?;
        staging
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

/// Cache folders being filled are named `.partial-<pid>-…`.
const PARTIAL: &str = ".partial-";
/// A partial folder older than this is stale even when its process id is in use (by a later process that got
/// the same number); no engine takes this long to copy.
const PARTIAL_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);

/// Creates the cache's folder (and its parents) readable by this user alone: the engine files are code that
/// runs, so no other user should see them change, and a shared machine's users should not see each other's.
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Removes what interrupted runs left in the cache: `.partial-` folders whose stove is gone (its process id
/// no longer runs; on Windows, where only the age is looked at, after an hour), or older than an hour.
/// Another stove that is copying right now keeps its folder.
fn sweep_stale_partials(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PARTIAL) else { continue };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        let age = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        let old = age.is_some_and(|age| age > PARTIAL_LIFETIME);
        let gone = pid.is_some_and(|pid| !process_runs(pid));
        // Folders named before process ids were part of the name have none: only their age tells.
        if old || gone {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether a process with this id runs (an answer of "unknown" counts as running, so nothing is removed).
fn process_runs(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = i32::try_from(pid) else { return true };
        // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
        let answer = unsafe { libc::kill(pid, 0) };
        answer == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Copies one engine file out of the archive, checking its size, its CRC (the archive's) and, when given,
/// its SHA-256.
pub(super) fn extract(
    archive: &mut Archive,
    name: &str,
    size: u64,
    to: &mut File,
    sha256: Option<&str>,
) -> Result<(), Refused> {
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

/// Why there is no cache folder, when the variables naming one are missing.
const NO_CACHE_BASE: &str =
    if cfg!(windows) { "LOCALAPPDATA is not set" } else { "neither XDG_CACHE_HOME nor HOME is set" };

fn cache_dir(key: &str) -> Option<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = if cfg!(windows) {
        set("LOCALAPPDATA")?
    } else {
        set("XDG_CACHE_HOME").or_else(|| set("HOME").map(|home| home.join(".cache")))?
    };
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
