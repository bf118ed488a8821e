"""The sending side of every message between processes: broker access, commands, jobs.

A library the processes share (api, workers, daemon, cli): it knows how to reach the
broker and what each message looks like, never how a message is handled. The handling
side lives in the process that handles it (celery's own split: ``app/control.py`` sends,
``worker/control.py`` handles): :mod:`plugvisor.daemon.control` consumes commands,
:mod:`plugvisor.workers` runs jobs.
"""
