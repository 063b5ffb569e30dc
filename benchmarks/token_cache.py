"""A text corpus' start-up cost with and without the token cache (data/token_cache.py): the time `tasks.load` takes
and the memory it leaves, each load in a fresh process, uncached (JAXBATCH_CACHE=off: read, tokenize and pack) and
cached (memory-mapped tokens, rows computed as read) in alternating rounds; medians; and the cache's bytes on disk.

    python benchmarks/token_cache.py --data-root ../shared/data --copies 30

The corpus is tiny shakespeare repeated `--copies` times (generated words where the data is absent), tokenized by a
byte-level BPE of 8,000 tokens trained on it here (GPT-2's kind), packed into rows of 512."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LOAD = """
import json, resource, sys, time
import transformers
from jaxbatch import config
from jaxbatch.data import pipeline, tasks
folder = sys.argv[1]
tok = transformers.AutoTokenizer.from_pretrained(folder + "/tokenizer")
cfg = config.DataConfig(name="text", data_dir=folder + "/corpus", cache_dir=folder + "/tfds", seq_len=512)
before, start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
data = tasks.load(cfg, tok)
seconds = time.perf_counter() - start
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"seconds": seconds, "rss_mb": grown, "tokens": int(data.train["input_ids"].size),
                  "digest": pipeline.digest(data.train) + pipeline.digest(data.eval)}))
"""


def corpus(folder: Path, data_root: Path | None, copies: int) -> str:
    source = data_root / "tinyshakespeare" if data_root else None
    files = sorted(source.glob("*.txt")) if source and source.is_dir() else []
    if files:
        text = files[0].read_text()
    else:  # 20,000 words a copy
        import numpy as np

        words = np.random.default_rng(0).choice(["the", "king", "of", "a", "night", "speak", "my", "lord"], 20_000)
        text = "\n\n".join(" ".join(words[i:i + 40]) for i in range(0, len(words), 40))
    (folder / "corpus").mkdir(parents=True)
    (folder / "corpus" / "corpus.txt").write_text(text * copies)
    return text


def tokenizer(folder: Path, text: str) -> None:
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    core = tokenizers.Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([text], trainers.BpeTrainer(vocab_size=8000, special_tokens=["<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>").save_pretrained(
        str(folder / "tokenizer"))


def load(folder: Path, cache: str) -> dict:
    env = {**os.environ, "JAXBATCH_CACHE": cache, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", LOAD, str(folder)], env=env, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path)
    parser.add_argument("--copies", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer(folder, corpus(folder, args.data_root, args.copies))
        cache = str(folder / "cache")
        first = load(folder, cache)  # prepares the array_record copy and writes the token cache
        disk = sum(f.stat().st_size for f in (folder / "cache" / "tokens").rglob("*") if f.is_file())
        runs = {"uncached": [], "cached": []}
        for _ in range(args.rounds):
            runs["uncached"].append(load(folder, "off"))
            runs["cached"].append(load(folder, cache))
    same = len({r["digest"] for rows in runs.values() for r in rows} | {first["digest"]}) == 1
    print(f"corpus: {first['tokens'] / 1e6:.1f}M training tokens in rows of 512; first load (preparing and writing "
          f"the cache) {first['seconds']:.1f} s; the same rows every load: {same}; the cache holds "
          f"{disk / first['tokens']:.2f} bytes a training token (both splits)")
    result = {"first_s": first["seconds"], "rows_equal": same, "tokens": first["tokens"],
              "disk_bytes_per_token": disk / first["tokens"]}
    for name, rows in runs.items():
        result[f"{name}_s"], result[f"{name}_rss_mb"] = [r["seconds"] for r in rows], [r["rss_mb"] for r in rows]
        print(f"{name:9s} load {statistics.median(result[f'{name}_s']):6.2f} s   peak RSS growth "
              f"{statistics.median(result[f'{name}_rss_mb']):6.0f} MB   (medians of {len(rows)})")
    result["speedup_median"] = statistics.median(u / c for u, c in zip(result["uncached_s"], result["cached_s"]))
    print(f"cached start-up {result['speedup_median']:.1f}x faster (median of the rounds' ratios)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
