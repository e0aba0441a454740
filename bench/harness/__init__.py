"""`lianxin bench`: the figures operators plan with, each beside a baseline measured in the same run.

Scenarios (each a plain function in ``scenarios.py``, testable without the CLI):

* ``intake``: SubmitCase over real gRPC at a target rate (open loop) and at saturation (closed loop);
  baselines: a bare grpcio echo server, raw single-row INSERT + COMMIT on the same database.
* ``propagation``: a case submitted at county 511102 until the province 510000 holds it.
* ``catchup``: a county cut off from its parent, then reconnected: events/s until the parent has all.
* ``stats``: GetMetrics latency on a generated warehouse, for the province, a city and a county.

See docs/performance.md for what each figure means and the latest measurements.
"""
