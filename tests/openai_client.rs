//! The official `openai` Python client (installed from PyPI by `scripts/setup.sh --test`) runs models, chat,
//! streaming with usage, JSON-schema output, completions, embeddings and its typed errors against stove; the checks
//! are in tests/openai_client.py.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{bundle, Server};

/// The virtual environment's Python, where `scripts/setup.sh --test` puts it (or `STOVE_TEST_PYTHON`).
fn python() -> PathBuf {
    let path = std::env::var_os("STOVE_TEST_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
        cache.join("stove/venv/bin/python")
    });
    assert!(path.is_file(), "no Python with the openai client at {}; run scripts/setup.sh --test", path.display());
    path
}

#[test]
fn the_official_openai_python_client_works_against_stove() {
    let server = Server::start(bundle(), &["--api-key", "kitchen-key"]);
    let output = Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py"))
        .arg(format!("{}/v1", server.url))
        .arg("kitchen-key")
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "the openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "ok");
}
