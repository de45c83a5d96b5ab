"""The official `openai` and `anthropic` Python clients run whole tool loops against a running stove: run by
tests/chat_templates.rs, with a model whose chat template speaks tool calls, started with `--temperature 0`
(Anthropic's client no longer sends a temperature), so a streamed answer can be compared with a whole one.

Usage: python tool_clients.py BASE_URL API_KEY
Any failed assertion or unexpected exception exits non-zero with a traceback.
"""
import json
import sys

import anthropic
import openai

base_url, api_key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120)
model = client.models.list().data[0].id

tools = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
question = {"role": "user", "content": "What is the weather in Paris? Use the tool."}


def check_call(call):
    assert call.id, call
    assert call.function.name == "get_weather", call
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments.get("city"), str), arguments
    return arguments


# A required call, whole: `tool_calls` with an id, and finish_reason "tool_calls".
first = client.chat.completions.create(
    model=model, messages=[question], tools=tools, tool_choice="required", temperature=0, max_tokens=120
)
choice = first.choices[0]
assert choice.finish_reason == "tool_calls", choice
assert len(choice.message.tool_calls) >= 1, choice.message
check_call(choice.message.tool_calls[0])

# The same call streamed, accumulated by the SDK's own stream helper: the same name and arguments.
with client.chat.completions.stream(
    model=model, messages=[question], tools=tools, tool_choice="required", temperature=0, max_tokens=120
) as stream:
    for _ in stream:
        pass
    streamed = stream.get_final_completion()
streamed_call = streamed.choices[0].message.tool_calls[0]
assert streamed.choices[0].finish_reason == "tool_calls", streamed.choices[0]
assert streamed_call.function.name == choice.message.tool_calls[0].function.name, streamed_call
assert streamed_call.function.arguments == choice.message.tool_calls[0].function.arguments, (
    streamed_call.function.arguments,
    choice.message.tool_calls[0].function.arguments,
)

# A named function forces that function.
named = client.chat.completions.create(
    model=model,
    messages=[question],
    tools=tools,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},
    temperature=0,
    max_tokens=120,
)
check_call(named.choices[0].message.tool_calls[0])

# The tool's answer goes back, and the model answers in prose (tools still offered, not required).
call = choice.message.tool_calls[0]
history = [
    question,
    {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"weather": "sunny", "celsius": 21})},
]
final = client.chat.completions.create(
    model=model, messages=history, tools=tools, tool_choice="none", temperature=0, max_tokens=40
)
assert final.choices[0].message.content, final
assert not final.choices[0].message.tool_calls, final
assert final.choices[0].finish_reason in ("stop", "length"), final

# The follow-up turn reused the first turn's cache: its prompt starts with the same tokens (tools included).
assert final.usage.prompt_tokens_details.cached_tokens > 0, final.usage

# A tool message answering no call is refused, naming the field.
try:
    client.chat.completions.create(
        model=model, messages=[question, {"role": "tool", "tool_call_id": "call_none", "content": "x"}]
    )
    raise AssertionError("a tool result without its call was accepted")
except openai.BadRequestError as error:
    assert "tool_call_id" in str(error), error

# The Responses API: text in, a function call out, its output back, prose out.
response = client.responses.create(
    model=model,
    instructions="You check the weather.",
    input="What is the weather in Paris?",
    tools=[{"type": "function", "name": "get_weather", "parameters": tools[0]["function"]["parameters"]}],
    tool_choice="required",
    temperature=0,
    max_output_tokens=120,
)
calls = [item for item in response.output if item.type == "function_call"]
assert calls and calls[0].name == "get_weather", response.output
json.loads(calls[0].arguments)
followup = client.responses.create(
    model=model,
    input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather", "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"},
    ],
    temperature=0,
    max_output_tokens=30,
)
assert followup.output_text, followup
streamed_text = []
with client.responses.stream(model=model, input="Name a soup.", temperature=0, max_output_tokens=20) as events:
    for event in events:
        if event.type == "response.output_text.delta":
            streamed_text.append(event.delta)
    done = events.get_final_response()
assert "".join(streamed_text) == done.output_text and done.output_text, (streamed_text, done.output_text)

# Anthropic's client: messages, streaming, a tool loop, token counting, errors.
claude = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
message = claude.messages.create(
    model="any", max_tokens=30, system="Be brief.", messages=[{"role": "user", "content": "Name a soup."}],

)
assert message.content[0].type == "text" and message.content[0].text, message
assert message.stop_reason in ("end_turn", "max_tokens"), message
with claude.messages.stream(
    model="any", max_tokens=30, system="Be brief.", messages=[{"role": "user", "content": "Name a soup."}],

) as stream:
    streamed_text = "".join(stream.text_stream)
    streamed_message = stream.get_final_message()
assert streamed_text == message.content[0].text, (streamed_text, message.content[0].text)
assert streamed_message.usage.output_tokens == message.usage.output_tokens, streamed_message.usage

claude_tools = [{"name": "get_weather", "description": "The current weather in a city",
                 "input_schema": tools[0]["function"]["parameters"]}]
asked = claude.messages.create(
    model="any", max_tokens=120, tools=claude_tools, tool_choice={"type": "any"},
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
)
assert asked.stop_reason == "tool_use", asked
use = next(block for block in asked.content if block.type == "tool_use")
assert use.name == "get_weather" and isinstance(use.input.get("city"), str), use
with claude.messages.stream(
    model="any", max_tokens=120, tools=claude_tools, tool_choice={"type": "any"},
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
) as stream:
    streamed_use = next(block for block in stream.get_final_message().content if block.type == "tool_use")
assert streamed_use.input == use.input, (streamed_use.input, use.input)
answered = claude.messages.create(
    model="any", max_tokens=30, tools=claude_tools,
    messages=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ],
)
assert any(block.type == "text" for block in answered.content), answered
counted = claude.messages.count_tokens(model="any", messages=[{"role": "user", "content": "Name a soup."}])
assert counted.input_tokens > 3, counted
try:
    claude.messages.create(model="any", max_tokens=5, messages=[{"role": "wizard", "content": "hi"}])
    raise AssertionError("a bad role was accepted")
except anthropic.BadRequestError as error:
    assert "role" in str(error), error
try:
    anthropic.Anthropic(base_url=base_url, api_key="not-the-key", max_retries=0).messages.create(
        model="any", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    raise AssertionError("a wrong key was accepted")
except anthropic.AuthenticationError:
    pass

print("ok")
