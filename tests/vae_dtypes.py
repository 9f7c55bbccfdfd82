"""Which dtypes a VAE's convolutions compute in, as they run."""

import torch


def watch_vae(vae) -> dict[str, set[torch.dtype]]:
    """Per part ("encoder", "decoder"): the dtypes its convolutions were given and gave back (under autocast a
    convolution gives back the autocast's dtype whatever its weights), filled in as the VAE runs."""
    seen: dict[str, set[torch.dtype]] = {"encoder": set(), "decoder": set()}
    for part, dtypes in seen.items():
        for conv in getattr(vae, part).modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.register_forward_hook(lambda m, args, out, dtypes=dtypes: dtypes.update({args[0].dtype, out.dtype}))
    return seen
