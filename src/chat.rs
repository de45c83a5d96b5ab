//! `stove chat`: the model in a terminal, for SSH sessions and headless machines. With `-p` it answers one
//! prompt on standard output (nothing else goes there), so it can be used in scripts.

use std::io::{self, BufRead, IsTerminal, Write};

use anyhow::{bail, Result};

use crate::bundle::ModelSource;
use crate::cli::ChatArgs;
use crate::engine::{ChatMessage, ChatPrompt, Engine, Event, Finish, Prompt, Reasoning, Request};
use crate::settings::Settings;

pub fn run(source: &ModelSource, settings: &Settings, args: &ChatArgs) -> Result<()> {
    crate::hardware::backends::load(settings.gpu).map_err(anyhow::Error::msg)?;
    settings.workers.connect()?;
    for line in crate::serve::engine_notes() {
        eprintln!("{line}");
    }
    let mut config = settings.engine.clone();
    // One person types here: one conversation, unless asked otherwise.
    config.parallel = config.parallel.or(Some(1));
    crate::serve::confine(source, settings);
    let engine = Engine::start(source, config)?;
    engine.wait_ready()?;
    let request = |messages: Vec<ChatMessage>| Request {
        max_tokens: args.max_tokens,
        // A terminal shows the answer as the model writes it, thinking included.
        ..Request::new(
            Prompt::Chat(ChatPrompt {
                reasoning: Reasoning { format: "none".into(), enabled: None },
                ..ChatPrompt::from_messages(&messages)
            }),
            settings.sampling.clone(),
        )
    };

    if let Some(prompt) = &args.prompt {
        let messages = vec![ChatMessage { role: "user".into(), content: prompt.clone() }];
        answer(&engine, request(messages), &mut io::stdout().lock())?;
        println!();
        return Ok(());
    }

    let interactive = io::stdin().is_terminal();
    if interactive {
        eprintln!("chatting with {}; an empty line or Ctrl-D ends", engine.info().name);
    }
    let mut history: Vec<ChatMessage> = Vec::new();
    let mut lines = io::stdin().lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            io::stderr().flush()?;
        }
        let Some(line) = lines.next().transpose()? else { break };
        let line = line.trim();
        if line.is_empty() {
            if interactive {
                break;
            }
            continue;
        }
        history.push(ChatMessage { role: "user".into(), content: line.to_string() });
        let mut out = io::stdout().lock();
        let (text, finish) = answer(&engine, request(history.clone()), &mut out)?;
        writeln!(out)?;
        if interactive {
            let speed = f64::from(finish.completion_tokens) * 1000.0 / finish.generation_ms.max(1.0);
            let guessed = match finish.drafted_tokens {
                0 => String::new(),
                drafted => format!(", {} of {drafted} guessed tokens kept", finish.accepted_tokens),
            };
            eprintln!("({} tokens, {speed:.0} tokens/s{guessed})", finish.completion_tokens);
        }
        history.push(ChatMessage { role: "assistant".into(), content: text });
    }
    Ok(())
}

/// Streams one answer to `out` as it is generated; returns its text.
fn answer(engine: &Engine, request: Request, out: &mut impl Write) -> Result<(String, Finish)> {
    let mut events = engine.submit(request)?.events;
    let mut text = String::new();
    while let Some(event) = events.blocking_recv() {
        match event {
            Event::Text { text: piece, .. } => {
                out.write_all(piece.as_bytes())?;
                out.flush()?;
                text.push_str(&piece);
            }
            Event::Done(finish) => return Ok((text, finish)),
            Event::Failed(error) => return Err(error.into()),
        }
    }
    bail!("the engine stopped in the middle of the answer")
}
