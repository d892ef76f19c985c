"""Drives a running Sluice server with the official OpenAI Python client.

Usage: python3 openai_client.py BASE_URL MODEL
Exits non-zero (with the failed assertion) when the server misbehaves.
"""

import sys

import openai


def main() -> None:
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)

    listed = [m.id for m in client.models.list().data]
    assert listed == [model], listed

    stream = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name a fruit."},
        ],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert pieces, "streamed chat produced text"
    assert finish in ("stop", "length"), finish
    assert usage is not None and 1 <= usage.completion_tokens <= 10, usage

    chat = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=6,
        temperature=0,
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    streamed_text = []
    for chunk in client.completions.create(
        model=model, prompt="The sky is", max_tokens=6, stream=True
    ):
        streamed_text.extend(choice.text for choice in chunk.choices)
    assert "".join(streamed_text), "streamed completion produced text"

    completion = client.completions.create(
        model=model, prompt="One, two, three,", max_tokens=4, temperature=0
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 4

    try:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    except openai.NotFoundError as err:
        assert err.body["param"] == "model", err.body
    else:
        raise AssertionError("unknown model was accepted")

    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
