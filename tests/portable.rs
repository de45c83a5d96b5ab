//! Where a bundle is carried: read-only media, paths with spaces and non-ASCII names, and the same file
//! started twice.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bundle, scratch, Server};

/// Everything in `dir`, with sizes and modification times, to show nothing was written there.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut list: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (e.path(), meta.len(), meta.modified().unwrap())
        })
        .collect();
    list.sort();
    list
}

#[test]
fn a_bundle_runs_from_read_only_media_under_a_path_with_spaces_and_non_ascii_names() {
    let stick = scratch().join("USB Stick (Küche) 🍲");
    std::fs::create_dir_all(&stick).unwrap();
    let carried = stick.join("mein Modell – schön.stove");
    std::fs::copy(bundle(), &carried).unwrap();
    let before = listing(&stick);

    // A private mount namespace (in a user namespace, so no privileges are needed) where the folder is
    // remounted read-only, as a write-protected stick would be.
    let mut command = Command::new("unshare");
    command.args(["--user", "--map-root-user", "--mount", "sh", "-c"]).arg(
        "mount --bind \"$1\" \"$1\" || exit 1; mount -o remount,bind,ro \"$1\" || exit 1; \
         if touch \"$1/probe\" 2>/dev/null; then echo 'the folder is still writable' >&2; exit 1; fi; \
         exec \"$2\" --port 0 --no-browser --threads 1",
    );
    command.args(["sh", stick.to_str().unwrap(), carried.to_str().unwrap()]);
    let server = Server::launch(command);
    server.wait_healthy();
    let (status, body) =
        server.chat(serde_json::json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}));
    assert_eq!(status, 200, "{body}");
    let stderr = server.stop();
    assert!(!stderr.contains("Read-only"), "{stderr}");
    assert_eq!(listing(&stick), before, "stove wrote beside itself");
}

#[test]
fn the_same_file_started_twice_serves_on_the_next_port() {
    let first = Server::start(bundle(), &[]);
    let port = first.port();
    let second = Server::start_on(bundle(), port, &[]);
    assert_ne!(second.port(), port);
    assert!(second.port() > port && second.port() <= port + 20, "{} after {port}", second.url);
    for server in [&first, &second] {
        let (status, _) =
            server.chat(serde_json::json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}));
        assert_eq!(status, 200, "{}", server.url);
    }
}
