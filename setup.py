"""Packaging beyond pyproject.toml: the wheel carries the site's templates (dashboard/templates) and the
Alembic migrations (db/) as package data of bench._templates and bench._migrations, found at run time
through importlib.resources (bench/package_data.py)."""

from setuptools import find_namespace_packages, setup

DATA = {
    "bench._templates": "dashboard/templates",
    "bench._migrations": "db",
    "bench._migrations.versions": "db/versions",
}

setup(
    # namespace search: a subpackage without __init__.py ships too
    packages=[*find_namespace_packages(include=["bench", "bench.*"], exclude=["*.__pycache__"]), *DATA],
    package_dir=DATA,
    package_data={name: ["*.j2", "*.css", "*.js", "*.ini", "*.py", "*.mako"] for name in DATA},
    exclude_package_data={name: ["*.sqlite*"] for name in DATA},
)
