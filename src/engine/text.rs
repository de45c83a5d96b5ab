//! Turning token pieces into text that is safe to stream: whole UTF-8 characters only, and never any part of
//! a stop string.

/// Joins token pieces into UTF-8 text, holding back the bytes of a character split across tokens (emoji and
/// CJK characters often are) until the rest arrives. Invalid bytes become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Decoder {
    pending: Vec<u8>,
}

impl Utf8Decoder {
    /// Adds a token's bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("valid prefix"));
                    match e.error_len() {
                        // An incomplete character at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: bytes of an unfinished character become U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = if self.pending.is_empty() { String::new() } else { char::REPLACEMENT_CHARACTER.to_string() };
        self.pending.clear();
        out
    }
}

/// Finds stop strings in generated text without ever releasing text that might turn out to start one.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What [`StopMatcher::push`] found.
#[derive(Debug, PartialEq)]
pub enum Scan {
    /// Text that can be sent now (maybe empty, if it could still become a stop string).
    Text(String),
    /// A stop string was found: the text before it, which ends the answer, and the stop string.
    Stopped { text: String, stop: String },
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    pub fn push(&mut self, text: &str) -> Scan {
        self.held.push_str(text);
        let found = self.stops.iter().filter_map(|stop| Some((self.held.find(stop.as_str())?, stop))).min();
        if let Some((at, stop)) = found {
            let text = self.held[..at].to_string();
            let stop = stop.clone();
            self.held.clear();
            return Scan::Stopped { text, stop };
        }
        let keep = self.longest_partial_stop();
        let release = self.held.len() - keep;
        let out = self.held[..release].to_string();
        self.held.drain(..release);
        Scan::Text(out)
    }

    /// The text still held back, once generation ended for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest end of `held` that is the beginning of a stop string.
    fn longest_partial_stop(&self) -> usize {
        let mut longest = 0;
        for stop in &self.stops {
            for (end, _) in stop.char_indices().skip(1) {
                if end > longest && self.held.ends_with(&stop[..end]) {
                    longest = end;
                }
            }
        }
        longest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_tokens_is_never_garbled() {
        let emoji = "🍲".as_bytes();
        let mut decoder = Utf8Decoder::default();
        assert_eq!(decoder.push(b"soup "), "soup ");
        assert_eq!(decoder.push(&emoji[..1]), "");
        assert_eq!(decoder.push(&emoji[1..3]), "");
        assert_eq!(decoder.push(&[emoji[3], b'!']), "🍲!");
        assert_eq!(decoder.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut decoder = Utf8Decoder::default();
        assert_eq!(decoder.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(decoder.push(&"é".as_bytes()[..1]), "");
        assert_eq!(decoder.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_strings_never_leak_even_when_split_across_tokens() {
        let mut stop = StopMatcher::new(vec!["</answer>".into()]);
        assert_eq!(stop.push("The soup is "), Scan::Text("The soup is ".into()));
        assert_eq!(stop.push("hot</an"), Scan::Text("hot".into()));
        assert_eq!(stop.push("swer> ignored"), Scan::Stopped { text: "".into(), stop: "</answer>".into() });
    }

    #[test]
    fn held_text_that_was_not_a_stop_is_released() {
        let mut stop = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(stop.push("ST"), Scan::Text("".into()));
        assert_eq!(stop.push("ew"), Scan::Text("STew".into()));
        assert_eq!(stop.push("S"), Scan::Text("".into()));
        assert_eq!(stop.finish(), "S");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let mut stop = StopMatcher::new(vec!["b".into(), "a".into()]);
        assert_eq!(stop.push("xxaxb"), Scan::Stopped { text: "xx".into(), stop: "a".into() });
    }

    #[test]
    fn no_stops_releases_everything() {
        let mut stop = StopMatcher::new(vec![String::new()]);
        assert_eq!(stop.push("all of it"), Scan::Text("all of it".into()));
    }
}
