"""The world's commands, added to the CLI's parser: `dreambooth demo`, and `dreambooth pretrain-world` with its config."""

from __future__ import annotations

import argparse

from .. import threads
from ..config import WORLD_METRICS
from ..errors import UsageError
from . import (
    CLASS_CAPTION_DROPOUT,
    CLASS_CONTEXTS,
    CLASS_IMAGES,
    DEMO_STEPS,
    MASK_BACKGROUND_WEIGHT,
    MASKED_LOSS,
    PRESERVE_UNCONDITIONAL,
    PRIOR_LOSS_WEIGHT,
    PretrainWorldConfig,
    check_pretrain_world,
)

CLASSES = ("dog", "cat", "teapot", "vase", "backpack")  # render.CLASSES, without importing numpy for --help


def add_parsers(sub, add_config_flags) -> None:
    add_config_flags(
        sub.add_parser("pretrain-world", help="train the world's base model from scratch on rendered scenes"), PretrainWorldConfig
    )
    demo = sub.add_parser(
        "demo",
        help="DreamBooth in the world on a CPU: render a subject, score the base model, train a LoRA "
        "with prior preservation, generate it in new contexts, score again",
    )
    demo.add_argument("--output-dir", default="demo-run", help="folder for the run (default: demo-run)")
    demo.add_argument("--max-steps", type=int, default=DEMO_STEPS, help=f"training steps (default: {DEMO_STEPS})")
    demo.add_argument("--subject", default="dog", choices=CLASSES, help="class of the subject (default: dog)")
    demo.add_argument(
        "--subjects",
        nargs="+",
        choices=CLASSES,
        default=None,
        help="train several subjects into one LoRA (train --subjects), e.g. --subjects dog cat, and score how often "
        "each identifier draws its own subject and another one",
    )
    demo.add_argument("--samples", type=int, default=32, help="samples per prompt for the scores (default: 32)")
    demo.add_argument(
        "--masked-loss",
        action=argparse.BooleanOptionalAction,
        default=MASKED_LOSS,
        help="train on the photos' exact masks (written beside them): the subject, not its background (default: on)",
    )
    demo.add_argument(
        "--mask-background-weight",
        type=float,
        default=MASK_BACKGROUND_WEIGHT,
        help=f"with --masked-loss: weight of the background's loss (default: {MASK_BACKGROUND_WEIGHT})",
    )
    demo.add_argument(
        "--class-contexts",
        action=argparse.BooleanOptionalAction,
        default=CLASS_CONTEXTS,
        help="prior preservation from the class prompt in every context (--class-prompts-file), not only "
        "'a photo of a <class>' (default: on)",
    )
    demo.add_argument(
        "--class-images",
        type=int,
        default=CLASS_IMAGES,
        help=f"class images for prior preservation, spread over the prompts (default: {CLASS_IMAGES}; the shared bank "
        "keeps them for the next run)",
    )
    demo.add_argument(
        "--class-caption-dropout",
        type=float,
        default=CLASS_CAPTION_DROPOUT,
        help=f"share of class images trained with an empty prompt (default: {CLASS_CAPTION_DROPOUT})",
    )
    demo.add_argument(
        "--preserve-unconditional",
        action=argparse.BooleanOptionalAction,
        default=PRESERVE_UNCONDITIONAL,
        help="the class images trained with an empty prompt aim at the base model's own prediction, so guidance's "
        "unconditional side stays the base's (default: on; nothing without --class-caption-dropout)",
    )
    demo.add_argument(
        "--prior-loss-weight",
        type=float,
        default=PRIOR_LOSS_WEIGHT,
        help=f"weight of the class images' loss (default: {PRIOR_LOSS_WEIGHT})",
    )
    demo.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (default: 0, chosen: OMP_NUM_THREADS when set, else the cores other processes leave free)",
    )
    demo.add_argument(
        "--method",
        default="dreambooth",
        choices=("dreambooth", "textual-inversion", "pivotal"),
        help="train --method: dreambooth (a LoRA, identifier sks), textual-inversion (new tokens alone) or pivotal "
        "(new tokens, then the LoRA); the prompts then say <s0><s1> (default: dreambooth)",
    )
    demo.add_argument(
        "--keep-best",
        default="",
        choices=("", *WORLD_METRICS),
        help="make the validation step with the best of this score the LoRA (default: the last step)",
    )


def run(args: argparse.Namespace, config_of) -> None:
    if args.command == "pretrain-world":
        from .pretrain import pretrain_world

        cfg = config_of(PretrainWorldConfig)
        check_pretrain_world(cfg)
        pretrain_world(cfg)
    elif args.command == "demo":
        if args.max_steps < 1 or args.samples < 1 or args.class_images < 1:
            raise UsageError("--max-steps, --samples and --class-images must be at least 1")
        if not 0 <= args.class_caption_dropout <= 1:
            raise UsageError(f"--class-caption-dropout {args.class_caption_dropout}: must be between 0 and 1, e.g. 0.2")
        if not args.prior_loss_weight >= 0:
            raise UsageError(f"--prior-loss-weight {args.prior_loss_weight}: must not be negative, e.g. 2")
        if not 0 <= args.mask_background_weight <= 1:
            raise UsageError(f"--mask-background-weight {args.mask_background_weight}: must be between 0 and 1, e.g. 0 or 0.1")
        if args.threads < 0:
            raise UsageError(f"--threads {args.threads}: {threads.RULE}")
        if args.subjects and args.method != "dreambooth":
            raise UsageError(f"--subjects with --method {args.method}: several subjects train with --method dreambooth")
        if args.subjects and (len(set(args.subjects)) < 2 or len(set(args.subjects)) != len(args.subjects)):
            raise UsageError("--subjects: name at least two different classes, e.g. --subjects dog cat")
        with threads.workload(args.threads):
            run_demo_command(args)


def run_demo_command(args: argparse.Namespace) -> None:
    from .demo import run_demo

    if args.subjects:
        from .several import run_several

        run_several(args.output_dir, args.subjects, args.max_steps, args.samples, args.threads)
        return
    run_demo(
        args.output_dir,
        args.max_steps,
        args.subject,
        args.samples,
        masked_loss=args.masked_loss,
        mask_background_weight=args.mask_background_weight,
        class_contexts=args.class_contexts,
        keep_best=args.keep_best,
        class_images=args.class_images,
        class_caption_dropout=args.class_caption_dropout,
        preserve_unconditional=args.preserve_unconditional,
        prior_loss_weight=args.prior_loss_weight,
        threads=args.threads,
        method=args.method,
    )
