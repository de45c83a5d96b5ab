"""Writes a tiny random-weight vision projector for the default model (SmolLM2-135M, 576-wide embeddings).

    projector.py OUT.gguf [--seed N] [--width N]

(`--width` makes one for another model's width, which stove must refuse for this one.)

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


def main():
    out = sys.argv[1]
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 1
    text_width = int(sys.argv[sys.argv.index("--width") + 1]) if "--width" in sys.argv else TEXT_WIDTH
    rng = np.random.default_rng(seed)

    def weights(*shape, scale=None):
        scale = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = GGUFWriter(out, arch="clip")
    writer.add_name("stove test projector (random)")
    writer.add_string("clip.projector_type", "gemma3")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", IMAGE)
    writer.add_uint32("clip.vision.patch_size", PATCH)
    writer.add_uint32("clip.vision.embedding_length", WIDTH)
    writer.add_uint32("clip.vision.feed_forward_length", FFN)
    writer.add_uint32("clip.vision.block_count", BLOCKS)
    writer.add_uint32("clip.vision.attention.head_count", HEADS)
    writer.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
    writer.add_uint32("clip.vision.projection_dim", text_width)
    writer.add_uint32("clip.vision.projector.scale_factor", MERGE)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])

    patches = (IMAGE // PATCH) ** 2
    # numpy shapes are ggml's dimensions reversed: a conv kernel [OC, IC, KH, KW], a matrix [out, in].
    writer.add_tensor("v.patch_embd.weight", weights(WIDTH, 3, PATCH, PATCH, scale=0.05))
    writer.add_tensor("v.patch_embd.bias", np.zeros(WIDTH, dtype=np.float32))
    writer.add_tensor("v.position_embd.weight", weights(patches, WIDTH, scale=0.02))
    for i in range(BLOCKS):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"v.blk.{i}.{name}.weight", weights(WIDTH, WIDTH))
            writer.add_tensor(f"v.blk.{i}.{name}.bias", np.zeros(WIDTH, dtype=np.float32))
        for name in ("ln1", "ln2"):
            writer.add_tensor(f"v.blk.{i}.{name}.weight", np.ones(WIDTH, dtype=np.float32))
            writer.add_tensor(f"v.blk.{i}.{name}.bias", np.zeros(WIDTH, dtype=np.float32))
        writer.add_tensor(f"v.blk.{i}.ffn_up.weight", weights(FFN, WIDTH))
        writer.add_tensor(f"v.blk.{i}.ffn_up.bias", np.zeros(FFN, dtype=np.float32))
        writer.add_tensor(f"v.blk.{i}.ffn_down.weight", weights(WIDTH, FFN))
        writer.add_tensor(f"v.blk.{i}.ffn_down.bias", np.zeros(WIDTH, dtype=np.float32))
    writer.add_tensor("v.post_ln.weight", np.ones(WIDTH, dtype=np.float32))
    writer.add_tensor("v.post_ln.bias", np.zeros(WIDTH, dtype=np.float32))
    writer.add_tensor("mm.soft_emb_norm.weight", np.ones(WIDTH, dtype=np.float32))
    # Used transposed: [in, out]. Scaled so the image's tokens are about as large as the model's own embeddings.
    writer.add_tensor("mm.input_projection.weight", weights(WIDTH, text_width, scale=0.02))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
