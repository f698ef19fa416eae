"""The gateway as a drop-in: function calling, pass-through fields and whole upstream messages,
with the official openai client against real servers on loopback."""

import base64
import json

from servers import Script, gateway, upstream

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_function_calling_end_to_end_routed_and_direct(tmp_path, artifact):
    small = Script(answers=['{"city": "Paris"}'])
    with (
        upstream(small) as s,
        upstream(Script(answers=["big"])) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (_, client),
    ):
        for model in ("bestroute:0", "small"):
            first = client.chat.completions.create(model=model, messages=QUESTION, tools=TOOLS, tool_choice="auto")
            choice = first.choices[0]
            assert choice.finish_reason == "tool_calls" and choice.message.content is None
            call = choice.message.tool_calls[0]
            assert call.id == "call_0" and call.type == "function" and call.function.name == "get_weather"
            assert json.loads(call.function.arguments) == {"city": "Paris"}
            assert first.system_fingerprint == "fp-fake" and first.model == "small"
            assert small.bodies[-1]["tools"] == TOOLS and small.bodies[-1]["tool_choice"] == "auto"
            # The client runs the tool and sends the result back, as the openai docs show.
            follow = [
                *QUESTION,
                choice.message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
            ]
            final = client.chat.completions.create(model=model, messages=follow, tools=TOOLS)
            assert final.choices[0].message.content == "The tool says: sunny, 21 C"
            sent = small.bodies[-1]["messages"]
            assert sent[-1] == {"role": "tool", "tool_call_id": "call_0", "content": "sunny, 21 C"}
            assert sent[-2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def test_streamed_tool_calls_are_relayed_as_received(tmp_path, artifact):
    small = Script(answers=['{"city": "Paris", "unit": "C"}'])
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (_, client),
    ):
        chunks = list(
            client.chat.completions.create(
                model="bestroute:0", messages=QUESTION, tools=TOOLS, stream=True, stream_options={"include_usage": True}
            )
        )
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert deltas[0].tool_calls[0].function.name == "get_weather" and deltas[0].tool_calls[0].id == "call_0"
        arguments = "".join(d.tool_calls[0].function.arguments or "" for d in deltas if d.tool_calls)
        assert arguments == '{"city": "Paris", "unit": "C"}'
        assert len([d for d in deltas if d.tool_calls]) > 3  # piece by piece, not rebuilt
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
        assert chunks[-1].usage.completion_tokens > 0
        assert small.bodies[-1]["stream_options"] == {"include_usage": True}


def test_best_of_n_picks_the_tool_call_the_samples_agree_on(tmp_path, artifact):
    # Three samples: two make the same call (key order and spacing differ), one another.
    small = Script(answers=['{"city": "Lyon"}', '{"city":"Paris","unit":"C"}', '{"unit": "C", "city": "Paris"}'])
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (_, client),
    ):
        best = client.chat.completions.create(model="bestroute:0.95", messages=QUESTION, tools=TOOLS)
        assert best.model_extra["bestroute"]["n"] == 3 and best.model_extra["bestroute"]["selected_sample"] in (1, 2)
        assert json.loads(best.choices[0].message.tool_calls[0].function.arguments) == {"city": "Paris", "unit": "C"}
        assert best.choices[0].finish_reason == "tool_calls"
        chunks = list(
            client.chat.completions.create(model="bestroute:0.95", messages=QUESTION, tools=TOOLS, stream=True)
        )  # drawn, selected, then streamed
        calls = [d.tool_calls for c in chunks if c.choices for d in [c.choices[0].delta] if d.tool_calls]
        assert calls[0][0].index == 0 and calls[0][0].function.name == "get_weather"
        assert json.loads(calls[0][0].function.arguments) == {"city": "Paris", "unit": "C"}


def test_other_openai_parameters_and_fields_pass_through(tmp_path, artifact):
    small = Script(answers=['{"answer": 42}'])
    image = "data:image/png;base64," + base64.b64encode(b"\x89PNG fake").decode()
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in the picture?"},
                {"type": "image_url", "image_url": {"url": image}},
            ],
        }
    ]
    schema = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}
    with (
        upstream(small) as s,
        upstream(Script()) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (_, client),
    ):
        answer = client.chat.completions.create(
            model="bestroute:0",
            messages=messages,
            response_format=schema,
            logprobs=True,
            top_logprobs=2,
            seed=7,
            user="u-1",
            extra_body={"metadata": {"team": "x"}},
        )
        sent = small.bodies[-1]
        assert sent["messages"] == messages and sent["response_format"] == schema
        assert sent["logprobs"] is True and sent["top_logprobs"] == 2 and sent["seed"] == 7
        assert sent["user"] == "u-1" and sent["metadata"] == {"team": "x"}
        assert answer.choices[0].logprobs.content[0].logprob == -0.5  # the upstream's, kept
        assert answer.choices[0].message.refusal is None and "refusal" in answer.choices[0].message.model_fields_set
        assert answer.system_fingerprint == "fp-fake"
