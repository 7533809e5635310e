"""Soak test: a steady population of callers for a long time, and proof nothing leaks.

    python -m loadtest.soak --callers 40 --minutes 30 [--url ws://127.0.0.1:8000/ws]
        [--json soak.json] [--plot soak.png]

Without ``--url`` it starts ``voiceforge serve --profile bench`` on 127.0.0.1 in a
child process (as ``python -m loadtest`` does). It samples the server's
``/metrics`` once idle (the baseline), every ``--sample-s`` seconds while the
callers run (``loadtest.runner.run_load``) and while the server settles, and once
more ``--settle-s`` seconds after the last caller hung up. The run passes (exit
0) only when every measured criterion does:

* resident memory is flat over the steady part of the load: its least-squares
  slope is at most ``--max-rss-slope-mb-h`` and the mean of the window's last
  tenth is within ``--max-rss-drift-pct`` of its first tenth;
* open file descriptors are flat the same way (``--max-fd-slope-per-h``) and come
  back to the baseline (``--fd-tolerance``) once the callers are gone;
* asyncio tasks and threads come back to the baseline (``--task-tolerance``,
  ``--thread-tolerance``) once the callers are gone;
* no caller saw an error or a failure, the server counted no new error event
  (``voiceforge_errors_total``), every ``/metrics`` scrape answered, and
  ``voiceforge_sessions_active`` is back to its baseline (0 on a dedicated server).

The steady part is the load after the ramp and a warm-up of a third of the
duration: allocator pools, caches and connection buffers fill during the first
minutes, and a leak is what keeps growing after that. A criterion whose metric the
server does not export is reported as ``not measured`` and neither passes nor fails.

The package, by concern: ``samples`` (a scrape of ``/metrics``, the phases of a
run), ``verdict`` (the criteria, pure functions of the samples), ``run`` (the
callers and the sampling), ``output`` (JSON, plot, printed verdict) and ``cli``.
"""

from loadtest.soak.cli import main
from loadtest.soak.output import plot, print_verdict, report_json
from loadtest.soak.run import SoakConfig, SoakResult, soak
from loadtest.soak.samples import Sample, Timeline, parse_metrics, scrape
from loadtest.soak.verdict import (
    Criterion,
    Thresholds,
    Verdict,
    drift_pct,
    evaluate,
    new_counts,
    slope_per_hour,
)

__all__ = [
    "Criterion", "Sample", "SoakConfig", "SoakResult", "Thresholds", "Timeline", "Verdict",
    "drift_pct", "evaluate", "main", "new_counts", "parse_metrics", "plot", "print_verdict",
    "report_json", "scrape", "slope_per_hour", "soak",
]
