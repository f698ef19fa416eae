"""Prompt strategies (issue 21, item 3): strategies shape requests and finish replies, the
program-of-thought sandbox refuses what a program must not do, arms (backend@strategy) are
collected, learned and served, and the gateway decides over them as offline evaluation does.
Real subprocesses, real upstream servers on loopback, a real replay backend."""

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import write_native
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from servers import Script, ServerThread, gateway, upstream, write_gateway_config

from bestroute import ConfigError, load_dataset, split_prompts
from bestroute.data import arm_parts
from bestroute.replay import ReplayData, create_replay_app
from bestroute.routers import BestRouteRouter, EscalatingBestRouteRouter
from bestroute.serving import create_app, load_config
from bestroute.strategies import SandboxLimits, Strategy, program_text, run_program

FAST = SandboxLimits(cpu_s=1, wall_s=3.0, memory_mb=128, output_chars=1000)
COT = Strategy(
    name="cot",
    system="You are careful.",
    template="Think step by step, then answer.\n\n{prompt}",
    temperature=0.3,
    max_tokens=300,
)
POT = Strategy(name="pot", template="Write Python that prints the answer.\n\n{prompt}", program=True, sandbox=FAST)


def run(source: str, limits: SandboxLimits = FAST):
    return asyncio.run(run_program(source, limits))


# ------------------------------------------------------------------ the sandbox


def test_a_program_prints_its_answer_with_the_standard_library():
    result = run(
        "from datetime import date, timedelta\nfrom fractions import Fraction\nimport collections, statistics\n"
        "print(date(2014, 12, 20) + timedelta(days=1), Fraction(3, 4) + Fraction(1, 4))"
    )
    assert result.ok and result.output == "2014-12-21 1"


def test_the_sandbox_refuses_network_access_to_a_real_server(tmp_path):
    hits: list[str] = []
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        hits.append("hit")
        return {"ok": "yes"}

    server = ServerThread(app).start()
    try:
        assert httpx.get(server.url).status_code == 200  # it is reachable from outside the sandbox
        for program in (
            f"import urllib.request\nprint(urllib.request.urlopen({server.url!r}).read())",
            f"import socket\ns = socket.create_connection(('127.0.0.1', {server.url.rsplit(':', 1)[1]}))",
            "import _socket\nprint(_socket.socket())",
            "import http.client\nprint(http.client.HTTPConnection('127.0.0.1'))",
        ):
            result = run(program)
            assert not result.ok and "refused" in (result.error or ""), (program, result)
    finally:
        server.stop()
    assert hits == ["hit"]  # only the check from outside arrived


def test_the_sandbox_refuses_writing_deleting_and_renaming_files(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("kept")
    target = tmp_path / "new.txt"
    programs = {
        f"open({str(target)!r}, 'w').write('x')": "writing a file",
        f"open({str(victim)!r}, 'a').write('x')": "writing a file",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')": "writing a file",
        f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)": "writing a file",
        f"import os\nos.remove({str(victim)!r})": "deleting a file",
        f"import os\nos.rename({str(victim)!r}, {str(target)!r})": "renaming a file",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})": "changing files",
        "import os\nos.system('touch /tmp/bestroute-sandbox-escape')": "starting a process",
        "import subprocess": "importing subprocess",
        "import ctypes": "importing ctypes",
        "import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))": "changing its limits",
    }
    for program, refusal in programs.items():
        result = run(program)
        assert result.error is not None and refusal in result.error, (program, result)
    assert victim.read_text() == "kept" and not target.exists()
    assert not Path("/tmp/bestroute-sandbox-escape").exists()
    reading = run(f"print(open({str(victim)!r}).read())")
    assert reading.ok and reading.output == "kept"  # reading stays allowed


def test_runaway_programs_are_stopped_with_a_clear_reason():
    assert run("while True: pass").error == "the program used more than 1 s of CPU"
    assert run("import time\ntime.sleep(60)").error == "the program ran over its 3 s time limit"
    assert run("x = [0] * (10 ** 9)").error == "the program used more than 128 MB of memory"
    assert run("while True: print('x' * 100)").error == "the program printed more than 1000 characters"
    assert run("x = 1").error == "the program printed nothing"
    assert run("print(1 / 0)").error == "the program failed: ZeroDivisionError: division by zero"
    assert run("def f(): return f()\nf()").error.startswith("the program failed: RecursionError")


def test_the_program_is_the_last_fenced_block_of_the_reply():
    reply = "First try:\n```python\nprint(1)\n```\nBetter:\n```py\nprint(6 * 7)\n```\nDone."
    assert program_text(reply) == "print(6 * 7)\n"
    assert program_text("print(2)") == "print(2)"
    assert program_text("Here:\n```python\nprint(7)\n") == "print(7)\n"  # cut off by the token limit
    finished = asyncio.run(POT.finish(reply))
    assert finished.startswith(reply.rstrip()) and finished.endswith("\n\nAnswer: 42")
    failed = asyncio.run(POT.finish("```python\nwhile True: pass\n```"))
    assert failed.endswith("(no answer: the program used more than 1 s of CPU)")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_any_reply_as_a_program_never_raises(reply):
    result = run(program_text(reply), SandboxLimits(cpu_s=1, wall_s=3.0, memory_mb=128, output_chars=200))
    assert result.ok == (result.error is None) and (result.ok or result.error.strip())


# ------------------------------------------------------------------ shaping


def test_a_strategy_shapes_the_last_user_message_system_prompt_and_sampling_fields():
    body = {
        "model": "m",
        "temperature": 1.0,
        "messages": [
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "ok"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is {blueprint} 6 x 7?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
        ],
    }
    shaped = COT.shape(body)
    assert shaped["temperature"] == 0.3 and shaped["max_tokens"] == 300 and shaped["model"] == "m"
    assert shaped["messages"][0] == {"role": "system", "content": "You are careful."}
    assert shaped["messages"][1] == {"role": "user", "content": "earlier"}  # only the last user turn
    last = shaped["messages"][-1]["content"]
    assert last[0] == {"type": "text", "text": "Think step by step, then answer.\n\nWhat is {blueprint} 6 x 7?"}
    assert last[1]["type"] == "image_url"  # the image stays
    assert body["messages"][-1]["content"][0]["text"] == "What is {blueprint} 6 x 7?"  # the request is not changed
    guided = Strategy(name="guided", system="Guide: {blueprint}", blueprint="Add units.", template="{prompt}")
    assert (
        guided.shape({"messages": [{"role": "user", "content": "q"}]})["messages"][0]["content"] == "Guide: Add units."
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "x", "template": "no placeholder"}, "needs the {prompt} placeholder"),
        ({"name": "bad name!"}, "String should match pattern"),
        ({"name": "x", "blueprint": "b"}, "needs the {blueprint} placeholder"),
        ({"name": "x", "template": "{blueprint} {prompt}"}, "has no blueprint"),
        ({"name": "x", "reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"name": "x", "answer_type": "number"}, "Extra inputs are not permitted"),
        ({"name": "x", "sandbox": {"wall_s": 0}}, "sandbox.wall_s"),
    ],
)
def test_bad_strategies_are_refused_with_the_field_named(fields, message):
    with pytest.raises(ValidationError, match=message.replace("{", "\\{").replace("}", "\\}")):
        Strategy.model_validate(fields)


# ------------------------------------------------------------------ data over arms


def _strategy_data(directory: Path) -> Path:
    """Prompts of two kinds: "sum" prompts, which small gets right only step by step (small@cot),
    and "name" prompts, which it gets right as asked; big (the reference) is right on both."""
    prompts, responses = [], []
    for i in range(80):
        kind = "sum" if i % 2 else "name"
        text = f"What is {i} plus {i}? (sum {i})" if kind == "sum" else f"Name a colour, case {i}."
        prompts.append({"prompt_id": f"p{i}", "prompt": text, "reference": "x"})
        plain_right, cot_right = (0.0, 1.0) if kind == "sum" else (1.0, 0.0)
        for sample in range(2):
            for strategy, right in ((None, plain_right), ("cot", cot_right)):
                responses.append(
                    {
                        "prompt_id": f"p{i}",
                        "model": "small",
                        "sample": sample,
                        "quality": right,
                        "input_tokens": 10 if strategy is None else 30,
                        "output_tokens": 5 if strategy is None else 40,
                        "response": f"Answer: {'right' if right else 'wrong'} {strategy or 'plain'} {sample}",
                    }
                    | ({"strategy": strategy} if strategy else {})
                )
        responses.append(
            {
                "prompt_id": f"p{i}",
                "model": "big",
                "quality": 1.0,
                "input_tokens": 10,
                "output_tokens": 20,
                "response": "Answer: right big",
            }
        )
    models = {
        "small": {"input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2},
        "big": {"input_usd_per_mtok": 5.0, "output_usd_per_mtok": 15.0},
    }
    return write_native(directory, prompts, responses, models)


def test_responses_with_a_strategy_are_arms_of_their_own(tmp_path):
    data = load_dataset(_strategy_data(tmp_path / "data"))
    assert data.models == ["big", "small", "small@cot"]
    assert data.prices["small@cot"] == data.prices["small"]
    assert arm_parts("small@cot") == ("small", "cot") and arm_parts("big") == ("big", None)
    j = data.model_index("small@cot")
    assert data.quality[1, j, 0] == 1.0 and data.input_tokens[1, j] == 30


def test_a_model_name_with_the_separator_is_a_data_error(tmp_path):
    directory = write_native(
        tmp_path / "bad",
        [{"prompt_id": "p", "prompt": "q"}],
        [{"prompt_id": "p", "model": "a@b", "quality": 1, "input_tokens": 1, "output_tokens": 1}],
        {"a@b": {"input_usd_per_mtok": 1, "output_usd_per_mtok": 1}},
    )
    with pytest.raises(Exception, match="a model name has no '@'"):
        load_dataset(directory)


def test_the_router_learns_which_strategy_each_kind_of_prompt_needs(tmp_path):
    """The toy data's point: only the strategy axis makes small right on both kinds."""
    data = load_dataset(_strategy_data(tmp_path / "data"))
    split = split_prompts(data.prompt_ids)
    router = BestRouteRouter(features="lexical", max_n=1).fit(data, split.train, split.val)
    decisions = router.decide(router.assess([data.texts[i] for i in split.test], guard=False), 0.6)
    chosen: dict[str, set[str]] = {}
    for i, o in zip(split.test, decisions, strict=True):
        chosen.setdefault(data.texts[i].split(" ")[0], set()).add(router.options_[int(o)].model)
    assert chosen == {"What": {"small@cot"}, "Name": {"small"}}  # each kind its own strategy, never the reference


# ------------------------------------------------------------------ the gateway


def _strategy_config(tmp_path: Path, artifact: Path, backends: dict, strategies: list[Strategy]) -> Path:
    return write_gateway_config(
        tmp_path,
        artifact,
        backends,
        strategies=[json.loads(s.model_dump_json(exclude_defaults=True)) for s in strategies],
    )


def test_each_call_carries_its_strategys_template_and_parameters(tmp_path):
    data = load_dataset(_strategy_data(tmp_path / "data"))
    split = split_prompts(data.prompt_ids)
    artifact = tmp_path / "router.bestroute"
    BestRouteRouter(features="lexical", max_n=1).fit(data, split.train, split.val).save(artifact)
    small, big = Script(answers=["```python\nprint(6 * 7)\n```"]), Script(answers=["big"])
    with upstream(small) as s, upstream(big) as b:
        path = _strategy_config(tmp_path, artifact, {"small": s.url, "big": b.url}, [COT, POT])
        server = ServerThread(create_app(load_config(path), config_path=path)).start()
        try:
            url = server.url + "/v1/chat/completions"
            question = {"messages": [{"role": "user", "content": "What is 6 x 7?"}], "temperature": 1.5}
            cot = httpx.post(url, json={"model": "small@cot"} | question).json()
            sent = small.bodies[-1]
            assert sent["messages"] == [
                {"role": "system", "content": "You are careful."},
                {"role": "user", "content": "Think step by step, then answer.\n\nWhat is 6 x 7?"},
            ]
            assert sent["temperature"] == 0.3 and sent["max_tokens"] == 300 and sent["model"] == "small"
            assert cot["model"] == "small@cot" and cot["bestroute"]["option"] == "small@cot"
            pot = httpx.post(url, json={"model": "small@pot"} | question).json()
            assert small.bodies[-1]["messages"][-1]["content"].startswith("Write Python that prints the answer.")
            assert small.bodies[-1]["temperature"] == 1.5  # the strategy sets none: the request's stays
            assert pot["choices"][0]["message"]["content"].endswith("\n\nAnswer: 42")
            streamed = httpx.post(url, json={"model": "small@pot", "stream": True} | question).text
            assert "Answer: 42" in streamed  # run, then streamed
            relayed = httpx.post(url, json={"model": "small@cot", "stream": True} | question).text
            assert small.bodies[-1]["stream"] is True and small.bodies[-1]["max_tokens"] == 300  # relayed
            assert '"model":"small@cot"' in relayed
            plain = httpx.post(url, json={"model": "small"} | question).json()
            assert small.bodies[-1]["messages"] == question["messages"] and plain["model"] == "small"
            small.answers = ["```python\nwhile True: pass\n```"]
            loop = httpx.post(url, json={"model": "small@pot"} | question)
            assert loop.status_code == 200  # a program that never halts is an answer that agrees with nothing
            assert loop.json()["choices"][0]["message"]["content"].endswith(
                "(no answer: the program used more than 1 s of CPU)"
            )
            unknown = httpx.post(url, json={"model": "small@nope"} | question)
            assert unknown.status_code == 404 and "backend@strategy" in unknown.json()["error"]["message"]
        finally:
            server.stop()


def test_a_router_that_needs_an_undefined_strategy_does_not_start(tmp_path):
    data = load_dataset(_strategy_data(tmp_path / "data"))
    split = split_prompts(data.prompt_ids)
    artifact = tmp_path / "router.bestroute"
    router = BestRouteRouter(features="lexical", max_n=1, prune_dominated=False).fit(data, split.train, split.val)
    router.save(artifact)
    path = _strategy_config(tmp_path, artifact, {"small": "http://127.0.0.1:9", "big": "http://127.0.0.1:9"}, [POT])
    with pytest.raises(ConfigError, match="needs strategy 'cot', which the configuration does not define"):
        create_app(load_config(path), config_path=path)
    for strategies, message in (
        ([{"name": "cot"}, {"name": "cot"}], "duplicate strategy names: cot"),
        ([{"name": "cot", "template": "none"}], "strategies.0.template"),
    ):
        config = yaml.safe_load(path.read_text()) | {"strategies": strategies}
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(ConfigError, match=message):
            load_config(path)
    config = yaml.safe_load(path.read_text())
    config["strategies"], config["backends"][0]["name"] = [], "sm@ll"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="has '@', which names a strategy"):
        load_config(path)


def test_the_gateway_decides_over_arms_as_offline_evaluation_does(tmp_path):
    """A replay backend answers each arm's calls with its recorded samples (it indexes every prompt
    as each strategy sends it); on every test prompt, at several knobs, the gateway takes the
    option offline evaluation takes and pays what it paid."""
    data = load_dataset(_strategy_data(tmp_path / "data"))
    split = split_prompts(data.prompt_ids)
    router = EscalatingBestRouteRouter(features="lexical", max_n=2, prune_dominated=False).fit(
        data, split.train, split.val
    )
    artifact = tmp_path / "router.bestroute"
    router.save(artifact)
    replay = ServerThread(create_replay_app(ReplayData(data, [COT]))).start()
    try:
        backends = {
            m: {
                "base_url": replay.url,
                "supports_n": True,
                "max_n": 4,
                "input_usd_per_mtok": i,
                "output_usd_per_mtok": o,
            }
            for m, (i, o) in {"small": (0.1, 0.2), "big": (5.0, 15.0)}.items()
        }
        chosen = set()
        with gateway(tmp_path, artifact, backends, strategies=[json.loads(COT.model_dump_json())]) as (server, _):
            for knob in (0.0, 0.5, 0.9, 1.0):
                assessed = router.assess([data.texts[i] for i in split.test])  # the domain guard's flags too
                decisions = router.decide(assessed, knob)
                for i, o in zip(split.test, decisions, strict=True):
                    option = router.options_[int(o)]
                    body = {"model": f"bestroute:{knob}", "messages": [{"role": "user", "content": data.texts[i]}]}
                    answer = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
                    assert answer.status_code == 200, answer.text
                    details = answer.json()["bestroute"]
                    assert details["option"] == option.label
                    assert details["cost_usd"] == pytest.approx(router.outcomes_.cost[i, o], rel=1e-9)
                    chosen.add(option.label)
    finally:
        replay.stop()
    assert any("small@cot" in label for label in chosen) and any(label == "small" for label in chosen), chosen


# ------------------------------------------------------------------ collection


def _backend_config(path: Path, name: str, url: str, strategies: list[Strategy] | None = None) -> Path:
    """A configuration of one backend (and strategies) for collect and blueprint."""
    backend = {"name": name, "base_url": url + "/v1", "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}
    config = {"backends": [backend], "strategies": [json.loads(s.model_dump_json()) for s in strategies or []]}
    path.write_text(yaml.safe_dump(config))
    return path


def test_collect_samples_every_model_under_every_strategy_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from bestroute.cli import app as cli

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"What is {i} x 7?", "reference": str(7 * i)}) + "\n" for i in range(3))
    )
    a = Script(answers=["```python\nprint(7 * 2)\n```"])
    with upstream(a) as s:
        path = _backend_config(tmp_path / "c.yaml", "a", s.url, [COT, POT])
        args = [
            "collect",
            "--prompts",
            str(prompts),
            "--config",
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--samples",
            "2",
        ]
        done = CliRunner().invoke(cli, [*args, "--strategy", "cot", "--strategy", "pot"])
        assert done.exit_code == 0, done.output
        assert "12 samples written" in done.output
        again = CliRunner().invoke(cli, [*args, "--strategy", "cot", "--strategy", "pot"])
        assert "0 samples written, 12 already there" in again.output
        unknown = CliRunner().invoke(cli, [*args, "--strategy", "tot"])
        assert unknown.exit_code == 2 and "unknown strategy 'tot'; the configuration defines cot, pot" in unknown.output
    cot_bodies = [b for b in a.bodies if b["messages"][0]["role"] == "system"]
    assert len(cot_bodies) == 6 and all(b["temperature"] == 0.3 for b in cot_bodies)
    data = load_dataset(tmp_path / "out")
    assert data.models == ["a@cot", "a@pot"]
    pot = data.model_index("a@pot")
    assert all(str(t).endswith("Answer: 14") for t in data.responses[:, pot, :].ravel())
    # the program printed 14: right for "What is 2 x 7?" only, judged on the finished text
    assert [data.quality[i, pot, 0] for i in range(3)] == [1.0 if data.references[i] == "14" else 0.0 for i in range(3)]


def test_a_large_model_writes_a_blueprint_once_and_it_guides_every_prompt(tmp_path):
    from typer.testing import CliRunner

    from bestroute.cli import app as cli

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps({"prompt": f"What is {i} x 7?", "task": "times" if i < 8 else "other"}) + "\n" for i in range(10)
        )
    )
    guide = "1. Multiply the two numbers.\n2. Give the product alone after 'Answer:'."
    big = Script(answers=[guide])
    with upstream(big) as b:
        path = _backend_config(tmp_path / "c.yaml", "big", b.url)
        base = ["blueprint", "--config", str(path), "--prompts", str(prompts), "--name", "times-guide"]
        done = CliRunner().invoke(cli, [*base, "--backend", "big", "--task", "times", "--examples", "3"])
        assert done.exit_code == 0, done.output
        assert len(big.bodies) == 1 and big.bodies[0]["temperature"] == 0.0
        asked = big.bodies[0]["messages"][0]["content"]
        assert "Example 3:\nWhat is 2 x 7?" in asked and "Example 4" not in asked
        (entry,) = yaml.safe_load(done.output)
        strategy = Strategy.model_validate(entry)
        assert strategy.name == "times-guide" and strategy.blueprint == guide
        shaped = strategy.shape({"messages": [{"role": "user", "content": "What is 9 x 7?"}]})
        assert shaped["messages"][-1]["content"] == f"{guide}\n\nWhat is 9 x 7?"
        for args, message in (
            (["--backend", "huge"], "--backend: 'huge' is not a configured backend"),
            (["--backend", "big", "--template", "no guide {prompt}"], "--template: "),
            (["--backend", "big", "--task", "none"], "no example prompts"),
        ):
            bad = CliRunner().invoke(cli, [*base, *args])
            assert bad.exit_code == 2 and bad.output.startswith("error: ") and message in bad.output, bad.output
            assert bad.output.count("\n") == 1


def test_logged_traffic_of_an_arm_exports_as_that_arm(tmp_path):
    from bestroute.serving import export_log

    data = load_dataset(_strategy_data(tmp_path / "data"))
    split = split_prompts(data.prompt_ids)
    artifact = tmp_path / "router.bestroute"
    BestRouteRouter(features="lexical", max_n=1).fit(data, split.train, split.val).save(artifact)
    with upstream(Script(answers=["Answer: 12"])) as s, upstream(Script()) as b:
        path = _strategy_config(tmp_path, artifact, {"small": s.url, "big": b.url}, [COT])
        server = ServerThread(create_app(load_config(path), config_path=path)).start()
        try:
            body = {"model": "small@cot", "messages": [{"role": "user", "content": "What is 6 plus 6?"}]}
            answer = httpx.post(server.url + "/v1/chat/completions", json=body).json()
            assert httpx.post(server.url + "/v1/feedback", json={"id": answer["id"], "quality": 1.0}).status_code == 200
        finally:
            server.stop()
    export_log(load_config(path), tmp_path / "exported")
    exported = load_dataset(tmp_path / "exported")
    assert exported.models == ["small@cot"] and exported.quality[0, 0, 0] == 1.0
