"""Free-threading stress mode: each test body runs in N threads x M iterations.

Compatible with suites written for pytest-run-parallel: its markers
(``parallel_threads``, ``parallel_threads_limit``, ``force_parallel_threads``,
``iterations``, ``thread_unsafe``), fixtures (``num_parallel_threads``, ``num_iterations``,
``thread_index``, ``iteration_index``, ``thread_comp``) and ini keys
(``thread_unsafe_fixtures``, ``thread_unsafe_functions``) mean the same here, with the
same precedence. What tach adds: the threads run inside the engine's isolated process,
so a segfault or a deadlock fails that test only; every failing call is counted and
every distinct exception type is shown, not just the first one.

Fixtures are set up once per test and shared by its threads, as in pytest-run-parallel;
``tmp_path``/``tmpdir`` give each thread its own subdirectory.

The package: ``plugin`` (the hooks), ``plan`` (threads x iterations per test),
``threads`` (running a body in threads), ``unsafe`` (what makes a test thread-unsafe),
``fixtures`` (pytest-run-parallel's fixtures). The GIL watch is ``pytest_tach.gil``: the
header line of every run uses it too.
"""
