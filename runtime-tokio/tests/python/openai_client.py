"""The official OpenAI Python client against the flightdeck gateway.

Run by runtime-tokio/tests/http_openai.rs with the gateway's base URL (in front of
the test's fake upstream) as its only argument. Exits 0 when every check holds;
raises (exit 1) otherwise.

Checks: a streamed chat completion arrives whole (content, finish reason, usage);
the same question without streaming gets the same answer (served by the same
flight or its cached result); a stream that the upstream cuts mid-way RAISES
instead of yielding a truncated answer; upstream 429 and 500 raise the client's
RateLimitError and InternalServerError (max_retries=0: no retry hides them).
"""

import sys

import openai
from openai import OpenAI

EXPECTED = "".join(f"tok{i} " for i in range(10))


def main(base_url: str) -> None:
    client = OpenAI(base_url=f"{base_url}/v1", api_key="sk-python-test", max_retries=0, timeout=30)
    messages = [{"role": "user", "content": "from python"}]

    # 1. Streaming, with usage.
    stream = client.chat.completions.create(
        model="fake",
        messages=messages,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    content, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert content == EXPECTED, f"streamed content {content!r}"
    assert finish == "stop", f"finish_reason {finish!r}"
    assert usage is not None and usage.completion_tokens == 10, f"usage {usage!r}"

    # 2. Not streaming: the same question, the same answer.
    completion = client.chat.completions.create(model="fake", messages=messages, temperature=0)
    assert completion.object == "chat.completion", completion.object
    assert completion.choices[0].message.content == EXPECTED, completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens == 15, completion.usage

    # 3. A stream cut mid-way raises: never a truncated answer taken as whole.
    received = ""
    try:
        for chunk in client.chat.completions.create(
            model="fake-cut", messages=messages, temperature=0, stream=True
        ):
            for choice in chunk.choices:
                received += choice.delta.content or ""
    except openai.APIError as error:
        assert received == "tok0 tok1 tok2 ", f"chunks before the cut: {received!r}"
        print(f"cut stream raised {type(error).__name__}: {error.message}")
    else:
        raise AssertionError(f"a cut stream ended without raising, with {received!r}")

    # 4. Errors before the first chunk are HTTP errors the client maps.
    try:
        client.chat.completions.create(model="fake-429", messages=messages, temperature=0, stream=True)
    except openai.RateLimitError as error:
        assert error.response.headers.get("retry-after") == "7", error.response.headers
    else:
        raise AssertionError("429 did not raise RateLimitError")
    try:
        client.chat.completions.create(model="fake-500", messages=messages, temperature=0)
    except openai.InternalServerError as error:
        assert error.status_code == 500
    else:
        raise AssertionError("500 did not raise InternalServerError")

    # 5. The model list is forwarded.
    models = [m.id for m in client.models.list()]
    assert models == ["fake-model"], models

    print(f"python openai {openai.__version__}: stream, non-stream, cut, 429, 500, models: OK")


if __name__ == "__main__":
    main(sys.argv[1])
