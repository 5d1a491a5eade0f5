"""What a build is: a source turned into cached artifacts (`bench build`), or an interpreter with
`llama_cpp` pointed at a libllama directory; and who it is (its identity, asked of the build itself)."""

from bench.builds.interpreter import WORKER, BuildIdentity, build_env, identify

__all__ = ["WORKER", "BuildIdentity", "build_env", "identify"]
