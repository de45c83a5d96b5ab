//! llama.cpp's n-gram drafter, safely: given a conversation's tokens, it proposes the tokens that followed
//! the last time its latest tokens appeared (llama-server's `--spec-type ngram-simple`). The C++ lives in
//! `speculative_shim.cpp`; this file holds every unsafe call into it, and llama.cpp's check that a draft model
//! shares a model's vocabulary. How drafts are made with a draft model, checked and kept is the engine's
//! business (`engine/speculation.rs`).

use std::ffi::{c_char, c_int, CStr};
use std::path::Path;
use std::ptr::NonNull;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

#[repr(C)]
struct RawSpec {
    _private: [u8; 0],
}

extern "C" {
    fn stove_spec_ngram_new(
        n_seq: u32,
        size_n: u16,
        size_m: u16,
        out: *mut *mut RawSpec,
        error: *mut *mut c_char,
    ) -> c_int;
    fn stove_spec_free(spec: *mut RawSpec);
    fn stove_spec_begin(spec: *mut RawSpec, seq: i32, prompt: *const i32, len: usize);
    fn stove_spec_draft(
        spec: *mut RawSpec,
        seq: i32,
        history: *const i32,
        len: usize,
        last: i32,
        out: *mut i32,
        cap: usize,
    ) -> usize;
    fn stove_spec_accept(spec: *mut RawSpec, seq: i32, accepted: u16);
    fn stove_spec_compatible(
        target: *const llama_cpp_sys_2::llama_model,
        draft: *const llama_cpp_sys_2::llama_model,
    ) -> bool;
    fn stove_chat_string_free(text: *mut c_char);
}

/// Whether `draft` can guess tokens for `target`: llama.cpp's rule (the same kind of vocabulary, special tokens
/// and text for every token), which llama-server applies to `--model-draft`.
pub fn vocabularies_match(target: &LlamaModel, draft: &LlamaModel) -> bool {
    // SAFETY: both models are alive for the call, which only reads their vocabularies.
    unsafe { stove_spec_compatible(super::model::raw_model(target), super::model::raw_model(draft)) }
}

/// [`vocabularies_match`] for two GGUFs in files (each at a byte offset), reading only their vocabularies.
pub fn vocabularies_match_at(target: (&Path, u64), draft: (&Path, u64)) -> Result<bool, String> {
    let target = super::model::load_vocabulary_at(target.0, target.1).map_err(|e| e.to_string())?;
    let draft = super::model::load_vocabulary_at(draft.0, draft.1).map_err(|e| e.to_string())?;
    Ok(vocabularies_match(&target, &draft))
}

/// llama.cpp's n-gram drafter for every sequence of one context.
pub struct NgramDrafter {
    raw: NonNull<RawSpec>,
    /// Where drafts are written, reused.
    out: Vec<i32>,
}

impl NgramDrafter {
    /// A drafter for `sequences` conversations that matches the last `lookup` tokens and proposes up to
    /// `longest` tokens.
    pub fn new(sequences: u32, lookup: u16, longest: u16) -> Result<Self, String> {
        let mut raw = std::ptr::null_mut();
        let mut error = std::ptr::null_mut();
        // SAFETY: both out-pointers are valid; the shim sets exactly one of them.
        let status = unsafe { stove_spec_ngram_new(sequences, lookup, longest, &mut raw, &mut error) };
        if status != 0 || raw.is_null() {
            let message = if error.is_null() {
                "llama.cpp's n-gram drafter failed without saying why".to_string()
            } else {
                // SAFETY: a NUL-terminated malloc'ed message, freed here once.
                let message = unsafe { CStr::from_ptr(error) }.to_string_lossy().into_owned();
                unsafe { stove_chat_string_free(error) };
                message
            };
            return Err(message);
        }
        Ok(NgramDrafter { raw: NonNull::new(raw).expect("checked"), out: Vec::new() })
    }

    /// A new answer starts in `seq` after `prompt`.
    pub fn begin(&mut self, seq: i32, prompt: &[LlamaToken]) {
        // SAFETY: LlamaToken is a transparent i32; the shim copies the tokens before returning.
        unsafe { stove_spec_begin(self.raw.as_ptr(), seq, prompt.as_ptr().cast(), prompt.len()) }
    }

    /// Up to `most` tokens that may follow `last` in `seq`, whose cache holds `history`; empty when the
    /// conversation offers no match.
    pub fn draft(&mut self, seq: i32, history: &[LlamaToken], last: LlamaToken, most: usize) -> Vec<LlamaToken> {
        self.out.resize(most, 0);
        // SAFETY: `history` is read only during the call; `out` has room for `most` tokens and the shim writes
        // at most that many.
        let n = unsafe {
            stove_spec_draft(
                self.raw.as_ptr(),
                seq,
                history.as_ptr().cast(),
                history.len(),
                last.0,
                self.out.as_mut_ptr(),
                most,
            )
        };
        self.out[..n.min(most)].iter().map(|&t| LlamaToken(t)).collect()
    }

    /// The model agreed with the first `accepted` tokens of the last draft for `seq`.
    pub fn accept(&mut self, seq: i32, accepted: usize) {
        let accepted = u16::try_from(accepted).unwrap_or(u16::MAX);
        // SAFETY: `seq` is below the sequence count the drafter was made for (the engine's slots).
        unsafe { stove_spec_accept(self.raw.as_ptr(), seq, accepted) }
    }
}

impl Drop for NgramDrafter {
    fn drop(&mut self) {
        // SAFETY: made by stove_spec_ngram_new, freed once.
        unsafe { stove_spec_free(self.raw.as_ptr()) }
    }
}
