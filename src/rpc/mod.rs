//! One model over several machines (issue 17): other stove instances lend their devices through ggml's RPC
//! backend, and stove carries that protocol between machines inside its own authenticated, encrypted link.
//!
//! `link.rs` is the link (Noise XX keyed with `stove keygen`'s keys), complete and tested on its own; `stove
//! worker` and `--worker`, which put ggml's RPC server and client behind it, are the next step, so until they
//! land nothing outside the tests calls it.
#![cfg_attr(not(test), allow(dead_code))]

pub mod link;
