//! The page that asks which model to serve, for an engine file double-clicked on a stick that holds several
//! models: it lists them on localhost, and the one chosen is served by this same file started again with
//! `--model` on the same address, so the page the person is looking at becomes the chat.
//!
//! A handful of fixed responses do not need the server's pipeline: plain `std::net`, one connection at a time,
//! before the engine or the sandbox start. Only requests whose Host is this address are answered, and a choice
//! must come from the page itself (its Origin), so another site cannot start a model.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::cli::RunArgs;

/// Shows the choice among `models` in the browser and starts the chosen one; returns only on failure.
pub fn choose(models: &[PathBuf], run: &RunArgs) -> Result<()> {
    let listener = crate::server::bind(run.host, run.port)?;
    let address = listener.local_addr()?;
    let url = format!("http://{address}/");
    // On stdout, as `serve` prints its address, so scripts find it the same way.
    println!("stove: {} models are beside this engine; choose one at {url}", models.len());
    if let Err(e) = webbrowser::open(&url) {
        eprintln!("stove: could not open a browser ({e}); open {url} yourself");
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if let Some(chosen) = answer(stream, models, &address.to_string()) {
            drop(listener);
            return start(&models[chosen], address.port());
        }
    }
    Ok(())
}

/// Answers one request; the index of the model chosen, when this was the choice.
fn answer(mut stream: TcpStream, models: &[PathBuf], address: &str) -> Option<usize> {
    let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let (mut host, mut origin, mut length) = (String::new(), None, 0usize);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => host = value.trim().to_string(),
            "origin" => origin = Some(value.trim().to_string()),
            "content-length" => length = value.trim().parse().unwrap_or(0).min(1024),
            _ => {}
        }
    }
    let local = [address.to_string(), address.replace("127.0.0.1", "localhost")];
    if !local.contains(&host) {
        respond(&mut stream, "421 Misdirected Request", "text/plain", "this page answers only at its own address");
        return None;
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/") => {
            respond(&mut stream, "200 OK", "text/html; charset=utf-8", &list_page(models));
            None
        }
        ("POST", "/choose") => {
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).ok()?;
            let from_page = origin.is_some_and(|o| local.iter().any(|l| o == format!("http://{l}")));
            let chosen = String::from_utf8_lossy(&body)
                .strip_prefix("model=")
                .and_then(|i| i.trim().parse::<usize>().ok())
                .filter(|&i| i < models.len());
            match (from_page, chosen) {
                (true, Some(i)) => {
                    respond(&mut stream, "200 OK", "text/html; charset=utf-8", &starting_page(&models[i]));
                    Some(i)
                }
                (false, _) => {
                    respond(&mut stream, "403 Forbidden", "text/plain", "a model is chosen from this page only");
                    None
                }
                (true, None) => {
                    respond(&mut stream, "400 Bad Request", "text/plain", "no such model; reload the page");
                    None
                }
            }
        }
        // The chat page asks for these while the chosen model starts: not yet.
        ("GET", "/health") => {
            respond(&mut stream, "503 Service Unavailable", "text/plain", "choosing");
            None
        }
        _ => {
            respond(&mut stream, "404 Not Found", "text/plain", "not here");
            None
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap_or_default().to_string_lossy().into_owned()
}

/// Text safe inside HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const STYLE: &str = "body{font:16px system-ui,sans-serif;max-width:36rem;margin:4rem auto;padding:0 1rem}\
button{display:block;width:100%;margin:.5rem 0;padding:.8rem;font:inherit;text-align:left;cursor:pointer}";

fn list_page(models: &[PathBuf]) -> String {
    let buttons: String = models
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let size = std::fs::metadata(path).map(|m| crate::hardware::human_bytes(m.len())).unwrap_or_default();
            format!(
                "<form method=post action=/choose><input type=hidden name=model value={i}>\
                 <button>{} <small>({size})</small></button></form>",
                escape(&file_name(path))
            )
        })
        .collect();
    format!(
        "<!doctype html><meta charset=utf-8><title>stove: choose a model</title><style>{STYLE}</style>\
         <h1>Which model?</h1><p>This stove engine found {} models beside it. Choose the one to chat with.</p>\
         {buttons}",
        models.len()
    )
}

/// Shown while the chosen model starts; it opens the chat once the new server answers on this address.
fn starting_page(model: &Path) -> String {
    format!(
        "<!doctype html><meta charset=utf-8><title>stove: starting</title><style>{STYLE}</style>\
         <h1>Starting {}…</h1><p>The chat opens here when the model is loaded.</p>\
         <script>setInterval(async()=>{{try{{if((await fetch('/health')).ok)location.replace('/')}}catch(e){{}}}},500)\
         </script>",
        escape(&file_name(model))
    )
}

/// This file again, with the person's arguments and `--model` on the same port; on Unix it replaces this
/// process, elsewhere it starts beside it and this one ends.
fn start(model: &Path, port: u16) -> Result<()> {
    let mut command = Command::new(crate::this_file()?);
    // Later flags override earlier ones (cli.rs), but --browser and --no-browser conflict: the browser is open.
    command.args(std::env::args_os().skip(1).filter(|arg| arg != "--browser")).arg("--model").arg(model).args([
        "--port",
        &port.to_string(),
        "--no-browser",
    ]);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let error = command.exec();
        Err(error).context("while starting the chosen model")
    }
    #[cfg(not(unix))]
    {
        command.spawn().context("while starting the chosen model")?;
        crate::exit_now(0);
    }
}
