"""BackgroundJob: results, progress in order, cancel at the next report, errors carried to the caller."""

import threading

from SAMBACore.background import BackgroundJob


def test_result_and_progress_in_order():
    def work(progress):
        for step in range(3):
            progress(step / 3, f"step {step}")
        return 42

    job = BackgroundJob(work).start()
    assert job.wait(10)
    assert job.result == 42 and job.error is None and not job.cancelled
    assert [message for _, message in job.poll()] == ["step 0", "step 1", "step 2"]
    assert job.poll() == []


def test_cancel_stops_at_the_next_report():
    reached = []
    release = threading.Event()

    def work(progress):
        progress(0.0, "started")
        release.wait(10)
        progress(0.5, "half")  # cancel was asked for: this raises inside the worker
        reached.append("after")
        return "finished"

    job = BackgroundJob(work).start()
    job.cancel()
    release.set()
    assert job.wait(10)
    assert job.cancelled and job.result is None and reached == []


def test_errors_are_kept_for_the_caller():
    def work(progress):
        raise MemoryError("out of memory on slice 12")

    job = BackgroundJob(work).start()
    assert job.wait(10)
    assert isinstance(job.error, MemoryError) and "slice 12" in str(job.error)


def test_not_done_before_start():
    job = BackgroundJob(lambda progress: "ok")
    assert not job.done
    assert job.start().wait(10) and job.done and job.result == "ok"
