//! `stove pack --stick DIR`: one USB stick for every computer. The model is carried once, in the bundle for the
//! packing engine's system. Each other system gets an engine-only file that serves that bundle from beside it
//! (an engine with no model serves the one model in its folder), and `README.txt` tells whoever finds the stick
//! which file to start. FAT32 cannot hold a file over 4 GiB: that is checked before gigabytes are written.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::engine::EngineSource;
use super::{file_system, pack_engine_only};
use crate::cli::{PackArgs, RunArgs};

/// A system a stick can start on: its name, the Rust targets of its engines, the engine file's name on the
/// stick, and how to build that engine.
struct System {
    name: &'static str,
    target_prefix: &'static str,
    file: &'static str,
    how: &'static str,
}

const SYSTEMS: &[System] = &[
    System {
        name: "linux-x86_64",
        target_prefix: "x86_64-unknown-linux",
        file: "stove-linux-x86_64",
        how: "this stove on a Linux x86-64 machine",
    },
    System {
        name: "linux-aarch64",
        target_prefix: "aarch64-unknown-linux",
        file: "stove-linux-arm64",
        how: "scripts/build-engine aarch64",
    },
    System {
        name: "windows-x86_64",
        target_prefix: "x86_64-pc-windows",
        file: "stove.exe",
        how: "scripts/build-engine windows",
    },
];

fn system_of(target: &str) -> Option<&'static System> {
    SYSTEMS.iter().find(|s| target.starts_with(s.target_prefix))
}

fn named(name: &str) -> Result<&'static System> {
    SYSTEMS.iter().find(|s| s.name == name).with_context(|| {
        let known: Vec<&str> = SYSTEMS.iter().map(|s| s.name).collect();
        format!("--systems: unknown system {name:?}; stove knows {}", known.join(", "))
    })
}

/// What goes on the stick: the bundle's system, and each other system with the engine that serves it.
pub struct Plan {
    bundle_system: &'static System,
    engines: Vec<(&'static System, EngineSource)>,
}

fn plan(args: &PackArgs, bundle_target: &str) -> Result<Plan> {
    let bundle_system = system_of(bundle_target)
        .with_context(|| format!("the packing engine is for {bundle_target}, which a stick does not know"))?;
    let mut engines: Vec<(&'static System, EngineSource)> = Vec::new();
    for path in &args.stick_engine {
        let engine = EngineSource::from_file(path)?;
        let target = engine.target.clone();
        let system = system_of(&target)
            .with_context(|| format!("{} is an engine for {target}, unknown here", path.display()))?;
        if system.name == bundle_system.name || engines.iter().any(|(s, _)| s.name == system.name) {
            bail!("{} is a second engine for {}; give one per system", path.display(), system.name);
        }
        engines.push((system, engine));
    }
    for name in &args.systems {
        let system = named(name)?;
        if system.name != bundle_system.name && !engines.iter().any(|(s, _)| s.name == system.name) {
            bail!(
                "--systems asks for {name}, but no engine for it was given: build one with `{}` and add \
                 --stick-engine FILE",
                system.how
            );
        }
    }
    if !args.systems.is_empty() {
        engines.retain(|(s, _)| args.systems.iter().any(|n| n == s.name));
    }
    Ok(Plan { bundle_system, engines })
}

/// Checks everything before anything is written: a model, the systems and engines, and the stick's file system;
/// returns what [`finish`] writes.
pub fn check(dir: &Path, args: &PackArgs, run: &RunArgs, engine: &EngineSource) -> Result<Plan> {
    let Some(model) = &run.model else { bail!("--stick needs the model to carry: add --model MODEL.gguf") };
    let plan = plan(args, &engine.target)?;
    let model_size = std::fs::metadata(model).with_context(|| format!("cannot read {}", model.display()))?.len();
    // At least this much; `pack` checks the whole again with the draft, embedding model and projector.
    let bundle_size = model_size + engine.files_len() + engine.launcher_len;
    file_system::check_fits(dir, bundle_size, "choose another folder with --stick")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make the folder {}", dir.display()))?;
    Ok(plan)
}

/// Where the bundle goes: the model's file name, as `.stove`.
pub fn bundle_path(dir: &Path, run: &RunArgs) -> Result<PathBuf> {
    let model = run.model.as_ref().context("--stick needs --model")?;
    let stem = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    Ok(dir.join(format!("{stem}.stove")))
}

/// After the bundle is written: the other systems' engine files and README.txt.
pub fn finish(dir: &Path, plan: &Plan, bundle: &Path) -> Result<()> {
    for (system, engine) in &plan.engines {
        // Written as engine-only files even when a bundle was given: the model travels once.
        let out = dir.join(system.file);
        pack_engine_only(engine, &out)?;
        println!("wrote the {} engine to {}", system.name, out.display());
    }
    let readme = dir.join("README.txt");
    let systems: Vec<&System> = plan.engines.iter().map(|(system, _)| *system).collect();
    std::fs::write(&readme, readme_text(bundle, plan.bundle_system, &systems))
        .with_context(|| format!("cannot write {}", readme.display()))?;
    println!("wrote {}", readme.display());
    Ok(())
}

fn readme_text(bundle: &Path, bundle_system: &System, others: &[&System]) -> String {
    let name = bundle.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let describe = |system: &System| match system.name {
        "linux-x86_64" => "Linux on an ordinary PC (x86-64)",
        "linux-aarch64" => "Linux on ARM (Raspberry Pi 4 or 5, ARM laptops and servers)",
        _ => "Windows (x86-64)",
    };
    let mut text = format!(
        "This stick holds an AI model and stove, which runs it on this computer: no installation, no network,\n\
         nothing written to the computer or to this stick. A chat page opens in the web browser.\n\n\
         Which file to start:\n\n  {:<60} double-click {name}\n{:<62}(or run ./{name} in a terminal)\n",
        describe(bundle_system),
        ""
    );
    for system in others {
        let start = if system.name.starts_with("windows") {
            format!("double-click {}", system.file)
        } else {
            format!("run ./{}", system.file)
        };
        text.push_str(&format!("  {:<60} {start} (it serves {name} beside it)\n", describe(system)));
    }
    // Every engine file checks the bundle it serves, so each system has its own way to ask.
    let mut checks = vec![(format!("./{name} verify"), describe(bundle_system))];
    for system in others {
        let command = if system.name.starts_with("windows") {
            format!("{} verify", system.file)
        } else {
            format!("./{} verify", system.file)
        };
        checks.push((command, describe(system)));
    }
    let width = checks.iter().map(|(command, _)| command.len()).max().unwrap_or(0) + 2;
    text.push_str(
        "\nIf the browser does not open, open http://127.0.0.1:8080/ yourself. To check that nothing on the stick\n\
         was changed, run in a terminal there:\n\n",
    );
    for (command, system) in checks {
        text.push_str(&format!("  {command:<width$}{system}\n"));
    }
    text
}
