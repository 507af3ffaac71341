"""Private helpers shared by the benchmark harnesses (load generator, OpenSSH legs, results).

They live in a package rather than in ``benchmarks/_*.py`` files because ``run_all.py`` treats
every top-level ``benchmarks/*.py`` (except ``machine.py``) as a harness and calls its
``main(argv)``; a subdirectory is not globbed. Harnesses put ``benchmarks/`` on ``sys.path``
and import ``_benchlib.<module>``.
"""
