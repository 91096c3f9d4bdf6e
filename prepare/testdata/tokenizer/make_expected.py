"""Writes the test data in this folder with the reference pipeline, once.

The reference (karpathy/autoresearch prepare.py) trains with rustbpe and encodes with tiktoken
built from rustbpe's ranks. This script runs exactly that and writes:

- `mixed.jsonl`: the documents below (JSON keeps `\\r\\n`, tabs and trailing spaces intact);
- `expected.json`: for tokenizers trained on `mixed.jsonl` (600 ids, and 8192 ids, which the
  text is too small to fill, so training stops early), the learned tokens (hex bytes, ids
  256 and up) and the ids of every document; and the ids of every document under the
  classics tokenizer;
- `classics_tokens.txt`: the tokens (hex bytes, ids 256 and up, one per line) that rustbpe
  learns on the classics train shards with the reference settings (8192 ids, documents cut
  to 10,000 characters).

The Rust tests compare against these files; this script is only for regenerating them.

    pip install rustbpe==0.1.0 tiktoken==0.14.0 pyarrow
    python make_expected.py ../../../../shared/data/classics
"""
import json
import os
import sys
from importlib.metadata import version

import pyarrow.parquet as pq
import rustbpe
import tiktoken

HERE = os.path.dirname(os.path.abspath(__file__))
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIALS = [f"<|reserved_{i}|>" for i in range(4)]

PROSE = (
    "It's a truth universally acknowledged that we'll test what we've built; they're sure "
    "I'd agree, and you'd've guessed it. DON'T SHOUT, IT'S RUDE: she said 'quoted' words "
    "aren't contractions, but rock'n'roll and o'clock are. "
)
DOCS = [
    PROSE * 3,
    "In 2024, 1,234,567 people paid $3.14159 each (or 12.5%); call 555-0100 or "
    "+1 (800) 123-4567 before 23:59:59. Fractions ½ ¾, powers x² y³, Roman Ⅻ, "
    "Arabic-Indic ٣٤٥, Devanagari १२३, full-width １２３４, version v1.2.3-rc4, 0x1F and 1e-9.",
    "fn main() {\n    let xs = vec![1, 2, 3];\n\tif xs.len() >= 2 && y != 0 {\n"
    "        println!(\"{xs:?} -> {}\", xs[0]);  // done\n    }\n}\n",
    "trailing spaces   \nthen tabs\t\t\nCRLF line\r\nanother one\r\n\r\n  indented\n\n\n"
    "   \n\t\n end with spaces   ",
    "naïve café — Ωμέγα, Привет мир, 日本語のテキスト, 한국어 문장, עברית, العربية, "
    "हिन्दी भाषा, ภาษาไทย. Combining marks: e\u0301 a\u0308 n\u0303 ...e\u0301t\u00e9. "
    "Zero width: a\u200bb. No-break space: a\u00a0b, narrow\u202fspace, ideographic\u3000space.",
    "Emoji: 👍🏽 family 👨\u200d👩\u200d👧\u200d👦 flags 🇫🇷🇩🇪 hearts ❤️ ✨ 🚀launch and "
    "(😀) [🎉!] 𝄞 music 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math.",
    "Apostrophes: 'S 'LL 'Ve 're 'ſ 'x ''s ’s (curly) 'tis ' ll '\nre 'M 'D 'T end'",
    "Specials are text: <|reserved_0|> <|reserved_3|> <|endoftext|> <|x|>.",
    "Runs: " + "=" * 300 + " " + "a" * 150 + " " + " " * 100 + "x" + "\n" * 20 + "-" * 80 + "\r\n",
    "Punctuation!!! ... ?! --- *** ### @@@ ~~~ ``` ''' \"\"\" (((nested))) [[x]] {{y}} <<<z>>> "
    "a.b,c;d:e!f?g --flag -x +y =z #tag @user $var %mod ^xor &and |or \\\\path /slash.",
    PROSE + "\n\n" + PROSE.upper() + "\n\n" + PROSE.lower(),
    "", " ", "\n", "\r\n", "a", "'", "''", "1", "12345", "  x", "x  ", " \n ",
]


def reference(docs, vocab_size):
    """rustbpe training + tiktoken encoding, as prepare.py; vocab_size counts the specials."""
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(docs), vocab_size - len(SPECIALS), pattern=SPLIT_PATTERN)
    ranks = {bytes(k): v for k, v in tok.get_mergeable_ranks()}
    enc = tiktoken.Encoding(
        name="rustbpe",
        pat_str=tok.get_pattern(),
        mergeable_ranks=ranks,
        special_tokens={s: len(ranks) + i for i, s in enumerate(SPECIALS)},
    )
    learned = [k.hex() for k, v in sorted(ranks.items(), key=lambda kv: kv[1]) if v >= 256]
    return learned, enc


def classics_docs(src):
    for f in sorted(os.listdir(src)):
        if f.endswith(".parquet") and f != "shard_06542.parquet":
            for t in pq.read_table(os.path.join(src, f)).column("text").to_pylist():
                yield t[:10_000]


def main():
    with open(os.path.join(HERE, "mixed.jsonl"), "w", encoding="utf-8") as f:
        for d in DOCS:
            f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    out = {"generated_by": f"make_expected.py: rustbpe {version('rustbpe')}, tiktoken {version('tiktoken')}",
           "cases": []}
    for vocab_size in (600, 8192):
        learned, enc = reference(DOCS, vocab_size)
        out["cases"].append({"trained_on": "mixed.jsonl", "vocab_size": vocab_size,
                             "tokens": learned, "ids": enc.encode_ordinary_batch(DOCS)})
    learned, enc = reference(list(classics_docs(sys.argv[1])), 8192)
    with open(os.path.join(HERE, "classics_tokens.txt"), "w") as f:
        f.write("\n".join(learned) + "\n")
    out["cases"].append({"trained_on": "classics", "vocab_size": 8192, "tokens": "classics_tokens.txt",
                         "ids": enc.encode_ordinary_batch(DOCS)})
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
