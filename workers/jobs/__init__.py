"""Built-in jobs, and the allowlist that decides what may run.

A job is named by an entry point `module:function` in its JobSpec and run as
`function(ctx, **params)` with JSON parameters; it returns a JSON-safe dict of final metrics.
Nothing from the broker is ever unpickled or evaluated: the worker imports the module only
when it is on the allowlist, which is every module under `workers.jobs` plus the module
prefixes the operator configures (fleet settings). The check runs at submit time and again in
the job process, just before the import.

Built-in entry points:

- `workers.jobs.digits_torch:train`: a small PyTorch classifier on scikit-learn's digits.
- `workers.jobs.digits_tf:train`: the same model in Keras 3 on TensorFlow.
- `workers.jobs.synthetic:noop|sleep|burn_cpu|hold_memory|steps|print_lines|fail`: load and
  fault jobs for benchmarks and tests.

Job modules import their framework inside the function, so listing or checking entry points
never loads torch or tensorflow.
"""
