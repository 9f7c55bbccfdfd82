"""Derive the SD 1.x CLIP tokenizer files (vocab.json, merges.txt) from OpenAI's BPE file.

The BPE file ships inside the `open_clip_torch` wheel as `open_clip/bpe_simple_vocab_16e6.txt.gz`.
The vocabulary is built exactly as OpenAI's `SimpleTokenizer` builds it: the 256 byte-level
characters, the same with `</w>`, one entry per merge, then the two special tokens.

    python scripts/derive_clip_tokenizer.py PATH/bpe_simple_vocab_16e6.txt.gz src/dreambooth/assets/clip_tokenizer
"""

import gzip
import json
import sys
from pathlib import Path


def bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map, which CLIP uses unchanged.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def main(bpe_path: str, out_dir: str) -> None:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"{len(vocab)} tokens -> {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
