"""The fault harness of ``lianxin faults`` (issue #10): real processes, private brokers, a controllable proxy.

Every scenario runs on loopback with infrastructure the harness starts itself (a private
PostgreSQL cluster, a private RabbitMQ node, a TCP proxy), so restarting them never disturbs the
machine's shared PostgreSQL on :5432 or RabbitMQ on :5672. docs/faults.md describes the scenarios.

Modules: ``proxy`` (the TCP proxy), ``infra`` (private PostgreSQL and RabbitMQ, bounded in time),
``cluster`` (node processes: api + worker per service, embedded nodes), ``load`` (the load
generator with idempotency keys), ``scenarios`` (fault, load, convergence and the checks), ``cli``.
"""
