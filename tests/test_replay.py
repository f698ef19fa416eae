"""Replay backends: recorded answers behind a real OpenAI-compatible server on loopback, and the
gateway routing over them deciding and paying what offline evaluation says it would."""

import json
import sqlite3
import time

import httpx
import openai
import pytest
from servers import ServerThread, gateway
from typer.testing import CliRunner

from bestroute import ConfigError, load_dataset, split_prompts
from bestroute.backends import FIRST_SAMPLE_HEADER
from bestroute.cli import app as cli
from bestroute.replay import Latency, ReplayData, create_replay_app, parse_latency
from bestroute.routers import EscalatingBestRouteRouter

PRICES = {"small": (0.1, 0.2), "tiny": (0.01, 0.02), "big": (5.0, 15.0)}


@pytest.fixture(scope="module")
def data(multisample_dir):
    return load_dataset(multisample_dir)


@pytest.fixture(scope="module")
def staged_data(multisample_dir, tmp_path_factory):
    """The hand-made data with small's samples reordered on odd prompts to 42, 7, 42, 42: there
    its first two samples disagree, so a staged option goes on to draw samples 2 and 3."""
    from conftest import read_native, write_native

    prompts, responses, models = read_native(multisample_dir)
    order = {0: 0, 1: 2, 2: 1, 3: 3}  # sample k of an odd prompt takes the answer of sample order[k]
    by_key = {(r["prompt_id"], r["model"], r["sample"]): r for r in responses}
    for r in responses:
        if r["model"] == "small" and int(r["prompt_id"][1:]) % 2:
            source = by_key[r["prompt_id"], "small", order[r["sample"]]]
            r |= {"quality": source["quality"], "response": source["response"]}
    return load_dataset(write_native(tmp_path_factory.mktemp("staged"), prompts, responses, models))


@pytest.fixture(scope="module")
def replay(data):
    server = ServerThread(create_replay_app(ReplayData(data), latencies={"big": Latency(50.0, 1.0)})).start()
    yield server
    server.stop()


def chat(url: str, model: str, prompt: str, *, headers: dict[str, str] | None = None, **body) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}]} | body
    return httpx.post(url + "/v1/chat/completions", json=payload, headers=headers, timeout=30)


def test_a_model_answers_with_its_recorded_samples_and_tokens(data, replay):
    prompt = data.texts[1]
    one = chat(replay.url, "small", prompt)
    assert one.status_code == 200
    assert one.json()["choices"][0]["message"]["content"] == data.responses[1, data.model_index("small"), 0]
    assert one.json()["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    later = chat(replay.url, "small", prompt, n=2, headers={FIRST_SAMPLE_HEADER: "2"})
    texts = [c["message"]["content"] for c in later.json()["choices"]]
    assert texts == list(data.responses[1, data.model_index("small"), 2:4])  # samples 2 and 3: "7", "9"
    assert later.json()["usage"]["completion_tokens"] == 10


@pytest.mark.parametrize(
    ("model", "prompt", "extra", "code"),
    [
        ("gpt-9", None, {}, "model_not_found"),
        ("small", "a prompt nobody recorded", {}, "not_recorded"),
        ("big", None, {"n": 3}, "not_recorded"),  # big has two recorded samples
    ],
)
def test_nothing_is_made_up(data, replay, model, prompt, extra, code):
    answer = chat(replay.url, model, prompt or data.texts[0], **extra)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == code, answer.text


@pytest.mark.parametrize(
    "body", [b"not json", b"[1]", b'{"model": "small"}', b'{"model": "small", "messages": [], "n": "2"}']
)
def test_bad_requests_are_400(replay, body):
    answer = httpx.post(replay.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400 and "error" in answer.json()


def test_a_recorded_answer_streams_and_takes_its_configured_time(data, replay):
    client = openai.OpenAI(base_url=replay.url + "/v1", api_key="unused", max_retries=0)
    tic = time.perf_counter()
    chunks = list(
        client.chat.completions.create(model="big", messages=[{"role": "user", "content": data.texts[0]}], stream=True)
    )
    elapsed = time.perf_counter() - tic
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "The answer is 42"
    assert chunks[-1].usage.completion_tokens == 20
    assert elapsed >= 0.05 + 20 * 0.001  # 50 ms plus 1 ms per output token, as configured


def test_latency_specs_are_parsed_or_refused():
    assert parse_latency(["200", "gpt-4o=300+0.02"]) == (Latency(200.0), {"gpt-4o": Latency(300.0, 0.02)})
    with pytest.raises(ConfigError, match="is not \\[MODEL=\\]BASE_MS"):
        parse_latency(["fast"])
    result = CliRunner().invoke(cli, ["replay", "serve", "--data", "nowhere", "--latency", "fast"])
    assert result.exit_code == 2 and result.output.startswith("error: ") and result.output.count("\n") == 1


def test_the_gateway_over_replay_backends_decides_and_pays_as_offline(staged_data, tmp_path):
    """Every test prompt, at four knobs: the option the gateway takes, the answer it returns and
    what it pays are the offline evaluation's. The staged option goes on to its second stage on
    odd prompts, whose call asks the replay backend for samples 2 and 3, as offline; with
    calibrated options, a calibrated one is served, also as offline."""
    data = staged_data
    server = ServerThread(create_replay_app(ReplayData(data))).start()
    try:
        _served_as_offline(data, server.url, tmp_path, calibrate=False)
        _served_as_offline(data, server.url, tmp_path, calibrate=True)
    finally:
        server.stop()


def _served_as_offline(data, replay_url, tmp_path, *, calibrate: bool):
    split = split_prompts(data.prompt_ids)
    router = EscalatingBestRouteRouter(features="lexical", max_n=4, prune_dominated=False, calibrate=calibrate).fit(
        data, split.train, split.val
    )
    tmp_path = tmp_path / f"calibrate-{calibrate}"
    tmp_path.mkdir()
    artifact = tmp_path / "router.bestroute"
    router.save(artifact)
    backends = {
        m: {"base_url": replay_url, "supports_n": True, "max_n": 4, "input_usd_per_mtok": i, "output_usd_per_mtok": o}
        for m, (i, o) in PRICES.items()
    }
    chosen, stages = set(), set()
    with gateway(tmp_path, artifact, backends, selector={"kind": router.selector}) as (server, _):
        for knob in (0.5, 0.9, 0.99, 1.0):  # tiny; small x2; a staged option; the reference
            assessed = router.assess([data.texts[i] for i in split.test])  # the domain guard's flags too
            decisions = router.decide(assessed, knob)
            for i, o in zip(split.test, decisions, strict=True):
                option = router.options_[int(o)]
                answer = chat(server.url, f"bestroute:{knob}", data.texts[i])
                assert answer.status_code == 200, answer.text
                details = answer.json()["bestroute"]
                assert details["option"] == option.label
                assert details["cost_usd"] == pytest.approx(router.outcomes_.cost[i, o], rel=1e-9)
                kept = answer.json()["choices"][0]["message"]["content"]
                offline_quality = router.outcomes_.quality[i, o]
                assert {
                    data.quality[i, j, k]
                    for j in range(len(data.models))
                    for k in range(4)
                    if data.responses[i, j, k] == kept
                } == {offline_quality}
                chosen.add(option.label)
                stages.add(len((details["escalation"] or {"stages": [1]})["stages"]))
    if calibrate:  # a calibrated pair takes the staged option's place, decided as offline
        assert any(" p>=" in label for label in chosen), chosen
        return
    assert len(chosen) == 4 and any(" else " in label for label in chosen), chosen  # a staged option served
    assert max(stages) >= 2, stages  # and it went on to its second stage
    with sqlite3.connect(tmp_path / "decisions.db") as db:
        later = db.execute("SELECT responses FROM calls WHERE stage = 1 AND model = 'small'").fetchall()
    odd = data.responses[1, data.model_index("small")]
    assert later and {tuple(json.loads(r[0])) for r in later} == {tuple(odd[2:4])}  # samples 2 and 3, not 0 and 1


def test_the_example_gateway_config_serves_the_slice_as_written(tmp_path):
    """examples/replay-gateway.yaml, as the README runs it (only the replay port is this test's)."""
    from pathlib import Path

    import yaml

    from bestroute.data import zeroeval_slice_path
    from bestroute.routers import BestRouteRouter
    from bestroute.serving import create_app, load_config

    slice_data = load_dataset(zeroeval_slice_path())
    split = split_prompts(slice_data.prompt_ids)
    BestRouteRouter(features="lexical").fit(slice_data, split.train, split.val).save(tmp_path / "router.bestroute")
    example = Path(__file__).resolve().parents[1] / "examples" / "replay-gateway.yaml"
    replay = ServerThread(create_replay_app(ReplayData(slice_data))).start()
    try:
        config = example.read_text().replace("http://127.0.0.1:8200/v1", replay.url + "/v1")
        (tmp_path / "replay-gateway.yaml").write_text(config)
        assert {b["name"] for b in yaml.safe_load(config)["backends"]} == set(slice_data.models)
        server = ServerThread(create_app(load_config(tmp_path / "replay-gateway.yaml"))).start()
        try:
            for i in split.test[:5]:
                answer = chat(server.url, "bestroute", slice_data.texts[i])
                assert answer.status_code == 200, answer.text
                j = slice_data.model_index(answer.json()["model"])
                assert answer.json()["choices"][0]["message"]["content"] == slice_data.responses[i, j, 0]
        finally:
            server.stop()
    finally:
        replay.stop()
    assert (tmp_path / "replay-decisions.db").exists()  # the log is where the example says, beside it


def test_the_openai_client_gets_recorded_answers_concurrently_and_clear_404s(data, replay):
    from concurrent.futures import ThreadPoolExecutor

    client = openai.OpenAI(base_url=replay.url + "/v1", api_key="unused", max_retries=0)
    small = data.model_index("small")

    def ask(i: int) -> tuple[int, list[str], int]:
        reply = client.chat.completions.create(
            model="small", messages=[{"role": "user", "content": data.texts[i]}], n=2
        )
        return i, [c.message.content for c in reply.choices], reply.usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(32)))
    for i, texts, tokens in answers:  # each of 32 concurrent requests got its own prompt's samples 0 and 1
        assert texts == list(data.responses[i, small, :2]) and tokens == 10
    assert [m.id for m in client.models.list()] == data.models
    with pytest.raises(openai.NotFoundError, match="not in the replayed data"):
        client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": data.texts[0]}])
    with pytest.raises(openai.NotFoundError, match="no recorded answer"):
        client.chat.completions.create(model="small", messages=[{"role": "user", "content": "never recorded"}])
