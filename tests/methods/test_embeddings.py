"""The embeddings files' names and keys: the name is the word ComfyUI (`embedding:<name>`) and A1111 / Forge (the
file's stem, or the `bundle_emb.<name>.<key>` of the kohya file) know the subject by."""

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreambooth.methods import embeddings


def test_a_folder_name_with_spaces_or_dots_gives_a_one_word_name_without_dots(tmp_path):
    out = tmp_path / "my dog.v2"
    out.mkdir()
    rows = {"clip_l": torch.arange(12.0).reshape(3, 4)}
    written = embeddings.save(out, rows, [["<s0>"], ["<s1>", "<s2>"]], {})
    assert [p.name for p in written] == ["my_dog_v2_emb.safetensors", "my_dog_v2_emb1.safetensors", "my_dog_v2_emb2.safetensors"]
    assert embeddings.find(out) == written[0]
    assert torch.equal(load_file(written[2])["clip_l"], rows["clip_l"][1:])

    kohya = out / "lora_kohya.safetensors"
    save_file({"lora_unet_a.lora_down.weight": torch.zeros(1, 4)}, str(kohya), metadata={"ss_network_dim": "1"})
    embeddings.bundle(kohya, rows, [["<s0>"], ["<s1>", "<s2>"]], out)
    with safe_open(str(kohya), "pt") as f:
        keys, meta = sorted(f.keys()), f.metadata()
    assert keys == ["bundle_emb.my_dog_v2_emb1.clip_l", "bundle_emb.my_dog_v2_emb2.clip_l", "lora_unet_a.lora_down.weight"]
    assert meta == {"ss_network_dim": "1"}
    # A1111 / Forge take the name as the part between the first and the second dot
    assert {k.split(".")[1] for k in keys if k.startswith("bundle_emb.")} == {"my_dog_v2_emb1", "my_dog_v2_emb2"}
