"""Writes a tiny random-weight vision projector for the default model (SmolLM2-135M, 576-wide embeddings).

    projector.py OUT.gguf [--seed N] [--width N] [--gemma3-size | --audio]

(`--width` makes one for another model's width, which stove must refuse for this one. `--gemma3-size` makes one
of Gemma 3's real size, f16 like the published mmproj, for scripts/bench-pictures: the same work per picture as
the real encoder, with meaningless weights. `--audio` makes one that hears instead: Ultravox's kind, a two-block
Whisper encoder of width 64 over 80 mel bins, its frames stacked by 4 (Voxtral's factor; with Ultravox's 8 this
llama.cpp counts 187 tokens but its graph makes 188), so 30 s of sound, which Whisper pads every sound to,
becomes 375 tokens.)

No vision model can be fetched here, so the multimodal tests use this: a Gemma 3-style projector (the kind of
llama.cpp's own "tinygemma3" test model) with a two-block SigLIP encoder of width 64 on a 64x64 image of 16x16
patches, pooled 2x2 into 4 tokens, normed and projected to 576. Gemma 3's image markers are plain text
(<start_of_image>), so it works with a text model whose vocabulary lacks them; SmolVLM's (Idefics3) would need
its special tokens. llama.cpp's clip loads and runs it like a real one; its "answers" are meaningless but
deterministic, which is what the tests need (same image, same tokens; another image, another prompt). Written
with the gguf package and numpy only, so no torch is needed.
"""

import sys

import numpy as np
from gguf import GGUFWriter

TEXT_WIDTH = 576  # SmolLM2-135M's embedding length
WIDTH, FFN, BLOCKS, HEADS = 64, 128, 2, 4
IMAGE, PATCH, MERGE = 64, 16, 2
# Gemma 3's SigLIP so400m: 896x896 pictures in 14x14 patches (64x64), pooled 4x4 into 256 tokens.
GEMMA3 = dict(WIDTH=1152, FFN=4304, BLOCKS=27, HEADS=16, IMAGE=896, PATCH=14, MERGE=4)


def zeros(n):
    return np.zeros(n, dtype=np.float32)


def ones(n):
    return np.ones(n, dtype=np.float32)


def main():
    out = sys.argv[1]
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 1
    text_width = int(sys.argv[sys.argv.index("--width") + 1]) if "--width" in sys.argv else TEXT_WIDTH
    real_size = "--gemma3-size" in sys.argv
    shape = GEMMA3 if real_size else dict(WIDTH=WIDTH, FFN=FFN, BLOCKS=BLOCKS, HEADS=HEADS, IMAGE=IMAGE, PATCH=PATCH,
                                          MERGE=MERGE)
    width, ffn, blocks, heads = shape["WIDTH"], shape["FFN"], shape["BLOCKS"], shape["HEADS"]
    image, patch, merge = shape["IMAGE"], shape["PATCH"], shape["MERGE"]
    rng = np.random.default_rng(seed)

    def weights(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def matrix(*shape):
        # The big matrices are f16 in published projectors (mmproj-model-f16.gguf).
        return weights(*shape).astype(np.float16) if real_size else weights(*shape)

    if "--audio" in sys.argv:
        return write_audio(out, weights, text_width)

    writer = GGUFWriter(out, arch="clip")
    writer.add_name("stove test projector (random)")
    writer.add_string("clip.projector_type", "gemma3")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", image)
    writer.add_uint32("clip.vision.patch_size", patch)
    add_encoder_shape(writer, "vision", width, ffn, blocks, heads, 1e-6, text_width)
    writer.add_uint32("clip.vision.projector.scale_factor", merge)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    patches = (image // patch) ** 2
    # numpy shapes are ggml's dimensions reversed: a conv kernel [OC, IC, KH, KW], a matrix [out, in].
    writer.add_tensor("v.patch_embd.weight", weights(width, 3, patch, patch, scale=0.05))
    writer.add_tensor("v.patch_embd.bias", np.zeros(width, dtype=np.float32))
    writer.add_tensor("v.position_embd.weight", weights(patches, width, scale=0.02))
    add_blocks(writer, "v", blocks, width, ffn, matrix, key_bias=True)
    writer.add_tensor("mm.soft_emb_norm.weight", np.ones(width, dtype=np.float32))
    # Used transposed: [in, out]. Scaled so the image's tokens are about as large as the model's own embeddings.
    writer.add_tensor("mm.input_projection.weight", weights(width, text_width, scale=0.02))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def add_encoder_shape(writer, modality, width, ffn, blocks, heads, eps, text_width):
    """The encoder's size under clip.vision.* or clip.audio.*, as clip's loader reads it."""
    writer.add_uint32(f"clip.{modality}.embedding_length", width)
    writer.add_uint32(f"clip.{modality}.feed_forward_length", ffn)
    writer.add_uint32(f"clip.{modality}.block_count", blocks)
    writer.add_uint32(f"clip.{modality}.attention.head_count", heads)
    writer.add_float32(f"clip.{modality}.attention.layer_norm_epsilon", eps)
    writer.add_uint32(f"clip.{modality}.projection_dim", text_width)


def add_blocks(writer, prefix, blocks, width, ffn, matrix, key_bias):
    """The encoder's transformer blocks (`v.blk.N.*` or `a.blk.N.*`) and its closing norm, in the order the random
    weights are drawn (so a seed always gives the same file). `matrix(out, in)` makes each weight matrix."""
    for i in range(blocks):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{prefix}.blk.{i}.{name}.weight", matrix(width, width))
            if key_bias or name != "attn_k":
                writer.add_tensor(f"{prefix}.blk.{i}.{name}.bias", zeros(width))
        for name in ("ln1", "ln2"):
            writer.add_tensor(f"{prefix}.blk.{i}.{name}.weight", ones(width))
            writer.add_tensor(f"{prefix}.blk.{i}.{name}.bias", zeros(width))
        writer.add_tensor(f"{prefix}.blk.{i}.ffn_up.weight", matrix(ffn, width))
        writer.add_tensor(f"{prefix}.blk.{i}.ffn_up.bias", zeros(ffn))
        writer.add_tensor(f"{prefix}.blk.{i}.ffn_down.weight", matrix(width, ffn))
        writer.add_tensor(f"{prefix}.blk.{i}.ffn_down.bias", zeros(width))
    writer.add_tensor(f"{prefix}.post_ln.weight", ones(width))
    writer.add_tensor(f"{prefix}.post_ln.bias", zeros(width))


def write_audio(out, weights, text_width):
    """An Ultravox-style projector: Whisper's encoder (two 1-D convolutions, transformer blocks), frames stacked
    by 4, RMS-normed, a SwiGLU projection and a linear one into the model's width (llama.cpp's
    tools/mtmd/models/whisper-enc.cpp)."""
    width, ffn, blocks, heads, mels, stack, positions = 64, 128, 2, 4, 80, 4, 1500
    writer = GGUFWriter(out, arch="clip")
    writer.add_name("stove test audio projector (random)")
    writer.add_string("clip.projector_type", "ultravox")
    writer.add_bool("clip.has_audio_encoder", True)
    add_encoder_shape(writer, "audio", width, ffn, blocks, heads, 1e-5, text_width)
    writer.add_uint32("clip.audio.num_mel_bins", mels)
    writer.add_uint32("clip.audio.projector.stack_factor", stack)
    # numpy shapes are ggml's dimensions reversed: a 1-D conv kernel [OC, IC, K], a matrix [out, in].
    writer.add_tensor("a.conv1d.1.weight", weights(width, mels, 3, scale=0.05))
    # Biases of the convolutions are columns [1, width] (convert_hf_to_gguf.py unsqueezes them).
    writer.add_tensor("a.conv1d.1.bias", np.zeros((width, 1), dtype=np.float32))
    writer.add_tensor("a.conv1d.2.weight", weights(width, width, 3, scale=0.05))
    writer.add_tensor("a.conv1d.2.bias", np.zeros((width, 1), dtype=np.float32))
    writer.add_tensor("a.position_embd.weight", weights(positions, width, scale=0.02))
    # Whisper's keys have no bias.
    add_blocks(writer, "a", blocks, width, ffn, weights, key_bias=False)
    writer.add_tensor("mm.a.norm_pre.weight", ones(width * stack))
    writer.add_tensor("mm.a.mlp.1.weight", weights(2 * width, width * stack))
    writer.add_tensor("mm.a.norm_mid.weight", ones(width))
    writer.add_tensor("mm.a.mlp.2.weight", weights(text_width, width, scale=0.05))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
