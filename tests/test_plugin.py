"""The pytest plugin costs nothing until its option is used; ``AIOLOCKS_DEBUG`` never breaks.

The ``pytest11`` entry point loads the plugin in every pytest session of every environment where
aiolocks is installed, so a plain session must not import aiolocks, and a bad
``AIOLOCKS_DEBUG`` value must give one warning, not an error.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

NOTHING_OF_AIOLOCKS = """
import sys

def test_nothing_of_aiolocks_is_imported():
    assert [m for m in sys.modules if m.split(".")[0] == "aiolocks"] == []
"""

IMPORTS_AIOLOCKS = """
import aiolocks

def test_debug_mode_is_off():
    assert not aiolocks.debug.enabled()
"""


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_loading_the_entry_point_imports_nothing_of_aiolocks() -> None:
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "[ep] = [ep for ep in entry_points(group='pytest11') if ep.name == 'aiolocks']\n"
        "ep.load()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiolocks'))\n"
    )
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_plain_pytest_session_imports_nothing_of_aiolocks(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(NOTHING_OF_AIOLOCKS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    help_text = pytester.runpytest_subprocess("--help")
    help_text.stdout.fnmatch_lines(["*--aiolocks-debug *", "*--aiolocks-debug-warn*"])


def test_bad_environment_value_is_one_warning_in_a_test_session(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOLOCKS_DEBUG", "bogus")
    pytester.makepyfile(test_uses=IMPORTS_AIOLOCKS, test_other="def test_other(): pass")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        ["*RuntimeWarning: AIOLOCKS_DEBUG='bogus' is not understood*accepted values: 1*warn*0*"]
    )


def test_bad_environment_value_does_not_stop_the_debug_option(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOLOCKS_DEBUG", "bogus")
    pytester.makepyfile(
        """
        import aiolocks

        def test_debug_mode_is_on():
            assert aiolocks.debug.enabled()
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--aiolocks-debug")
    result.assert_outcomes(passed=1)


def test_plugin_loads_by_module_name_when_autoload_is_off(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(
        """
        import aiolocks

        def test_debug_mode_is_on():
            assert aiolocks.debug.enabled()
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-p", "aiolocks.pytest_plugin", "--aiolocks-debug"
    )
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("value", ["bogus", "maybe", "2"])
def test_bad_environment_value_warns_at_import_and_leaves_debug_off(value: str) -> None:
    proc = _python("import aiolocks; print(aiolocks.debug.enabled())", AIOLOCKS_DEBUG=value)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    # one warning, attributed to the importing line (3.13+ also prints that line's source)
    assert proc.stderr.count("Warning") == 1, proc.stderr
    warning = proc.stderr.splitlines()[0]
    assert warning.startswith("<string>:1: RuntimeWarning: ")
    assert f"AIOLOCKS_DEBUG={value!r}" in warning
    assert "accepted values: 1 (or raise, true, yes, on), warn, 0" in warning


@pytest.mark.parametrize("value", ["", "0", "off", "FALSE"])
def test_off_values_are_accepted_silently(value: str) -> None:
    proc = _python("import aiolocks; print(aiolocks.debug.enabled())", AIOLOCKS_DEBUG=value)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "False", "")
