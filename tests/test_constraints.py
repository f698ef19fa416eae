"""User constraints per request (issue 24, item 6): allowed and excluded models, a largest
expected cost or latency and a smallest predicted quality, from the body's ``bestroute`` field or
x-bestroute-* headers. The decision honours them, the response says which constraint ruled out
the router's own choice, and bad values are one clear error. Real upstream servers and gateway."""

import re

import httpx
import pytest
from servers import Script, gateway, upstream

from bestroute.routers import load_router


def _chat(model: str = "bestroute:0", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "What is 2 plus 2?"}], **extra}


@pytest.fixture
def served(tmp_path, artifact):
    """A gateway over small (fast) and big (0.3 s a call), with the test artifact; and both scripts."""
    small, big = Script(answers=["4"]), Script(answers=["4"], delay_s=0.3)
    with (
        upstream(small) as s,
        upstream(big) as b,
        gateway(tmp_path, artifact, {"small": s.url, "big": b.url}) as (server, _),
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        yield client, small, big


def _post(client: httpx.Client, body: dict, **headers: str) -> httpx.Response:
    return client.post("/v1/chat/completions", json=body, headers=headers)


def test_model_lists_from_headers_and_body_decide_and_say_so(served):
    client, small, big = served
    plain = _post(client, _chat())
    assert plain.headers["x-bestroute-model"] == "small" and "x-bestroute-constraint" not in plain.headers
    seen = len(small.bodies)
    kept_out = _post(client, _chat(), **{"x-bestroute-excluded-models": "small"})
    assert kept_out.status_code == 200 and kept_out.headers["x-bestroute-model"] == "big"
    assert kept_out.headers["x-bestroute-constraint"] == "excluded_models" and len(small.bodies) == seen
    details = kept_out.json()["bestroute"]
    assert details["constraint"] == "excluded_models"
    assert {label for label, why in details["excluded"].items() if why == "excluded_models"} == {
        label for label in details["scores"] if label.startswith("small")
    }
    # the router's choice at 1.0 is the reference; only small allowed: small answers
    only_small = _post(client, _chat("bestroute:1.0", bestroute={"allowed_models": ["small"]}))
    assert only_small.headers["x-bestroute-model"] == "small"
    assert only_small.json()["bestroute"]["constraint"] == "allowed_models"
    assert all("bestroute" not in body for body in small.bodies + big.bodies)  # the gateway's own field
    named = _post(client, _chat("small"), **{"x-bestroute-excluded-models": "small,big"})
    assert named.status_code == 400 and named.json()["error"]["code"] == "constraints_unmet"
    nothing = _post(client, _chat(), **{"x-bestroute-allowed-models": "big", "x-bestroute-excluded-models": "big"})
    assert nothing.status_code == 400 and nothing.json()["error"]["code"] == "constraints_unmet"
    assert "no option meets the request's constraints" in nothing.json()["error"]["message"]


def test_cost_quality_and_latency_limits_rule_options_out(served, artifact):
    client, _, _ = served
    router = load_router(artifact)
    cost = {o.label: float(c) for o, c in zip(router.options_, router.option_cost_, strict=True)}
    # at 1.0 the router takes the reference, big; a limit below big's expected cost rules it out
    cheap = _post(client, _chat("bestroute:1.0"), **{"x-bestroute-max-cost-usd": f"{cost['small x2'] * 1.01}"})
    assert cheap.headers["x-bestroute-model"] == "small" and cheap.headers["x-bestroute-constraint"] == "max_cost_usd"
    assert all(cost[label] > cost["small x2"] * 1.01 for label, why in cheap.json()["bestroute"]["excluded"].items())
    broke = _post(client, _chat(), **{"x-bestroute-max-cost-usd": f"{min(cost.values()) / 2}"})
    assert broke.status_code == 400 and broke.json()["error"]["code"] == "constraints_unmet"
    # at 0 the router takes small (predicted below 0.99): a smallest quality moves it to an option above
    scores = _post(client, _chat()).json()["bestroute"]["scores"]
    assert scores["small"] < 0.99
    careful = _post(client, _chat(bestroute={"min_quality": 0.99}))
    details = careful.json()["bestroute"]
    assert details["constraint"] == "min_quality" and details["scores"][details["option"]] >= 0.99
    # latency is learnt from the backends' calls: big takes 0.3 s
    assert _post(client, _chat("big")).status_code == 200 and _post(client, _chat("small")).status_code == 200
    quick = _post(client, _chat("bestroute:1.0"), **{"x-bestroute-max-latency-ms": "150"})
    assert quick.headers["x-bestroute-model"] == "small" and quick.headers["x-bestroute-constraint"] == "max_latency_ms"
    excluded = quick.json()["bestroute"]["excluded"]
    assert excluded and all(why.startswith("max_latency_ms (expected ") for why in excluded.values())
    assert all(int(re.search(r"expected (\d+) ms", why).group(1)) > 150 for why in excluded.values())


def test_bad_constraints_are_one_clear_error(served):
    client, small, big = served
    before = len(small.bodies) + len(big.bodies)
    for headers, param in (
        ({"x-bestroute-min-quality": "high"}, "x-bestroute-min-quality"),
        ({"x-bestroute-max-cost-usd": "-1"}, "x-bestroute-max-cost-usd"),
        ({"x-bestroute-max-latency-ms": "0"}, "x-bestroute-max-latency-ms"),
        ({"x-bestroute-allowed-models": "gpt-9"}, "bestroute.allowed_models"),
    ):
        response = _post(client, _chat(), **headers)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    for body, param in (({"min_quality": 2}, "bestroute.min_quality"), ({"fastest": True}, "bestroute.fastest")):
        response = _post(client, _chat(bestroute=body))
        assert response.status_code == 422 and response.json()["error"]["param"] == param, response.text
    assert len(small.bodies) + len(big.bodies) == before
