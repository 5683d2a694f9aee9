"""Issue 28's nine bugs that once passed the suite stay caught: each, planted in a copy of the sources, fails its
module's own tests (tests/planted_bugs.py)."""

from __future__ import annotations

import pytest

from tests import planted_bugs


@pytest.mark.slow
def test_every_planted_bug_fails_its_modules_tests(capsys):
    survivors = planted_bugs.main([])
    assert survivors == 0, capsys.readouterr().out
