"""The official `openai` Python client against a running stove: run by tests/openai_client.rs.

Usage: python openai_client.py BASE_URL API_KEY
Any failed assertion or unexpected exception exits non-zero with a traceback.
"""
import json
import sys

import openai

base_url, api_key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)

models = client.models.list()
model = models.data[0].id
assert model, models

# Chat, whole.
answer = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Name a soup."}],
    temperature=0,
    max_tokens=16,
)
text = answer.choices[0].message.content
assert text and text.strip(), answer
assert answer.choices[0].finish_reason in ("stop", "length"), answer
assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens, answer.usage

# Chat, streamed, with usage in the last chunk: the same text as the whole answer.
pieces, usage, finish = [], None, None
for chunk in client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Name a soup."}],
    temperature=0,
    max_tokens=16,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
assert "".join(pieces) == text, ("".join(pieces), text)
assert usage and usage.completion_tokens == answer.usage.completion_tokens, usage
assert finish in ("stop", "length"), finish

# JSON-schema output: always parses and matches the schema's shape.
schema = {
    "type": "object",
    "properties": {"soup": {"type": "string"}, "minutes": {"type": "integer"}},
    "required": ["soup", "minutes"],
    "additionalProperties": False,
}
structured = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Give a soup and its cooking time in minutes, as JSON."}],
    temperature=0,
    max_tokens=100,
    response_format={"type": "json_schema", "json_schema": {"name": "soup", "schema": schema, "strict": True}},
)
data = json.loads(structured.choices[0].message.content)
assert isinstance(data["soup"], str) and isinstance(data["minutes"], int), data

# The legacy completions endpoint.
completion = client.completions.create(model=model, prompt="Soup is", max_tokens=5, temperature=0)
assert completion.choices[0].text, completion
assert completion.usage.completion_tokens == 5, completion.usage

# Embeddings, which the client asks for as base64 and decodes itself.
vectors = client.embeddings.create(model=model, input=["hot soup", "a red car"]).data
assert len(vectors) == 2 and len(vectors[0].embedding) == 576, len(vectors[0].embedding)
assert abs(sum(x * x for x in vectors[0].embedding) - 1) < 1e-3

# Errors arrive as the client's typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    raise AssertionError("an unknown model was accepted")
except openai.NotFoundError as error:
    assert "not served here" in str(error), error
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "soup " * 5000}])
    raise AssertionError("a prompt longer than the context was accepted")
except openai.BadRequestError as error:
    assert error.code == "context_length_exceeded", error
wrong_key = openai.OpenAI(base_url=base_url, api_key="not-the-key", max_retries=0)
try:
    wrong_key.models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass

print("ok")
