"""Ours against the reference tokenizer on the same text, in the same run, alternating.

The reference is what karpathy/autoresearch prepare.py runs: rustbpe training on the train
shards (documents cut to 10,000 characters, 8192 - 4 ids) and tiktoken's
`encode_ordinary_batch` with the ranks rustbpe learned. Ours is `tokenizer_bench` (an example
of the prepare crate) doing the same on the same files. Text is read into memory before the
clock starts on both sides. Each round runs both, in alternating order; the table gives the
median of the rounds and the ratio reference time / our time (above 1: ours is faster).

    pip install rustbpe tiktoken pyarrow
    cargo build --release --example tokenizer_bench
    python prepare/bench/tokenizer_vs_reference.py DIR [--rounds 5] [--threads 2] [--bench PATH]
"""
import argparse
import array
import hashlib
import json
import os
import statistics
import struct
import subprocess
import time
from importlib.metadata import version

import pyarrow.parquet as pq
import rustbpe
import tiktoken

SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIALS = [f"<|reserved_{i}|>" for i in range(4)]
VAL = "shard_06542.parquet"


def read(dir_):
    shards = sorted(f for f in os.listdir(dir_) if f.endswith(".parquet"))
    texts = {f: pq.read_table(os.path.join(dir_, f)).column("text").to_pylist() for f in shards}
    train = [t[:10_000] for f in shards if f != VAL for t in texts[f]]
    return train, [t for f in shards for t in texts[f]]


def reference(train, all_docs, threads):
    t0 = time.perf_counter()
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(train), 8192 - len(SPECIALS), pattern=SPLIT_PATTERN)
    ranks = {bytes(k): v for k, v in tok.get_mergeable_ranks()}
    train_s = time.perf_counter() - t0
    enc = tiktoken.Encoding(name="rustbpe", pat_str=tok.get_pattern(), mergeable_ranks=ranks,
                            special_tokens={s: len(ranks) + i for i, s in enumerate(SPECIALS)})
    t0 = time.perf_counter()
    ids = enc.encode_ordinary_batch(all_docs, num_threads=threads)
    encode_s = time.perf_counter() - t0
    vocab = hashlib.sha256()
    for token, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        vocab.update(struct.pack("<I", len(token)) + token)
    all_ids = hashlib.sha256()
    for doc in ids:
        all_ids.update(struct.pack("<I", len(doc)) + array.array("I", doc).tobytes())
    return {"train_s": train_s, "encode_s": encode_s, "tokens": sum(map(len, ids)),
            "vocab_size": len(ranks) + len(SPECIALS),
            "vocab_sha256": vocab.hexdigest(), "ids_sha256": all_ids.hexdigest()}


def ours(bench, dir_, threads):
    out = subprocess.run([bench, dir_, "--threads", str(threads)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--bench", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"),
                                                   "release/examples/tokenizer_bench"))
    a = p.parse_args()
    train, all_docs = read(a.dir)
    train_mb = sum(len(t.encode()) for t in train) / 1e6
    encode_mb = sum(len(t.encode()) for t in all_docs) / 1e6
    runs = {"reference": [], "ours": []}
    for r in range(a.rounds):
        order = ["reference", "ours"] if r % 2 == 0 else ["ours", "reference"]
        for who in order:
            runs[who].append(reference(train, all_docs, a.threads) if who == "reference"
                             else ours(a.bench, a.dir, a.threads))
    # The same merges and the same ids, or the timings mean nothing.
    for key in ("vocab_size", "vocab_sha256", "tokens", "ids_sha256"):
        values = {x[key] for who in runs for x in runs[who]}
        assert len(values) == 1, f"{key} differs: {values}"
    med = {who: {k: statistics.median(x[k] for x in runs[who]) for k in ("train_s", "encode_s")} for who in runs}
    print(f"rustbpe {version('rustbpe')}, tiktoken {version('tiktoken')}; {a.rounds} rounds, {a.threads} threads; "
          f"train {len(train)} docs {train_mb:.1f} MB, encode {len(all_docs)} docs {encode_mb:.1f} MB, "
          f"identical merges and ids on both sides ({runs['ours'][0]['tokens']} tokens)")
    print("| step | reference | ours | ratio (reference time / ours) |")
    print("|---|---|---|---|")
    rt, ot = med["reference"]["train_s"], med["ours"]["train_s"]
    print(f"| BPE training, 8188 ids | rustbpe {rt:.2f} s | {ot:.2f} s | **{rt / ot:.2f}x** |")
    re_, oe = med["reference"]["encode_s"], med["ours"]["encode_s"]
    print(f"| encoding, {a.threads} threads | tiktoken {encode_mb / re_:.1f} MB/s | {encode_mb / oe:.1f} MB/s "
          f"| **{re_ / oe:.2f}x** |")
    for who in runs:
        print(f"{who} rounds: train " + " ".join(f"{x['train_s']:.2f}" for x in runs[who])
              + " s; encode " + " ".join(f"{x['encode_s']:.2f}" for x in runs[who]) + " s")


if __name__ == "__main__":
    main()
