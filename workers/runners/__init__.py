"""Framework runners: make a job process use exactly the resources it was given.

Order matters, and the job process follows it:

1. Before importing any framework, the process sets `job_env(resources)` in `os.environ`
   (thread counts for OpenMP/MKL/OpenBLAS/TF, and CUDA_VISIBLE_DEVICES from the GPU ids).
   These are read once, when the native libraries load; setting them later does nothing.
   The caller sets them; this module never changes os.environ on import.
2. Then it calls `prepare(framework, resources)`, which imports the framework and applies the
   settings that have an API (torch.set_num_threads, tf.config.threading...).
3. Then it imports the job module and calls the job.

torch and tensorflow are imported only inside `workers.runners.torch`/`.tensorflow` and the
job modules, lazily, so the rest of `workers` (and all of `fleet`) starts without them.
"""

from __future__ import annotations

import importlib

from workers.context import Allotment

FRAMEWORKS = ("torch", "tensorflow", "none")
_ALIASES = {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow", "": "none"}

_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
)


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps every native thread pool at `threads` (inter-op pools at 1)."""
    threads = max(1, int(threads))
    env = {name: str(threads) for name in _THREAD_VARS}
    env["TF_NUM_INTEROP_THREADS"] = "1"
    return env


def gpu_env(resources: Allotment) -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for the GPUs given; an empty value hides every GPU from a job
    that was given none (otherwise it would see, and use, all of the node's)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in resources.gpu_ids)}


def job_env(resources: Allotment) -> dict[str, str]:
    """Everything a job process must have in os.environ before it imports a framework."""
    return {**thread_env(resources.threads), **gpu_env(resources)}


def prepare(framework: str, resources: Allotment) -> None:
    """Apply the in-process thread settings of `framework` ("torch", "tensorflow", "none";
    "pytorch", "tf" and "keras" are accepted as aliases).

    Call after `job_env` is in os.environ and before the job module is imported.
    """
    framework = _ALIASES.get(framework, framework)
    if framework == "none":
        return
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {FRAMEWORKS}")
    runner = importlib.import_module(f"workers.runners.{framework}")
    runner.prepare(resources)
