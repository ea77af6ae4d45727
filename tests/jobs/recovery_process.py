"""A bot-like process for the restart test (run as a script, not collected by pytest).

``python recovery_process.py first DB DATA CACHE POSTS MARKER`` submits four jobs and
blocks inside the second one's sampling after writing MARKER, waiting to be killed.
``python recovery_process.py second DB DATA CACHE POSTS`` starts again on the same
database, finishes what is left and exits. Posting appends "job_id status" to POSTS.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ["EASEL_CONFIG"] = os.devnull


def main(argv: list[str]) -> int:
    mode, db_url, data_dir, cache_dir, posts_file = argv[:5]
    marker = argv[5] if len(argv) > 5 else None

    import torch

    torch.set_num_threads(1)  # two such processes may share the test machine's cores

    from bot.services.jobs import JobService
    from bot.settings import Settings
    from db.engine import Database
    from runner.environment import Environment
    from runner.templates import GenerationRequest

    settings = Settings(
        data_dir=data_dir,
        cache_folder=cache_dir,
        database_url=db_url,
        max_batch_jobs=1,
        owner_ids=[1],
    )
    db = Database(db_url)
    db.upgrade()
    env = Environment(settings)

    def poster(result):
        with open(posts_file, "a") as fh:
            fh.write(f"{result.job_id} {result.status} {len(result.images)}\n")
            fh.flush()
            os.fsync(fh.fileno())
        return 5000 + result.job_id

    service = JobService.create(db, settings, env, poster=poster)
    report = service.start()
    if mode == "first":
        service.pause(1)
        ids = []
        for user, prompt, steps in (
            (10, "first", 3),
            (10, "third", 3),
            (20, "interrupted", 8),
            (30, "fourth", 3),
        ):
            request = GenerationRequest(prompt=prompt, steps=steps, width=64, height=64)
            ids.append(service.submit(user, request).job_id)
        blocked = str(ids[2])

        def block(event):
            if event.job_id == blocked and event.type == "progress" and event.step == 2:
                with open(marker, "w") as fh:
                    json.dump(ids, fh)
                time.sleep(3600)  # mid-job, until the test kills this process

        service.runner.bus.add_listener(block)
        service.resume(1)
        time.sleep(3600)
        return 1
    ok = service.wait_idle(120)
    service.stop()
    print(
        json.dumps(
            {
                "requeued": report.requeued,
                "resumed": report.resumed,
                "reposted": report.reposted,
                "idle": ok,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
