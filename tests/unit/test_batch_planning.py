"""Unit tests: zygote chains and batches from a collected suite (pytest_tach.plan), on items
collected in process by pytester."""

from __future__ import annotations

import pytest

from pytest_tach import plan

pytest_plugins = ["pytester"]


def test_isolate_test_puts_every_test_alone(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_a="def test_a(): pass\ndef test_b(): pass\n")
    items = pytester.inline_genitems()[0]
    assert plan.batch_keys(items, "test", 2) == ["", ""]


def test_isolate_module_batches_by_module(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_one="def test_a(): pass\ndef test_b(): pass\n", test_two="def test_c(): pass\n")
    items = pytester.inline_genitems()[0]
    assert plan.batch_keys(items, "module", 2) == ["test_one.py", "test_one.py", "test_two.py"]


def test_isolate_none_cuts_a_module_that_would_hold_a_worker_at_class_boundaries(pytester: pytest.Pytester) -> None:
    """With 2 workers a chunk is max(100, n / 8) tests: a module of 250 tests in classes
    of 60 is cut where the class changes after 100 tests; a module of 10 stays whole."""
    classes = "".join(f"class TestC{c}:\n" + "".join(f"    def test_{i}(self): pass\n" for i in range(60))
                      for c in range(4))
    loose = "".join(f"def test_loose_{i}(): pass\n" for i in range(10))
    pytester.makepyfile(test_big=classes + loose, test_small=loose)
    items = pytester.inline_genitems()[0]
    keys = plan.batch_keys(items, "none", 2)
    big = [k for k in keys if k.startswith("test_big.py")]
    assert len(big) == 250 and set(keys[250:]) == {"test_small.py"}
    # chunk 0: classes 0 and 1 (the cut waits for class 1 to end at 120), then 2 and 3
    assert big[:120] == ["test_big.py#0"] * 120
    assert big[120:240] == ["test_big.py#1"] * 120
    assert big[240:] == ["test_big.py#2"] * 10
    # one worker: nothing is cut
    assert set(plan.batch_keys(items, "none", 1)) == {"test_big.py", "test_small.py"}


def test_chains_get_a_level_per_scope_that_owns_a_used_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_m="""
        import pytest

        @pytest.fixture(scope="session")
        def db(): return 1

        @pytest.fixture(scope="module")
        def table(db): return 2

        def test_uses_both(table): pass
        def test_uses_nothing(): pass
    """)
    items = pytester.inline_genitems()[0]
    chains = plan.plan(items, "test")
    (s1, m1), (s2,) = chains
    assert s1.scope == "session" and "db" in s1.fixtures
    assert m1.scope == "module" and m1.fixtures == ["table"]
    assert s2.scope == "session" and s2.key == s1.key
    # module and none: a runner sets modules up itself
    assert [[lv.scope for lv in c] for c in plan.plan(items, "module")] == [["session"], ["session"]]


def test_a_parametrized_session_fixture_adds_a_level_per_value_below_the_base(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_p="""
        import pytest

        @pytest.fixture(scope="session")
        def plain(): return 0

        @pytest.fixture(scope="session", params=[1, 2])
        def backend(request): return request.param

        @pytest.fixture(scope="session")
        def client(backend): return backend

        def test_it(plain, client): pass
    """)
    items = pytester.inline_genitems()[0]
    chains = plan.plan(items, "test")
    assert len(chains) == 2
    for index, chain in enumerate(chains):
        base, param = chain
        # (installed plugins add session fixtures of their own to the base level)
        assert "plain" in base.fixtures and not base.parametrized
        assert not {"backend", "client"} & set(base.fixtures)
        assert param.parametrized and sorted(param.fixtures) == ["backend", "client"]
        assert param.key == f"{base.key}[backend={index}]"
    assert chains[0][0].key == chains[1][0].key  # the unparametrized fixture is set up once


def test_depends_on_follows_fixture_arguments(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_d="""
        import pytest

        @pytest.fixture
        def a(): pass

        @pytest.fixture
        def b(a): pass

        @pytest.fixture
        def c(): pass

        def test_it(b, c): pass
    """)
    item = pytester.inline_genitems()[0][0]
    defs = item._fixtureinfo.name2fixturedefs
    assert plan.depends_on("b", {"a"}, defs, set())
    assert not plan.depends_on("c", {"a"}, defs, set())
