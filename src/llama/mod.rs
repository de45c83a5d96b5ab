//! The one low place for llama.cpp calls that llama-cpp-2 does not wrap, each behind a safe function:
//! `model.rs` loads a GGUF at an offset inside a larger file and reads ggml's tables; `chat.rs` is llama.cpp's
//! chat layer (Jinja templates, tool-call grammars, reading an answer back into content, reasoning and tool
//! calls) through the C++ shim `chat_shim.cpp` that build.rs compiles.
//!
//! Still outside it: `hardware/backends.rs` loads and scores ggml's backend modules through their C entry
//! points, which is how the launcher's placement and the engine meet.

pub mod chat;
mod model;

pub use model::{load_model_at, system_info, tensor_type_layout};
