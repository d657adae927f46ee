"""The console of ``viva materialize`` and ``viva ingest``: Dagster's lines, but a step that
fails on purpose says why in one line.

An asset raises ``dg.Failure`` when it knows what is wrong and what to do ("no shard has
synthetic_pairs yet; materialize the shards first"). Dagster's console logger prints that
reason between the step's and the run's failure events, each followed by some twenty lines of
the framework's own stack, so the reason is hard to find in the terminal. Here such an event
ends with the reason and nothing else; any other error (a bug) keeps its stack trace, and the
UI's event log keeps everything either way.
"""

from __future__ import annotations

import logging
import sys

import dagster as dg

#: Dagster's console format: the record's message already names the job, run, step and event.
_FORMAT = "%(asctime)s - dagster - %(levelname)s - %(message)s"


def failure_reason(record: logging.LogRecord) -> str | None:
    """The reason of a step or run that failed with ``dg.Failure``, from a Dagster log record,
    else None (not a failure event, or an error whose stack trace matters). A failure that
    the step's retry policy retried until it gave up says so after its reason."""
    event = getattr(record, "dagster_event", None)
    error = getattr(getattr(event, "event_specific_data", None), "error", None)
    retries = ""
    if error is not None and error.cls_name == "RetryRequestedFromPolicy":
        retries = f" ({error.message.strip().lower()})"  # "exceeded max_retries of 2"
        error = getattr(error, "cause", None)
    if error is None or error.cls_name != "Failure":
        return None
    return error.message.split(": ", 1)[-1].strip() + retries


class _ReasonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        reason = failure_reason(record)
        if reason is None:
            return super().format(record)
        headline = logging.makeLogRecord(record.__dict__)
        headline.msg = f"{str(record.msg).splitlines()[0]} Reason: {reason}"
        return super().format(headline)


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="Dagster's console lines; a dg.Failure's reason without the framework's stack.",
)
def console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.Logger("dagster", level=init_context.logger_config["log_level"].upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_ReasonFormatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S %z"))
    logger.addHandler(handler)
    return logger
