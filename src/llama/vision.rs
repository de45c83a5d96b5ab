//! llama.cpp's multimodal library (`mtmd`, through llama-cpp-2): a projector (`--mmproj`) loaded beside the
//! model turns a picture into embeddings the model reads in place of tokens.
//!
//! A prompt with pictures is cut at each picture's marker: the text between goes through the model's own
//! tokenizer (as mtmd does itself), and each picture becomes a [`Picture`]: mtmd's chunks for that picture with
//! the model's own markers around it (Gemma 3's `<start_of_image>`, …), decoded into a sequence at its place.

use std::ffi::CString;
use std::path::Path;
use std::sync::Mutex;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::{
    mtmd_default_marker, MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunkType, MtmdInputChunks, MtmdInputText,
};

/// Where a picture goes in a prompt's text (mtmd's default marker, which the page and API put in for each
/// picture part).
pub fn marker() -> &'static str {
    mtmd_default_marker()
}

/// A loaded projector.
pub struct Projector {
    /// Tokenizing a picture (on a request's thread) and decoding one (on the engine's) take turns.
    context: Mutex<MtmdContext>,
    pub vision: bool,
    pub audio: bool,
}

/// One picture of a prompt, ready to decode: its chunks, and the tokens (and positions) it takes.
pub struct Picture {
    chunks: MtmdInputChunks,
    pub tokens: usize,
}

impl Projector {
    /// Loads the projector in `path` for `model`, on the GPU when `use_gpu` (where the model is).
    pub fn load(path: &Path, model: &LlamaModel, threads: i32, use_gpu: bool) -> Result<Projector, String> {
        let shown = path.display();
        let params = MtmdContextParams {
            use_gpu,
            print_timings: false,
            n_threads: threads,
            media_marker: CString::new(marker()).expect("no NUL in the marker"),
            image_min_tokens: -1,
            image_max_tokens: -1,
        };
        let path_text = path.to_str().ok_or_else(|| format!("the projector's path {shown} is not UTF-8"))?;
        let context = MtmdContext::init_from_file(path_text, model, &params).map_err(|_| {
            format!(
                "llama.cpp could not load the projector {shown} for this model (is it the projector made for this \
                 model? run with --verbose to see why)"
            )
        })?;
        // Models whose pictures take more positions than tokens (Qwen2-VL's M-RoPE) need positions stove does
        // not track yet; they are refused here rather than answering wrongly.
        if context.decode_use_mrope() {
            return Err(format!(
                "the projector {shown} is for a model with multi-axis positions (M-RoPE: Qwen2-VL, Qwen2.5-VL, …), \
                 which stove does not run yet; projectors of other kinds (Gemma 3, SmolVLM, LLaVA, Pixtral, …) \
                 are read"
            ));
        }
        let (vision, audio) = (context.support_vision(), context.support_audio());
        Ok(Projector { context: Mutex::new(context), vision, audio })
    }

    /// Turns one picture (RGB, 3 bytes a pixel, rows top to bottom) into its chunks. `id` names it (its hash),
    /// so the same picture gives the same chunks.
    pub fn picture(&self, rgb: &[u8], width: u32, height: u32, id: &str) -> Result<Picture, String> {
        let mut bitmap = MtmdBitmap::from_image_data(width, height, rgb)
            .map_err(|e| format!("llama.cpp could not take the picture: {e}"))?;
        bitmap.set_id(id).map_err(|e| e.to_string())?;
        let text = MtmdInputText { text: marker().to_string(), add_special: false, parse_special: true };
        let context = self.context.lock().expect("projector lock");
        let chunks =
            context.tokenize(text, &[&bitmap]).map_err(|e| format!("llama.cpp could not read the picture: {e}"))?;
        let tokens = chunks.total_tokens();
        if (0..chunks.len()).all(|i| chunks.get(i).is_none_or(|c| c.chunk_type() == MtmdInputChunkType::Text)) {
            return Err("the projector made no picture tokens from the picture".into());
        }
        Ok(Picture { chunks, tokens })
    }

    /// Decodes `picture` into sequence `seq` of `ctx` at position `at` (its markers and its embeddings), in
    /// batches of `n_batch`.
    pub fn decode(
        &self,
        picture: &Picture,
        ctx: &mut LlamaContext,
        at: usize,
        seq: i32,
        n_batch: i32,
    ) -> Result<(), String> {
        let mut context = self.context.lock().expect("projector lock");
        picture
            .chunks
            .eval_chunks(&mut context, ctx, at as i32, seq, n_batch, false)
            .map(|_| ())
            .map_err(|e| format!("llama.cpp could not decode the picture: {e}"))
    }
}
