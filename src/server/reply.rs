//! Reading a chat answer back as it arrives: llama.cpp's parser (`llama::chat`) splits the text so far into
//! content, reasoning and tool calls, and `Reply` turns each new reading into what changed since the last one,
//! the way the OpenAI, Anthropic and Responses streams all need it. One reader serves all three APIs.
//!
//! As llama-server does (`task_result_state::update_chat_msg`), the whole text is parsed again at each piece:
//! formats mark a tool call only once enough of it has arrived, so a reading can only be made from the start.
//! A tool call's name and id are sent once its arguments begin (or the answer ends), then only argument pieces.

use crate::engine::{EngineError, Event, Finish};
use crate::llama::chat::{ChatParser, ParsedMessage, ToolCall};

/// One piece of change in the answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Reasoning(String),
    Content(String),
    /// A new tool call (`name` and `id` set, the arguments so far) or more of its arguments (`name` empty).
    ToolCall {
        index: usize,
        id: String,
        name: String,
        arguments: String,
    },
}

impl Delta {
    /// Which part of the answer this delta adds to.
    pub fn part(&self) -> Part {
        match self {
            Delta::Reasoning(_) => Part::Reasoning,
            Delta::Content(_) => Part::Content,
            Delta::ToolCall { index, .. } => Part::ToolCall(*index),
        }
    }
}

/// A part of an answer that streams which send parts one after another (Anthropic's content blocks, the
/// Responses API's output items) open, fill and close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Reasoning,
    Content,
    ToolCall(usize),
}

/// The part open in such a stream, and the index the next one gets.
#[derive(Debug, Default)]
pub struct Parts {
    open: Option<(Part, usize)>,
    next: usize,
}

impl Parts {
    /// Makes `part` the open one: returns the part it closes, if any, and `part`'s index when it is new.
    pub fn enter(&mut self, part: Part) -> (Option<(Part, usize)>, Option<usize>) {
        if let Some((open, index)) = self.open {
            if open == part {
                return (None, None);
            }
            self.open = None;
            let opened = self.open_new(part);
            return (Some((open, index)), Some(opened));
        }
        (None, Some(self.open_new(part)))
    }

    fn open_new(&mut self, part: Part) -> usize {
        let index = self.next;
        self.open = Some((part, index));
        self.next += 1;
        index
    }

    /// The open part and its index.
    pub fn current(&self) -> Option<(Part, usize)> {
        self.open
    }

    /// Closes the open part at the end of the answer.
    pub fn close(&mut self) -> Option<(Part, usize)> {
        self.open.take()
    }
}

pub struct Reply {
    parser: ChatParser,
    text: String,
    /// The last reading.
    current: ParsedMessage,
    /// Ids given to tool calls the model wrote without one, by index, so each keeps its id while streaming.
    ids: Vec<String>,
    /// Per tool call: whether its name was sent, and how much of its arguments.
    sent: Vec<(bool, usize)>,
    sent_content: usize,
    sent_reasoning: usize,
    /// Time spent in llama.cpp's parser for this answer, all readings together.
    parse_time: std::time::Duration,
}

impl Reply {
    pub fn new(parser: ChatParser) -> Self {
        Reply {
            parser,
            text: String::new(),
            current: ParsedMessage::default(),
            ids: Vec::new(),
            sent: Vec::new(),
            sent_content: 0,
            sent_reasoning: 0,
            parse_time: std::time::Duration::ZERO,
        }
    }

    /// Milliseconds spent reading this answer back so far.
    pub fn parse_ms(&self) -> f64 {
        self.parse_time.as_secs_f64() * 1000.0
    }

    fn parse(&mut self, partial: bool) -> Result<ParsedMessage, crate::llama::chat::ChatError> {
        let started = std::time::Instant::now();
        let parsed = self.parser.parse(&self.text, partial);
        self.parse_time += started.elapsed();
        parsed
    }

    /// Adds generated text; returns what the answer gained. A reading that fails part-way (an unfinished
    /// construct) changes nothing until more text arrives.
    pub fn push(&mut self, piece: &str) -> Vec<Delta> {
        self.text.push_str(piece);
        if let Ok(message) = self.parse(true) {
            self.current = message;
        }
        self.deltas(false)
    }

    /// The answer is complete: the final reading, and what it adds to what was sent. When the text does not
    /// parse as the format (a tool call cut off by the token limit), the text is the content, as it came.
    pub fn finish(&mut self) -> (ParsedMessage, Vec<Delta>) {
        self.current = match self.parse(false) {
            Ok(message) => message,
            Err(_) => ParsedMessage { content: self.text.clone(), ..Default::default() },
        };
        let deltas = self.deltas(true);
        let mut message = self.current.clone();
        for (call, id) in message.tool_calls.iter_mut().zip(&self.ids) {
            call.id.clone_from(id);
        }
        (message, deltas)
    }

    fn deltas(&mut self, last: bool) -> Vec<Delta> {
        // While more may come, trailing whitespace is held back: the final reading often trims it (a tool call's
        // `"Paris"\n\n}` ends as `"Paris"\n}`), and what was sent cannot be taken back.
        let settled = |text: &str| if last { text.len() } else { text.trim_end().len() };
        let mut deltas = Vec::new();
        let reasoning = &self.current.reasoning_content;
        if let Some(more) = grown(&reasoning[..settled(reasoning)], &mut self.sent_reasoning) {
            deltas.push(Delta::Reasoning(more));
        }
        let content = &self.current.content;
        if let Some(more) = grown(&content[..settled(content)], &mut self.sent_content) {
            deltas.push(Delta::Content(more));
        }
        for (index, call) in self.current.tool_calls.iter().enumerate() {
            if self.ids.len() <= index {
                self.ids.push(if call.id.is_empty() { new_call_id() } else { call.id.clone() });
                self.sent.push((false, 0));
            }
            let (named, args_sent) = &mut self.sent[index];
            if !*named {
                // The name may still be growing until the arguments start.
                if call.name.is_empty() || (call.arguments.is_empty() && !last) {
                    continue;
                }
                *named = true;
                let arguments = call.arguments[..settled(&call.arguments)].to_string();
                *args_sent = arguments.len();
                deltas.push(Delta::ToolCall { index, id: self.ids[index].clone(), name: call.name.clone(), arguments });
            } else if let Some(more) = grown(&call.arguments[..settled(&call.arguments)], args_sent) {
                deltas.push(Delta::ToolCall { index, id: String::new(), name: String::new(), arguments: more });
            }
        }
        deltas
    }

    /// Reads `events` to the end of the answer: the final reading and the generation's counts.
    pub async fn collect(
        mut self,
        mut events: tokio::sync::mpsc::UnboundedReceiver<Event>,
    ) -> Result<(ParsedMessage, Finish), EngineError> {
        while let Some(event) = events.recv().await {
            match event {
                Event::Text { text, .. } => self.text.push_str(&text),
                Event::Done(finish) => return Ok((self.finish().0, finish)),
                Event::Failed(error) => return Err(error),
            }
        }
        Err(EngineError::Inference("the engine stopped in the middle of the answer".into()))
    }

    /// The tool calls of the final reading, with their ids.
    pub fn tool_calls(&self) -> impl Iterator<Item = (&ToolCall, &str)> {
        self.current.tool_calls.iter().zip(self.ids.iter().map(String::as_str))
    }
}

/// What `text` gained past the `sent` bytes already sent, moving `sent` on. A reading that shrank or changed
/// what was sent (it cannot be taken back) adds nothing.
fn grown(text: &str, sent: &mut usize) -> Option<String> {
    if text.len() <= *sent || !text.is_char_boundary(*sent) {
        return None;
    }
    let more = text[*sent..].to_string();
    *sent = text.len();
    Some(more)
}

/// An id for a tool call, as OpenAI's look (`call_` and 24 letters and digits).
pub fn new_call_id() -> String {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the system's random source");
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let tail: String = bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect();
    format!("call_{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grown_sends_each_byte_once() {
        let mut sent = 0;
        assert_eq!(grown("Hel", &mut sent).as_deref(), Some("Hel"));
        assert_eq!(grown("Hel", &mut sent), None);
        assert_eq!(grown("Hello", &mut sent).as_deref(), Some("lo"));
        assert_eq!(grown("He", &mut sent), None, "a shorter reading takes nothing back");
        assert_eq!(sent, 5);
    }

    #[test]
    fn parts_open_and_close_in_order() {
        let mut parts = Parts::default();
        assert_eq!(parts.enter(Part::Reasoning), (None, Some(0)));
        assert_eq!(parts.enter(Part::Reasoning), (None, None));
        assert_eq!(parts.enter(Part::Content), (Some((Part::Reasoning, 0)), Some(1)));
        assert_eq!(parts.enter(Part::ToolCall(0)), (Some((Part::Content, 1)), Some(2)));
        assert_eq!(parts.close(), Some((Part::ToolCall(0), 2)));
        assert_eq!(parts.close(), None);
    }

    #[test]
    fn call_ids_look_like_openai_ones() {
        let id = new_call_id();
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        assert_ne!(id, new_call_id());
    }
}
