//! The official `openai` Python client (installed from PyPI by `scripts/setup.sh --test`) runs models, chat,
//! streaming with usage, JSON-schema output, completions, embeddings and its typed errors against stove; the checks
//! are in tests/openai_client.py.

mod common;

use std::process::Command;

use common::{bundle, Server};

#[test]
fn the_official_openai_python_client_works_against_stove() {
    let server = Server::start(bundle(), &["--api-key", "kitchen-key"]);
    let output = Command::new(common::python())
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
