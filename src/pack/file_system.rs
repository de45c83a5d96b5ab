//! Whether the folder a bundle is written to can hold it: FAT32 (the format most USB sticks ship with) caps a
//! file at 4 GiB, and a pack onto it would fail only after writing 4 GiB. Asked before anything is written, of
//! the system where it can tell: on Linux the kernel's and FUSE's FAT drivers, on Windows the volume's own name
//! for its file system. Elsewhere, or when it cannot tell, the pack goes ahead and the warning after it says it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::FAT32_LIMIT;

/// Refuses a file of `size` bytes in `dir` (or in the folder it will be made in) when `dir` is on FAT, which
/// cannot hold it. `advice` says what to do besides formatting the stick as exFAT.
pub fn check_fits(dir: &Path, size: u64, advice: &str) -> Result<()> {
    if size <= FAT32_LIMIT {
        return Ok(());
    }
    let Some(existing) = nearest_existing(dir) else { return Ok(()) };
    if let Some(name) = fat_name(&existing) {
        bail!(
            "{} is on a {name} file system, which cannot hold a file over 4 GiB, and the bundle will be {}: {advice}, \
             or format the stick as exFAT (every system reads it) and pack again",
            dir.display(),
            crate::hardware::human_bytes(size)
        );
    }
    Ok(())
}

/// `dir` or its nearest folder that exists: where the file system is asked before any folder is made.
fn nearest_existing(dir: &Path) -> Option<PathBuf> {
    let absolute = std::path::absolute(dir).ok()?;
    absolute.ancestors().find(|folder| folder.is_dir()).map(Path::to_path_buf)
}

/// The name of `dir`'s file system when it is a FAT (FAT12, FAT16 or FAT32; not exFAT), else `None`.
#[cfg(target_os = "linux")]
fn fat_name(dir: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    const MSDOS_SUPER_MAGIC: i64 = 0x4d44;
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs struct the call fills.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } == 0 {
        #[allow(clippy::unnecessary_cast)]
        if stat.f_type as i64 == MSDOS_SUPER_MAGIC {
            return Some("FAT32".into());
        }
    }
    // A FAT mounted through FUSE (fusefat, as some desktops and containers do) reports FUSE's magic number to
    // statfs; its mount's type says what it is. The mount is found by device number, exact where a path
    // prefix would be fooled by bind mounts.
    let device = std::fs::metadata(dir).ok()?.dev();
    let id = format!("{}:{}", libc::major(device), libc::minor(device));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.nth(2)? != id {
            return None;
        }
        // After the optional fields, " - " then the file system's type.
        let kind = line.split(" - ").nth(1)?.split(' ').next()?;
        matches!(kind, "vfat" | "msdos" | "fat" | "fuse.fusefat").then(|| format!("FAT32 ({kind})"))
    })
}

/// The name of `dir`'s file system when it is a FAT (FAT12, FAT16 or FAT32; not exFAT), else `None`.
#[cfg(windows)]
fn fat_name(dir: &Path) -> Option<String> {
    use std::os::windows::ffi::{OsStrExt, OsStringExt};
    use windows_sys::Win32::Storage::FileSystem::{GetVolumeInformationW, GetVolumePathNameW};
    let wide: Vec<u16> = dir.as_os_str().encode_wide().chain([0]).collect();
    let mut root = [0u16; 1024];
    // SAFETY: a NUL-terminated path, and a buffer of the length given, which the call fills NUL-terminated.
    if unsafe { GetVolumePathNameW(wide.as_ptr(), root.as_mut_ptr(), root.len() as u32) } == 0 {
        return None;
    }
    let mut name = [0u16; 64];
    // SAFETY: `root` is NUL-terminated from the call above; only the file system's name is asked for, into a
    // buffer of the length given; the other outputs are null, which the call allows.
    let ok = unsafe {
        GetVolumeInformationW(
            root.as_ptr(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            name.as_mut_ptr(),
            name.len() as u32,
        )
    };
    if ok == 0 {
        return None;
    }
    let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    let name = std::ffi::OsString::from_wide(&name[..len]).to_string_lossy().into_owned();
    // "FAT" and "FAT32"; "exFAT" holds large files.
    name.to_ascii_uppercase().starts_with("FAT").then_some(name)
}

#[cfg(not(any(target_os = "linux", windows)))]
fn fat_name(_dir: &Path) -> Option<String> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_files_and_ordinary_folders_pass() {
        let dir = std::env::temp_dir();
        assert!(check_fits(&dir, 1 << 20, "").is_ok());
        // This machine's temporary folder is not FAT, so even a large file passes.
        assert!(check_fits(&dir.join("not/made/yet"), 8 << 30, "").is_ok());
        assert_eq!(nearest_existing(&dir.join("not/made/yet")).as_deref(), Some(dir.as_path()));
    }
}
