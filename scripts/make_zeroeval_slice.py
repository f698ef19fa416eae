"""Build the embedded slice of the zeroeval routing data (src/bestroute/zeroeval_slice/): the models
that matter for routing there (the reference, strong cheap models, a few weak ones) on a few
hundred prompts of each task, with their responses, under the data's Apache-2.0 notice.

    python scripts/make_zeroeval_slice.py [--data ../shared/data/zeroeval] [--per-task 250]

Prompts are chosen by the SHA-256 of their ids (the lowest of each task), so a rerun on the same
data writes the same files.
"""

import argparse
import gzip
import hashlib
import json
from pathlib import Path

REFERENCE = "gpt-4o-2024-08-06"
MODELS = (
    REFERENCE,
    "claude-3-5-sonnet-20241022",  # as good as the reference, as dear
    "Mistral-Large-2",
    "gpt-4o-mini-2024-07-18",  # strong and cheap
    "deepseek-v2.5-0908",
    "gemini-1.5-flash",
    "Meta-Llama-3.1-70B-Instruct",
    "claude-3-5-haiku-20241022",
    "Meta-Llama-3.1-8B-Instruct",  # weak
    "Qwen2-7B-Instruct",
    "gemma-2-2b-it",
)
OUT = Path(__file__).resolve().parents[1] / "src" / "bestroute" / "zeroeval_slice"

NOTICE = """# Embedded real routing data: a slice of zeroeval

{prompts} prompts ({per_task} of GSM8K and {per_task} of CRUXEval) and the responses of {models} of the
51 LLMs of `../shared/data/zeroeval` to them, one response per prompt and model, with quality
(1 when the response's answer matches the reference), token counts and list prices. `bestroute
demo` routes it through the gateway, served by replay backends.

Source: the result files of the ZeroEval benchmark (WildEval/ZeroEval on GitHub, Apache-2.0
licence), as collected in `../shared/data/zeroeval`. Keep this notice with any copy of the data.

Models: the reference `{reference}`; strong models as dear as it (`claude-3-5-sonnet-20241022`,
`Mistral-Large-2`); strong cheap ones (`gpt-4o-mini-2024-07-18`, `deepseek-v2.5-0908`,
`gemini-1.5-flash`, `Meta-Llama-3.1-70B-Instruct`, `claude-3-5-haiku-20241022`); weak cheap ones
(`Meta-Llama-3.1-8B-Instruct`, `Qwen2-7B-Instruct`, `gemma-2-2b-it`). Prompts: the {per_task} of each
task with the lowest SHA-256 of their ids.

Made by `python scripts/make_zeroeval_slice.py` (rerun it to rebuild these files).
"""


def _rank(prompt_id: str) -> str:
    return hashlib.sha256(prompt_id.encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/zeroeval"))
    parser.add_argument("--per-task", type=int, default=250)
    args = parser.parse_args()
    prompts = [json.loads(line) for line in (args.data / "prompts.jsonl").open(encoding="utf-8")]
    by_task: dict[str, list[dict]] = {}
    for prompt in prompts:
        by_task.setdefault(prompt["task"], []).append(prompt)
    chosen = [
        p
        for task in sorted(by_task)
        for p in sorted(by_task[task], key=lambda p: _rank(p["prompt_id"]))[: args.per_task]
    ]
    ids = {p["prompt_id"] for p in chosen}
    with gzip.open(args.data / "responses.jsonl.gz", "rt", encoding="utf-8") as handle:
        responses = [r for r in map(json.loads, handle) if r["prompt_id"] in ids and r["model"] in MODELS]
    missing = {(p, m) for p in ids for m in MODELS} - {(r["prompt_id"], r["model"]) for r in responses}
    if missing:
        raise SystemExit(f"{len(missing)} (prompt, model) pairs have no response, e.g. {min(missing)}")
    catalog = json.loads((args.data / "models.json").read_text())
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in chosen), encoding="utf-8")
    with gzip.GzipFile(OUT / "responses.jsonl.gz", "wb", mtime=0) as raw:  # no timestamp: reruns match
        raw.write(
            "".join(
                json.dumps(r) + "\n" for r in sorted(responses, key=lambda r: (r["prompt_id"], r["model"]))
            ).encode()
        )
    models = {"models": {m: catalog["models"][m] for m in MODELS}, "reference": REFERENCE}
    (OUT / "models.json").write_text(json.dumps(models, indent=1), encoding="utf-8")
    (OUT / "README.md").write_text(
        NOTICE.format(prompts=len(chosen), per_task=args.per_task, models=len(MODELS), reference=REFERENCE),
        encoding="utf-8",
    )
    print(json.dumps({"prompts": len(chosen), "responses": len(responses), "out": str(OUT)}))


if __name__ == "__main__":
    main()
