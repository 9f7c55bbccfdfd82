"""Loaded in every worker of the tests' Ray (its `worker_process_setup_hook`): each class-image drawing a worker makes
is appended to the file FLEET_TEST_DRAWS names, so a test counts them across processes."""

import json
import os
from collections import Counter


def count_class_draws() -> None:
    if not os.environ.get("FLEET_TEST_DRAWS"):
        return  # a task that draws nothing (and need not wait for torch to import)
    from dreambooth.training import class_images

    real = class_images.draw_jobs

    def counted(pipe, jobs, *args, **kwargs):
        with open(os.environ["FLEET_TEST_DRAWS"], "a") as f:
            for prompt, n in Counter(p for p, _ in jobs).items():
                f.write(json.dumps({"pid": os.getpid(), "prompt": prompt, "images": n}) + "\n")
        return real(pipe, jobs, *args, **kwargs)

    class_images.draw_jobs = counted
