"""JSON log lines, and the run/job ids on lines logged inside a job's context."""
from __future__ import annotations

import io
import json
import logging
import re
import threading
from datetime import datetime, timezone
from typing import Iterator

import pytest

from shared.logformat import JsonFormatter, current_job, in_log_context, install_celery_json_logging, job_log_context

ISO_MS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("conveyor.test.logformat")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_has_time_level_logger_and_message(captured) -> None:
    logger, stream = captured
    logger.warning("disk %s is %d%% full", "/var", 93)
    [line] = lines(stream)
    assert line["level"] == "WARNING"
    assert line["logger"] == "conveyor.test.logformat"
    assert line["message"] == "disk /var is 93% full"
    assert ISO_MS_UTC.fullmatch(line["ts"])
    logged = datetime.fromisoformat(line["ts"].replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - logged).total_seconds()) < 60
    assert "run_id" not in line and "job" not in line  # not inside a job


def test_exceptions_and_odd_messages_stay_one_json_line(captured) -> None:
    logger, stream = captured
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("step crashed: %s", object())
    logger.info("quote \" backslash \\ newline \n tab \t unicode ✓")
    assert len(stream.getvalue().splitlines()) == 2
    crashed, odd = lines(stream)
    assert crashed["level"] == "ERROR" and "RuntimeError: boom" in crashed["exc"]
    assert odd["message"] == "quote \" backslash \\ newline \n tab \t unicode ✓"


def test_two_threads_in_different_jobs_tag_their_own_lines(captured) -> None:
    logger, stream = captured
    both_inside = threading.Barrier(2)

    def job(run_id: str, name: str) -> None:
        with job_log_context(run_id, name):
            both_inside.wait(5)  # both contexts are live at once
            for index in range(20):
                logger.info("%s line %d", name, index)
            both_inside.wait(5)
        logger.info("%s after", name)

    threads = [threading.Thread(target=job, args=("run-a", "build")),
               threading.Thread(target=job, args=("run-b", "test"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = lines(stream)
    assert len(records) == 42
    for record in records:
        if record["message"].endswith("after"):
            assert "run_id" not in record and "job" not in record
        else:
            expected = ("run-a", "build") if record["message"].startswith("build") else ("run-b", "test")
            assert (record["run_id"], record["job"]) == expected, record


def test_context_nests_and_restores(captured) -> None:
    assert current_job() is None
    with job_log_context("run-1", "outer"):
        with job_log_context("run-1", "inner"):
            assert current_job() == ("run-1", "inner")
        assert current_job() == ("run-1", "outer")
        with pytest.raises(ValueError):
            with job_log_context("run-1", "failing"):
                raise ValueError
        assert current_job() == ("run-1", "outer")
    assert current_job() is None


def test_a_thread_started_by_a_job_inherits_only_when_wrapped(captured) -> None:
    logger, stream = captured
    with job_log_context("run-c", "deploy"):
        plain = threading.Thread(target=logger.info, args=("plain helper",))
        wrapped = threading.Thread(target=in_log_context(logger.info), args=("wrapped helper",))
    for thread in (plain, wrapped):
        thread.start()
        thread.join()
    by_message = {record["message"]: record for record in lines(stream)}
    assert "job" not in by_message["plain helper"]
    assert by_message["wrapped helper"]["job"] == "deploy" and by_message["wrapped helper"]["run_id"] == "run-c"


def test_celery_loggers_get_the_json_formatter() -> None:
    from celery import signals

    install_celery_json_logging()
    install_celery_json_logging()  # idempotent: one receiver per signal
    stream = io.StringIO()
    logger = logging.getLogger("conveyor.test.celery-setup")
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        # what Celery sends once it has set up its handlers at worker start
        signals.after_setup_task_logger.send(sender=None, logger=logger, loglevel=logging.INFO,
                                             logfile=None, format="", colorize=False)
        with job_log_context("run-d", "lint"):
            logger.warning("from celery")
    finally:
        logger.removeHandler(handler)
        logging.captureWarnings(False)
    [line] = lines(stream)
    assert line["message"] == "from celery" and line["job"] == "lint" and line["level"] == "WARNING"
