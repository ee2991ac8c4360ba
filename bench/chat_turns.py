"""Time to first token, turn by turn, in a chat: is the conversation re-prefilled every turn?

    python bench/chat_turns.py [--model smollm2] [--turns 10] [--runs 3] [--max-tokens 24]

Plays a conversation of similar turns ("Tell me one short fact about <topic>.") through the REPL's
own backend (pyllm.repl.backend.LLMBackend over pyllm.load), greedy, each reply capped at
--max-tokens, sending the whole conversation each turn as `pyllm chat` does. For each turn it
prints the prompt's tokens, the tokens new since the previous turn, and the time to first token
(median over --runs conversations).

With prefix caching the engine prefills only the new tokens, so turn N's time to first token stays
near turn 1's (the issue asks for turn 10 within 1.5x turn 1). Without it, every turn prefills the
whole conversation. The "cold" line is the control: a prompt as long as the last turn's that
shares no prefix with anything before (its system prompt starts with a fresh word), i.e. what the
last turn costs when nothing is reused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid

TOPICS = ["the sun", "the moon", "rivers", "bees", "volcanoes", "owls", "glaciers", "salt",
          "copper", "clouds", "tigers", "maple trees", "deserts", "coral", "comets", "ferns"]


def play(backend, params, turns: int, system: str) -> list[dict]:  # type: ignore[no-untyped-def]
    from pyllm.repl.conversation import Conversation

    conversation = Conversation(system=system)
    rows = []
    previous = 0
    for turn in range(turns):
        conversation.add("user", f"Tell me one short fact about {TOPICS[turn % len(TOPICS)]}.")
        messages = conversation.for_model()
        reply = "".join(backend.stream_reply(messages, params))
        stats = backend.last_stats
        conversation.add("assistant", reply)
        rows.append({"turn": turn + 1, "prompt_tokens": stats.prompt_tokens,
                     "new_tokens": stats.prompt_tokens - previous, "ttft": stats.ttft,
                     "reply_tokens": stats.tokens})
        previous = stats.prompt_tokens + stats.tokens
    return rows


def cold(backend, params, length: int) -> float:  # type: ignore[no-untyped-def]
    """Time to first token of a fresh prompt about ``length`` tokens long sharing no prefix."""
    filler = "Here is some background text to read carefully before answering."
    system = f"{uuid.uuid4().hex} You are a helpful assistant."
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": "Tell me one short fact about stars."}]
    while backend.count_tokens(messages) < length:
        messages[1]["content"] = filler + " " + messages[1]["content"]
    for _ in backend.stream_reply(messages, params.replace(max_tokens=1)):
        pass
    return backend.last_stats.ttft


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3, help="conversations played (medians)")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = ap.parse_args(argv)

    import pyllm
    from pyllm.repl.backend import LLMBackend
    from pyllm.sampling_params import SamplingParams

    t0 = time.perf_counter()
    backend = LLMBackend(pyllm.load(args.model))
    load_s = time.perf_counter() - t0
    params = SamplingParams.greedy(max_tokens=args.max_tokens)

    # warm-up: the first request pays one-off costs (allocations, lazy imports)
    hello = [{"role": "user", "content": "Hi"}]
    for _ in backend.stream_reply(hello, params.replace(max_tokens=2)):
        pass

    runs = []
    colds = []
    for _ in range(args.runs):
        # a fresh system prompt per run: runs must not reuse each other's cached prefix
        runs.append(play(backend, params, args.turns,
                         system=f"Conversation {uuid.uuid4().hex[:8]}. Answer in one sentence."))
        colds.append(cold(backend, params, runs[-1][-1]["prompt_tokens"]))

    table = []
    for i in range(args.turns):
        rows = [r[i] for r in runs]
        table.append({"turn": i + 1,
                      "prompt_tokens": int(statistics.median(r["prompt_tokens"] for r in rows)),
                      "new_tokens": int(statistics.median(r["new_tokens"] for r in rows)),
                      "ttft_s": statistics.median(r["ttft"] for r in rows)})
    cold_s = statistics.median(colds)
    ratio = table[-1]["ttft_s"] / table[0]["ttft_s"]
    result = {"model": backend.model_name, "load_s": load_s, "runs": args.runs,
              "max_tokens": args.max_tokens, "turns": table, "cold_last_turn_s": cold_s,
              "ratio_last_to_first": ratio, "within_1_5x": ratio <= 1.5}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{backend.model_name}: loaded in {load_s:.1f} s; greedy, replies <= {args.max_tokens} "
          f"tokens; medians over {args.runs} conversation(s)")
    print(f"{'turn':>4} {'prompt tok':>10} {'new tok':>8} {'ttft ms':>9}")
    for row in table:
        print(f"{row['turn']:>4} {row['prompt_tokens']:>10} {row['new_tokens']:>8} "
              f"{1000 * row['ttft_s']:>9.1f}")
    print(f"cold {table[-1]['prompt_tokens']:>10} {table[-1]['prompt_tokens']:>8} "
          f"{1000 * cold_s:>9.1f}   (same length, no shared prefix)")
    print(f"turn {args.turns} / turn 1 time to first token: {ratio:.2f}x "
          f"({'within' if ratio <= 1.5 else 'NOT within'} 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
