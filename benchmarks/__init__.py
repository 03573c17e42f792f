"""Benchmarks: workspace-proxy side by side with the upstream itself, nginx and a naive proxy.

``python -m benchmarks.run [--quick]`` (or ``make bench`` / ``make bench-quick``) runs every
scenario on loopback and writes ``benchmarks/results/latest.json`` and ``docs/benchmarks.md``.

Modules: ``system`` (machine facts, tools, /proc accounting), ``servers`` (the processes under
test and their generated configs), ``calltypes`` (the call types of issue 16, as raw requests),
``load`` (wrk or a Python client, downloads, bursts), ``report`` (medians, targets, Markdown),
``run`` (the scenarios), ``naive_proxy`` and ``fixed_upstream`` (small servers the harness starts
as child processes).
"""
