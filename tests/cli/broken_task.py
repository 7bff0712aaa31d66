"""A task file whose import fails (a missing dependency)."""

import not_installed_dependency_xyz  # noqa: F401
