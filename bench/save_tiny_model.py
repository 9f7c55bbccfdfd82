"""Write the embedded tiny model (`--model tiny`) as a diffusers pipeline folder.

    python bench/save_tiny_model.py OUT_DIR [--prediction-type epsilon|v_prediction]

Other tools (e.g. diffusers' example training scripts) can then load the very same weights with
`--pretrained_model_name_or_path OUT_DIR`. Run it with the interpreter that has `dreambooth` installed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir")
    p.add_argument("--prediction-type", default="epsilon", choices=("epsilon", "v_prediction"))
    args = p.parse_args()
    from dreambooth.families.sd import build_tiny as build_tiny_pipeline

    out = Path(args.out_dir)
    build_tiny_pipeline(args.prediction_type).save_pretrained(out, safe_serialization=True)
    print(f"tiny model ({args.prediction_type}) saved to {out}")


if __name__ == "__main__":
    main()
