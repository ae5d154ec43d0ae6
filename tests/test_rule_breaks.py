"""scripts/check-rule-tests.py breaks each money and bench rule by replacing its text; that
text must still be in the code, once, or the script would break nothing (it did rot once:
the store's transaction changed under it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_rule_tests",
                                               ROOT / "scripts" / "check-rule-tests.py")
assert _spec is not None and _spec.loader is not None
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)


@pytest.mark.parametrize("rule", script.BREAKS, ids=lambda b: b.rule)
def test_each_rule_the_script_breaks_is_in_the_code_once(rule: Any) -> None:
    text = (ROOT / rule.path).read_text()
    assert text.count(rule.rule_text) == 1, (rule.rule, rule.path)
    # and its ``-k`` selector names a test of tests/test_rules.py
    assert rule.tests in (ROOT / "tests" / "test_rules.py").read_text(), rule.tests
