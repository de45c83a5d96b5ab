//! The one low place for llama.cpp calls that llama-cpp-2 does not wrap, each behind a safe function:
//! `model.rs` loads a GGUF at an offset inside a larger file and reads ggml's tables; `chat.rs` is llama.cpp's
//! chat layer (Jinja templates, tool-call grammars, reading an answer back into content, reasoning and tool
//! calls) through the C++ shim `chat_shim.cpp` that build.rs compiles; `speculative.rs` is llama.cpp's n-gram
//! drafter through `speculative_shim.cpp`; `modules.rs` scores and registers ggml's backend modules;
//! `vision.rs` is llama.cpp's multimodal library (a projector reading pictures); `rpc.rs` is ggml's RPC backend
//! (lending this machine's devices, borrowing another's).

pub mod chat;
mod model;
pub mod modules;
pub mod rpc;
pub mod speculative;
pub mod vision;

pub use model::{load_description_at, load_model_at, system_info, tensor_type_layout};
