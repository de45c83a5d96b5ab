//! llama.cpp's multimodal library (`mtmd`, through llama-cpp-2): a projector (`--mmproj`) loaded beside the
//! model turns a picture or a sound into embeddings the model reads in place of tokens.
//!
//! A prompt with pictures or sounds is cut at each one's marker: the text between goes through the model's own
//! tokenizer (as mtmd does itself), and each becomes [`MediaChunks`]: mtmd's chunks for it with the model's own
//! markers around it (Gemma 3's `<start_of_image>`, …), decoded into a sequence at its place.

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
    /// For models that read a picture with attention both ways (Gemma 3): the batch it must fit in whole, since
    /// mtmd splits a larger one into batches that cannot see each other.
    whole_in: Option<usize>,
}

/// One picture or sound of a prompt, ready to decode: its chunks, and the tokens (and positions) it takes.
pub struct MediaChunks {
    chunks: MtmdInputChunks,
    pub tokens: usize,
}

impl Projector {
    /// Loads the projector in `path` for `model`, on the GPU when `use_gpu` (where the model is); the model's
    /// context decodes `batch` tokens at a time.
    pub fn load(path: &Path, model: &LlamaModel, threads: i32, use_gpu: bool, batch: u32) -> Result<Projector, String> {
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
        let whole_in = context.decode_use_non_causal().then_some(batch as usize);
        Ok(Projector { context: Mutex::new(context), vision, audio, whole_in })
    }

    /// Turns one picture (RGB, 3 bytes a pixel, rows top to bottom) into its chunks. `id` names it (its hash),
    /// so the same picture gives the same chunks.
    pub fn picture(&self, rgb: &[u8], width: u32, height: u32, id: &str) -> Result<MediaChunks, String> {
        let bitmap = MtmdBitmap::from_image_data(width, height, rgb)
            .map_err(|e| format!("llama.cpp could not take the picture: {e}"))?;
        let context = self.context.lock().expect("projector lock");
        let chunks = chunks_of(&context, bitmap, id, "picture")?;
        if let Some(batch) = self.whole_in {
            let largest = (0..chunks.chunks.len()).filter_map(|i| chunks.chunks.get(i)).map(|c| c.n_tokens()).max();
            if let Some(tokens) = largest.filter(|&t| t > batch) {
                return Err(format!(
                    "it takes {tokens} tokens, and this model reads a picture whole in one batch of at most {batch}: \
                     start stove with --batch-size {tokens} or more"
                ));
            }
        }
        Ok(chunks)
    }

    /// Turns one sound (the bytes of a WAV, MP3 or FLAC file) into its chunks: mtmd's helper decodes it with
    /// miniaudio and resamples it to the rate the projector hears. `id` names it (its hash).
    pub fn sound(&self, file: &[u8], id: &str) -> Result<MediaChunks, String> {
        // The helper takes any file and guesses by its first bytes, trying pictures (and, in builds with video,
        // a program) for what is not sound: only sound reaches it.
        if sound_format(file).is_none() {
            return Err("it is not a WAV, MP3 or FLAC file".into());
        }
        let context = self.context.lock().expect("projector lock");
        let bitmap = MtmdBitmap::from_buffer(&context, file, false)
            .map_err(|_| "llama.cpp could not decode it (is the whole WAV, MP3 or FLAC file there?)".to_string())?;
        if !bitmap.is_audio() {
            return Err("llama.cpp did not read it as a sound".into());
        }
        chunks_of(&context, bitmap, id, "sound")
    }

    /// Decodes `picture` into sequence `seq` of `ctx` at position `at` (its markers and its embeddings), in
    /// batches of `n_batch`.
    pub fn decode(
        &self,
        picture: &MediaChunks,
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
            .map_err(|e| format!("llama.cpp could not decode the picture or sound: {e}"))
    }
}

/// The sound file format `file` starts like (what miniaudio reads): "wav", "mp3" or "flac".
pub fn sound_format(file: &[u8]) -> Option<&'static str> {
    match file {
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'A', b'V', b'E', ..] => Some("wav"),
        [b'f', b'L', b'a', b'C', ..] => Some("flac"),
        // An ID3 tag, or an MPEG audio frame's sync bits.
        [b'I', b'D', b'3', ..] => Some("mp3"),
        [0xff, second, ..] if second & 0xe0 == 0xe0 => Some("mp3"),
        _ => None,
    }
}

/// mtmd's chunks for one picture or sound (`what`), behind the marker; `id` makes the same item give the same
/// chunks.
fn chunks_of(context: &MtmdContext, mut bitmap: MtmdBitmap, id: &str, what: &str) -> Result<MediaChunks, String> {
    bitmap.set_id(id).map_err(|e| e.to_string())?;
    let text = MtmdInputText { text: marker().to_string(), add_special: false, parse_special: true };
    let chunks = context.tokenize(text, &[&bitmap]).map_err(|e| format!("llama.cpp could not read the {what}: {e}"))?;
    let tokens = chunks.total_tokens();
    if (0..chunks.len()).all(|i| chunks.get(i).is_none_or(|c| c.chunk_type() == MtmdInputChunkType::Text)) {
        return Err(format!("the projector made no tokens from the {what}"));
    }
    Ok(MediaChunks { chunks, tokens })
}
