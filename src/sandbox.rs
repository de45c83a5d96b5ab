//! The sandbox `serve` and `chat` enter on Linux once the listening socket is bound and before the model loads
//! or any request is read. From then on, code that a hostile model file or request managed to run through a bug
//! in llama.cpp or stove still cannot read the person's files, write or delete anything, start a program or open
//! a connection. (llamafile confines its server the same way with OpenBSD's pledge and unveil.)
//!
//! Three layers, each applied where the kernel has it and each reported (`/stove/info`, `stove info`):
//! - **Landlock** (Linux 5.13+): files may be read only from the model, the system folders that the C library
//!   and the GPU drivers read (`/usr`, `/etc`, `/sys`, `/proc`…), and the GPU device files (read, written,
//!   ioctl'd); nothing may be written, created, removed or executed anywhere; no TCP bind or connect (6.7+); no
//!   signals to, or abstract Unix sockets of, processes outside (6.12+). Landlock binds the thread that applies
//!   it and the threads it starts afterwards (every thread from Linux 7.0), which is why it is applied on the
//!   main thread before the server and the engine start theirs; a GPU driver's own threads started earlier are
//!   the exception on older kernels, and seccomp still binds them.
//! - **seccomp** on every thread (TSYNC): no new socket of any family, no program, no ptrace or cross-process
//!   memory access, no io_uring (whose requests would pass the filter). This is what holds where Landlock is
//!   missing, and it is why "no connection" does not depend on Landlock's network rules.
//! - **no_new_privs**, which both need: nothing this process could start would gain privileges.
//!
//! What stays open, on purpose: reading the system folders (drivers and libraries need them; they hold no
//! personal data), the process's own `/proc` entries, the sockets it already has (the listener and its
//! clients), standard output and error. A folder the person names at run time joins the readable set here.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// What confinement the process is under, as `/stove/info` and the start-up line report it.
#[derive(Debug, Clone, Serialize)]
pub struct Confinement {
    /// False with `--no-sandbox`, or where stove has no sandbox (other systems).
    pub enabled: bool,
    /// `full`, `partial` (this kernel's Landlock lacks some of the rules), or `none`.
    pub landlock: Enforced,
    /// The kernel's Landlock version (0: none).
    pub landlock_abi: i32,
    /// Landlock binds every thread, rather than the ones started after it.
    pub landlock_all_threads: bool,
    pub seccomp: bool,
    pub no_new_privs: bool,
    /// The files and folders it may still read (besides device files).
    pub readable: Vec<PathBuf>,
    /// Why a layer is missing, one line each, for people.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforced {
    Full,
    Partial,
    None,
}

impl Confinement {
    /// No sandbox, and why.
    pub fn off(why: &str) -> Confinement {
        Confinement {
            enabled: false,
            landlock: Enforced::None,
            landlock_abi: 0,
            landlock_all_threads: false,
            seccomp: false,
            no_new_privs: false,
            readable: Vec::new(),
            notes: vec![why.to_string()],
        }
    }

    /// The fields and the summary line, for `/stove/info`.
    pub fn report(&self) -> serde_json::Value {
        let mut report = serde_json::to_value(self).unwrap_or_default();
        report["summary"] = self.summary().into();
        report
    }

    /// One line for people: what binds this process.
    pub fn summary(&self) -> String {
        if !self.enabled {
            return format!("not confined ({})", self.notes.join("; "));
        }
        let mut layers = Vec::new();
        match self.landlock {
            Enforced::Full => layers.push(format!("Landlock {}", self.landlock_abi)),
            Enforced::Partial => {
                layers.push(format!("Landlock {} (without rules newer kernels add)", self.landlock_abi))
            }
            Enforced::None => {}
        }
        if self.seccomp {
            layers.push("seccomp".to_string());
        }
        if self.no_new_privs {
            layers.push("no_new_privs".to_string());
        }
        let what = if self.landlock == Enforced::None {
            "no new sockets or programs"
        } else {
            "files read-only (the model and system folders only), no writes, programs or connections"
        };
        format!("{}: {what}", layers.join(" + "))
    }
}

/// What this machine offers, for `stove info` (which does not confine itself).
pub fn available() -> String {
    platform::available()
}

/// Enters the sandbox: `model_files` (and the system folders) stay readable, nothing else. Call it on the main
/// thread before starting other threads. A layer the kernel lacks is left out and named in `notes`; it never
/// fails the start.
pub fn enter(model_files: &[&Path]) -> Confinement {
    platform::enter(model_files)
}

#[cfg(target_os = "linux")]
mod platform {
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};

    use landlock::{
        Access, AccessFs, AccessNet, BitFlags, PathBeneath, PathFd, RestrictSelfAttr, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus, Scope, ABI,
    };
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

    use super::{Confinement, Enforced};

    /// The newest Landlock whose rights this file has been written for; an older kernel gets what it has.
    const LANDLOCK: ABI = ABI::V9;

    /// Readable folders besides the model: the C library's and drivers' files (`/etc` for the time zone and
    /// Vulkan's and NVIDIA's settings, `/usr` and the lib folders for libraries a driver loads lazily, `/sys`
    /// and `/proc` for the processor's and GPUs' properties). Personal files live elsewhere (`/home`, `/root`,
    /// `/media`, `/mnt`, `/tmp`, `/run/user`, `/srv`, `/var`), and those stay closed.
    const SYSTEM_FOLDERS: &[&str] = &["/usr", "/lib", "/lib64", "/lib32", "/etc", "/opt", "/sys", "/proc"];

    /// Device files that may be opened, read, written and ioctl'd: the GPUs' (Vulkan through DRM render
    /// nodes, NVIDIA's, AMD's compute node), and the harmless ones libraries open.
    const DEVICES: &[&str] = &[
        "/dev/dri",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia-modeset",
        "/dev/kfd",
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
        "/dev/random",
    ];

    /// System calls that fail with EACCES inside the sandbox.
    // (`c_long` is `i64` on every system stove is built for, which is what seccompiler takes.)
    const DENIED_CALLS: &[i64] = &[
        libc::SYS_socket,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_io_uring_setup,
    ];

    pub fn available() -> String {
        let abi = kernel_landlock_abi();
        // PR_GET_SECCOMP answers 0 (not in a filter yet) where the kernel has seccomp, and fails where not.
        // SAFETY: a query with no pointer arguments.
        let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0;
        match (abi > 0, seccomp) {
            (true, true) => format!("Landlock {abi} and seccomp: `serve` confines itself (--no-sandbox turns it off)"),
            (false, true) => "seccomp only (this kernel has no Landlock): `serve` refuses itself new sockets and \
                              programs, files stay open"
                .to_string(),
            (true, false) => format!("Landlock {abi} only (this kernel has no seccomp)"),
            (false, false) => "none (this kernel has neither Landlock nor seccomp)".to_string(),
        }
    }

    pub fn enter(model_files: &[&Path]) -> Confinement {
        let mut notes = Vec::new();
        let threads_before = threads();
        let mut readable: Vec<PathBuf> = model_files.iter().map(|p| p.to_path_buf()).collect();
        readable.extend(SYSTEM_FOLDERS.iter().map(PathBuf::from).filter(|p| p.exists()));

        let abi = kernel_landlock_abi();
        let (landlock, all_threads, nnp_from_landlock) = match landlock(&readable) {
            Ok(status) => {
                let enforced = match status.ruleset {
                    RulesetStatus::FullyEnforced => Enforced::Full,
                    RulesetStatus::PartiallyEnforced => Enforced::Partial,
                    _ => Enforced::None,
                };
                if enforced == Enforced::None {
                    notes.push("this kernel has no Landlock: files are not confined".to_string());
                } else if !status.all_threads && threads_before > 1 {
                    notes.push(format!(
                        "{} thread(s) a GPU driver started earlier are bound by seccomp but not by Landlock \
                         (Linux 7.0 binds all)",
                        threads_before - 1
                    ));
                }
                (enforced, status.all_threads || threads_before == 1, status.no_new_privs)
            }
            Err(e) => {
                notes.push(format!("Landlock could not be applied ({e}): files are not confined"));
                (Enforced::None, false, false)
            }
        };
        let seccomp = match seccomp() {
            Ok(()) => true,
            Err(e) => {
                notes.push(format!("seccomp could not be applied ({e}): new sockets and programs are not refused"));
                false
            }
        };
        Confinement {
            enabled: true,
            landlock,
            landlock_abi: abi,
            landlock_all_threads: all_threads,
            seccomp,
            no_new_privs: nnp_from_landlock || seccomp,
            readable,
            notes,
        }
    }

    fn landlock(readable: &[PathBuf]) -> Result<landlock::RestrictionStatus, landlock::RulesetError> {
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(LANDLOCK))?
            .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)?
            .scope(Scope::AbstractUnixSocket | Scope::Signal)?
            .create()?;
        let read_dir: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
        for path in readable {
            ruleset = add(ruleset, path, read_dir)?;
        }
        let device: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev;
        for path in DEVICES.iter().map(Path::new).chain(nvidia_gpus().iter().map(PathBuf::as_path)) {
            ruleset = add(ruleset, path, device | AccessFs::ReadDir)?;
        }
        // Listing /dev (not opening what is in it) lets drivers find their nodes.
        ruleset = add(ruleset, Path::new("/dev"), AccessFs::ReadDir.into())?;
        ruleset.all_threads(true)?.restrict_self()
    }

    /// Adds "may do `access` beneath `path`"; rights that only mean something for folders are dropped for a
    /// file (the kernel refuses them), and a path that does not exist here is skipped.
    fn add(
        ruleset: landlock::RulesetCreated,
        path: &Path,
        access: BitFlags<AccessFs>,
    ) -> Result<landlock::RulesetCreated, landlock::RulesetError> {
        let Ok(metadata) = std::fs::metadata(path) else { return Ok(ruleset) };
        let Ok(fd) = PathFd::new(path) else { return Ok(ruleset) };
        let access = if metadata.is_dir() { access } else { access & AccessFs::from_file(LANDLOCK) };
        ruleset.add_rule(PathBeneath::new(fd, access))
    }

    /// `/dev/nvidia0`, `/dev/nvidia1`…: one per NVIDIA GPU.
    fn nvidia_gpus() -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir("/dev") else { return Vec::new() };
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                name.strip_prefix("nvidia").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect()
    }

    fn seccomp() -> Result<(), seccompiler::Error> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)?;
        let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
            DENIED_CALLS.iter().map(|&call| (call, Vec::new())).collect();
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EACCES as u32), arch)?;
        let program: BpfProgram = filter.try_into()?;
        seccompiler::apply_filter_all_threads(&program)
    }

    /// The kernel's Landlock version, 0 where it has none (or it is turned off at boot).
    fn kernel_landlock_abi() -> i32 {
        const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
        // SAFETY: the version query takes no ruleset (null, size 0) and only returns a number.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<libc::c_void>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        i32::try_from(abi).unwrap_or(0).max(0)
    }

    /// How many threads this process has now.
    fn threads() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status.lines().find_map(|line| line.strip_prefix("Threads:")).and_then(|n| n.trim().parse().ok()).unwrap_or(1)
    }
}

#[cfg(not(target_os = "linux"))]
mod platform {
    use std::path::Path;

    use super::Confinement;

    pub fn available() -> String {
        "none on this system (stove confines itself on Linux)".to_string()
    }

    pub fn enter(_model_files: &[&Path]) -> Confinement {
        Confinement::off("stove confines itself on Linux only")
    }
}
