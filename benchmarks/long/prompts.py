"""Prompts for the rag-mix scenario (issue #14), as sluice-bench JSONL.

Short chats (60-110 words and a question), or with --long documents of
3-6k tokens and a question about each; half of those documents are one and
the same (several questions about one document, the RAG case the prefix
cache serves), the other half each new. Writes PROMPTS.jsonl and, beside
it, PROMPTS.kinds.json: each line's kind (short, long-repeated, long-new),
which the summary reads by request index (sluice-bench sends line
index % count).

    python3 benchmarks/long/prompts.py OUT.jsonl [--long] [--count N]
"""
import argparse
import json
import random

WORDS = ("harbour ship quay cargo tide crane pilot anchor rope deck hull mast "
         "sail storm wind wave bay pier dock crate barrel net fish gull light "
         "keeper bell buoy chart compass north south east west morning evening "
         "river bridge market street lantern window door stone iron salt").split()


def document(rng, words):
    lines, count, entry = [], 0, 0
    while count < words:
        entry += 1
        line = f"Entry {entry}: " + " ".join(rng.choice(WORDS) for _ in range(12)) + "."
        lines.append(line)
        count += len(line.split())
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--long", action="store_true")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    # ~1.45 tokens per word here: 2,100-4,100 words is 3-6k tokens.
    shared = document(rng, 3_400)
    lines, kinds = [], []
    for index in range(args.count):
        question = f"Question {index}: which entries mention a " \
            f"{rng.choice(WORDS)} and a {rng.choice(WORDS)}? Answer briefly."
        if args.long:
            if index % 2 == 0:
                kind, doc = "long-repeated", shared
            else:
                kind, doc = "long-new", document(rng, rng.randint(2_100, 4_100))
            lines.append({"user": f"{doc}\n\n{question}"})
        else:
            kind = "short"
            chat = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80)))
            lines.append({"user": f"{chat}\n\n{question}"})
        kinds.append(kind)
    with open(args.out, "w") as out:
        for line in lines:
            out.write(json.dumps(line) + "\n")
    with open(args.out.removesuffix(".jsonl") + ".kinds.json", "w") as out:
        json.dump(kinds, out)


if __name__ == "__main__":
    main()
