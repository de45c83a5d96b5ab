// The C face of llama.cpp's n-gram drafters (common/speculative.h), which are C++ and which llama-cpp-2 does
// not wrap. A drafter proposes the tokens that followed the last time the conversation's latest tokens
// appeared in it; the engine decodes them together with its next token and keeps the ones the model agrees
// with (src/engine/speculation.rs). This is the code llama-server runs for `--spec-type ngram-*`.
//
// Only plain C crosses into Rust (src/llama/speculative.rs): token arrays in, token arrays out, and every C++
// exception caught and returned as an error message (malloc'ed; Rust frees it with stove_chat_string_free).

#include "common.h"
#include "speculative.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

struct stove_spec {
    common_speculative * spec = nullptr;
    // Reused between calls, so drafting allocates only when a conversation grows past what it held.
    llama_tokens history;
    llama_tokens result;
};

namespace {

char * copy_message(const char * text) {
    const size_t len = std::strlen(text);
    char * out = static_cast<char *>(std::malloc(len + 1));
    if (out != nullptr) {
        std::memcpy(out, text, len + 1);
    }
    return out;
}

}  // namespace

extern "C" {

// An n-gram drafter for `n_seq` sequences: it looks for the last `size_n` tokens earlier in a sequence's
// history and proposes up to `size_m` tokens that followed them (llama.cpp's ngram-simple).
int stove_spec_ngram_new(uint32_t n_seq, uint16_t size_n, uint16_t size_m, stove_spec ** out, char ** error) {
    *out = nullptr;
    try {
        common_params_speculative params;
        params.types = { COMMON_SPECULATIVE_TYPE_NGRAM_SIMPLE };
        params.ngram_simple.size_n = size_n;
        params.ngram_simple.size_m = size_m;
        common_speculative * spec = common_speculative_init(params, n_seq);
        if (spec == nullptr) {
            *error = copy_message("llama.cpp made no n-gram drafter from these settings");
            return 1;
        }
        auto * made = new stove_spec();
        made->spec = spec;
        *out = made;
        return 0;
    } catch (const std::exception & e) {
        *error = copy_message(e.what());
    } catch (...) {
        *error = copy_message("unknown C++ exception in llama.cpp's speculative decoding");
    }
    return 1;
}

void stove_spec_free(stove_spec * spec) {
    if (spec != nullptr) {
        common_speculative_free(spec->spec);
        delete spec;
    }
}

// A new answer starts in `seq`, after `prompt`.
void stove_spec_begin(stove_spec * spec, int32_t seq, const int32_t * prompt, size_t len) {
    spec->history.assign(prompt, prompt + len);
    common_speculative_begin(spec->spec, seq, spec->history);
}

// Drafts for `seq`, whose cache holds `history` and whose next token is `last`: writes at most `cap` tokens
// to `out` and returns how many.
size_t stove_spec_draft(stove_spec * spec, int32_t seq, const int32_t * history, size_t len, int32_t last,
                        int32_t * out, size_t cap) {
    if (cap == 0) {
        return 0;
    }
    spec->history.assign(history, history + len);
    spec->result.clear();
    common_speculative_draft_params & params = common_speculative_get_draft_params(spec->spec, seq);
    params.drafting = true;
    params.n_max = static_cast<int32_t>(cap);
    params.pos0 = static_cast<llama_pos>(len);
    params.id_last = last;
    params.prompt = &spec->history;
    params.result = &spec->result;
    params.result_q = nullptr;
    common_speculative_draft(spec->spec);
    params.prompt = nullptr;
    params.result = nullptr;
    const size_t n = spec->result.size() < cap ? spec->result.size() : cap;
    std::memcpy(out, spec->result.data(), n * sizeof(int32_t));
    return n;
}

// Whether `draft` can guess tokens for `target`: the same kind of vocabulary, the same special tokens, and the
// same text for every token (llama.cpp's own rule, which llama-server applies to --model-draft).
bool stove_spec_compatible(const llama_model * target, const llama_model * draft) {
    try {
        return common_speculative_are_compatible(target, draft);
    } catch (...) {
        return false;
    }
}

// The model agreed with the first `accepted` tokens of the last draft for `seq`.
void stove_spec_accept(stove_spec * spec, int32_t seq, uint16_t accepted) {
    common_speculative_accept(spec->spec, seq, accepted);
}

}  // extern "C"
