"""``pytest --aiolocks-debug``: run a test session in aiolocks' debug mode.

The plugin itself is the top-level module ``_aiolocks_pytestplugin``, which pytest loads
through the ``pytest11`` entry point without importing aiolocks.  This module stays for
``pytest -p aiolocks.pytest_plugin`` when plugin autoloading is disabled
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``); with autoloading on, the plugin is already active.
"""

from __future__ import annotations

from _aiolocks_pytestplugin import pytest_addoption, pytest_configure, pytest_unconfigure

__all__ = ["pytest_addoption", "pytest_configure", "pytest_unconfigure"]
