"""Benchmarks: workspace-proxy side by side with the upstream itself, nginx and a naive proxy.

``python -m benchmarks.run [--quick]`` (or ``make bench`` / ``make bench-quick``) runs every
scenario on loopback and writes ``benchmarks/results/latest.json``, ``docs/benchmarks.md`` and
its charts (``docs/charts/*.svg``); ``python -m benchmarks.report --from FILE`` writes the page
and charts again from saved results.

Modules: ``system`` (machine facts, tools, /proc accounting), ``servers`` (the processes under
test and their generated configs), ``calltypes`` (the call types of issue 16, as raw requests),
``teams`` (the proxy against the number of teams configured), ``load`` (wrk or a Python client,
downloads, bursts), ``report`` (medians, targets, Markdown), ``charts`` (the SVG charts,
matplotlib: the ``bench`` extra), ``run`` (the scenarios), ``naive_proxy`` and
``fixed_upstream`` (small servers the harness starts as child processes).
"""
