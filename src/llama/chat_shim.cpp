// The C face of llama.cpp's chat layer (common/chat.h), which is C++ and which llama-cpp-2 does not wrap.
//
// The interface is narrow on purpose: JSON text in, JSON text out, every C++ exception caught and returned as
// an error message, so nothing but plain C crosses into Rust (src/llama/chat.rs). What each call does is what
// llama-server does for the same request (tools/server/server-common.cpp `oaicompat_chat_params_parse`,
// server-schema.cpp, server-task.cpp), so a template renders here byte for byte as it does there.
//
// Strings returned through `out` are malloc'ed; Rust frees them with stove_chat_string_free.

#include "chat.h"
#include "common.h"
#include "json.h"
#include "llama.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>

struct stove_chat {
    common_chat_templates_ptr templates;
};

struct stove_chat_parser {
    common_chat_parser_params params;
};

namespace {

char * copy_out(const std::string & text) {
    char * out = static_cast<char *>(std::malloc(text.size() + 1));
    if (out != nullptr) {
        std::memcpy(out, text.data(), text.size());
        out[text.size()] = '\0';
    }
    return out;
}

// Runs `body`, which sets `result`; on an exception the message goes to `out` and the call fails.
template <typename F> int guarded(char ** out, F && body) {
    try {
        std::string result = body();
        *out = copy_out(result);
        return 0;
    } catch (const std::exception & e) {
        *out = copy_out(e.what());
    } catch (...) {
        *out = copy_out("unknown C++ exception in llama.cpp's chat layer");
    }
    return 1;
}

const char * trigger_type_name(common_grammar_trigger_type type) {
    switch (type) {
        case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN: return "token";
        case COMMON_GRAMMAR_TRIGGER_TYPE_WORD: return "word";
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN: return "pattern";
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: return "pattern_full";
    }
    return "unknown";
}

// The trigger as the regular expression llama.cpp's lazy grammar sampler takes (common/sampling.cpp
// `common_sampler_init`); token triggers stay tokens.
std::string trigger_pattern(const common_grammar_trigger & trigger) {
    switch (trigger.type) {
        case COMMON_GRAMMAR_TRIGGER_TYPE_WORD: return regex_escape(trigger.value);
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN: return trigger.value;
        case COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN_FULL: {
            const auto & pattern = trigger.value;
            if (pattern.empty()) {
                return "^$";
            }
            return (pattern.front() != '^' ? "^" : "") + pattern + (pattern.back() != '$' ? "$" : "");
        }
        case COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN: return "";
    }
    return "";
}

common_json string_array(const std::vector<std::string> & items) {
    common_json array = common_json::array();
    for (const auto & item : items) {
        array.push_back(item);
    }
    return array;
}

}  // namespace

extern "C" {

// The model's own template (and its `tool_use` variant), or `template_override` when not NULL.
int stove_chat_init(const llama_model * model, const char * template_override, stove_chat ** chat, char ** error) {
    *chat = nullptr;
    return guarded(error, [&]() {
        auto templates = common_chat_templates_init(model, template_override ? template_override : "");
        *chat = new stove_chat{ std::move(templates) };
        return std::string();
    });
}

void stove_chat_free(stove_chat * chat) {
    delete chat;
}

// What the template supports: {"explicit", "caps": {...}, "supports_thinking", "source"}.
int stove_chat_info(const stove_chat * chat, char ** out) {
    return guarded(out, [&]() {
        common_json info = common_json::object();
        info["explicit"] = common_chat_templates_was_explicit(chat->templates.get());
        common_json caps = common_json::object();
        for (const auto & [name, value] : common_chat_templates_get_caps(chat->templates.get())) {
            caps[name] = value;
        }
        info["caps"] = caps;
        info["supports_thinking"] = common_chat_templates_support_enable_thinking(chat->templates.get());
        info["source"] = common_chat_templates_source(chat->templates.get());
        return info.dump_safe();
    });
}

// Renders a chat request. In: {"messages", "tools", "tool_choice", "parallel_tool_calls", "json_schema",
// "reasoning_format", "enable_thinking", "chat_template_kwargs" (values as JSON text), "add_generation_prompt"}.
// Out: the prompt, the (lazy) grammar with its trigger patterns and tokens, preserved tokens, extra stops, and
// "parser": what stove_chat_parser_new takes to read the answer back.
int stove_chat_apply(const stove_chat * chat, const char * request_json, char ** out) {
    return guarded(out, [&]() {
        const auto request = common_json::parse(request_json);
        common_chat_templates_inputs inputs;
        inputs.messages = common_chat_msgs_parse_oaicompat(request.at("messages"));
        inputs.tools = common_chat_tools_parse_oaicompat(request.value("tools", common_json()));
        inputs.tool_choice = common_chat_tool_choice_parse_oaicompat(request.value("tool_choice", std::string("auto")));
        inputs.json_schema = request.value("json_schema", std::string());
        inputs.use_jinja = true;
        auto caps = common_chat_templates_get_caps(chat->templates.get());
        inputs.parallel_tool_calls = request.value("parallel_tool_calls", caps["supports_parallel_tool_calls"]);
        inputs.add_generation_prompt = request.value("add_generation_prompt", true);
        inputs.reasoning_format = common_reasoning_format_from_name(request.value("reasoning_format", std::string("auto")));
        inputs.enable_thinking = request.value("enable_thinking", true);
        if (request.contains("chat_template_kwargs")) {
            for (const auto & item : request.at("chat_template_kwargs").items()) {
                inputs.chat_template_kwargs[item.key()] = item.value().get<std::string>();
            }
        }
        const auto params = common_chat_templates_apply(chat->templates.get(), inputs);

        common_json result = common_json::object();
        result["prompt"] = params.prompt;
        result["grammar"] = params.grammar;
        result["grammar_lazy"] = params.grammar_lazy;
        common_json patterns = common_json::array();
        common_json tokens = common_json::array();
        common_json triggers = common_json::array();
        for (const auto & trigger : params.grammar_triggers) {
            if (trigger.type == COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN) {
                tokens.push_back(trigger.token);
            } else {
                patterns.push_back(trigger_pattern(trigger));
            }
            triggers.push_back(common_json::object({ { "type", trigger_type_name(trigger.type) }, { "value", trigger.value } }));
        }
        result["trigger_patterns"] = patterns;
        result["trigger_tokens"] = tokens;
        result["triggers"] = triggers;
        result["preserved_tokens"] = string_array(params.preserved_tokens);
        result["additional_stops"] = string_array(params.additional_stops);
        result["generation_prompt"] = params.generation_prompt;
        result["supports_thinking"] = params.supports_thinking;
        result["thinking_start_tag"] = params.thinking_start_tag;
        result["thinking_end_tags"] = string_array(params.thinking_end_tags);
        result["format"] = common_chat_format_name(params.format);

        common_json parser = common_json::object();
        parser["format"] = static_cast<int>(params.format);
        parser["reasoning_format"] = common_reasoning_format_name(inputs.reasoning_format);
        parser["generation_prompt"] = params.generation_prompt;
        // As llama-server: tool calls are read back only when tools were offered and not refused.
        parser["parse_tool_calls"] = !inputs.tools.empty() && inputs.tool_choice != COMMON_CHAT_TOOL_CHOICE_NONE;
        parser["peg"] = params.parser;
        result["parser"] = parser;
        return result.dump();
    });
}

// A reader of one answer, from the "parser" object stove_chat_apply returned.
int stove_chat_parser_new(const char * params_json, stove_chat_parser ** parser, char ** error) {
    *parser = nullptr;
    return guarded(error, [&]() {
        const auto json = common_json::parse(params_json);
        auto made = std::make_unique<stove_chat_parser>();
        made->params.format = static_cast<common_chat_format>(json.at("format").get<int>());
        made->params.reasoning_format = common_reasoning_format_from_name(json.at("reasoning_format").get<std::string>());
        made->params.generation_prompt = json.value("generation_prompt", std::string());
        made->params.parse_tool_calls = json.value("parse_tool_calls", false);
        const auto peg = json.value("peg", std::string());
        if (!peg.empty()) {
            // Without the loaded grammar of the answer, common_chat_parse finds no tool calls.
            made->params.parser.load(peg);
        }
        *parser = made.release();
        return std::string();
    });
}

void stove_chat_parser_free(stove_chat_parser * parser) {
    delete parser;
}

// The answer so far (`partial`) or whole, as an OpenAI assistant message: {"role", "content",
// "reasoning_content", "tool_calls": [{"type", "function": {"name", "arguments"}, "id"}]}.
int stove_chat_parse(const stove_chat_parser * parser, const char * text, size_t len, bool partial, char ** out) {
    return guarded(out, [&]() {
        const auto msg = common_chat_parse(std::string(text, len), partial, parser->params);
        common_json json = common_json::object();
        json["content"] = msg.content;
        json["reasoning_content"] = msg.reasoning_content;
        common_json calls = common_json::array();
        for (const auto & call : msg.tool_calls) {
            calls.push_back(common_json::object({ { "name", call.name }, { "arguments", call.arguments }, { "id", call.id } }));
        }
        json["tool_calls"] = calls;
        // An answer cut at the token limit may end inside a character; it is replaced, not an error.
        return json.dump_safe();
    });
}

void stove_chat_string_free(char * text) {
    std::free(text);
}

}  // extern "C"
