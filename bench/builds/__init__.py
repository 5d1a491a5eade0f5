"""What a build is: a source turned into cached artifacts (`bench build`), or a program a user points at;
and who it is (its identity, asked of the build itself)."""

from bench.builds.identity import BuildIdentity

__all__ = ["BuildIdentity"]
