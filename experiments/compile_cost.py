"""CPU seconds to trace, lower and compile tests/test_learners.py's smoke program for one backbone (every learner's
`adapt` and vmapped `task_grad` in one jit), under given XLA compile options: what the suite's costliest file spends.

    python -m experiments.compile_cost --model=melu
    python -m experiments.compile_cost --model=melu --options='{"xla_cpu_use_fusion_emitters": false}'
    python -m experiments.compile_cost --model=mf --per_learner   # the test's layout now: one jit per learner
    python -m experiments.compile_cost --model=transformer --per_learner --no_compile [--plain_apply]

Each phase is timed as this process's CPU (user + sys, all threads: XLA compiles fusions on a thread pool), so
the figure hardly depends on other jobs; the machine, the load average and the program's HLO size are printed
beside it. Run each setting in a fresh process; the persistent compilation cache is switched off here, so every
run compiles.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def compile_cost(
  model_name: str, options: dict, per_learner: bool = False, plain_apply: bool = False, no_compile: bool = False
) -> dict:
  """{'trace_s', 'lower_s', 'compile_s', 'hlo_lines'} of the smoke program for `model_name` ('tiny' or a MODELS name).

  Args:
    model_name: a registered backbone (narrowed as the test narrows it) or 'tiny' (the test's tiny model).
    options: XLA compile options passed to `jax.jit(compiler_options=...)`, e.g. {'xla_backend_optimization_level': 0}.
    per_learner: one program per learner (tests/test_learners.py's `check_learners` since s13b), the phases summed
      over them; False: one program holding every learner (its layout before).
    plain_apply: the backbone's own `apply`/`aux` instead of the test's `trace_once` wrappers (its layout before).
    no_compile: time tracing and lowering only (`compile_s` stays 0).
  """
  import jax

  jax.config.update("jax_enable_compilation_cache", False)  # time the compile, not a cache read
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  import test_learners as tl

  if model_name == "tiny":
    model = tl.tiny_model()
    support0 = jax.tree.map(lambda a: a[0], tl.tiny_batch()["support"])
    params = model.init(jax.random.key(0), support0, support0)
  else:
    model, params = tl.built_model(model_name)
    if plain_apply:
      aux = model.aux and {k: f.__wrapped__ for k, f in model.aux.items()}
      model = model._replace(apply=model.apply.__wrapped__, aux=aux)
  names = [n for n in tl.LEARNERS if tl.LEARNER_MODELS.get(n, model_name) == model_name]
  learners = {n: tl.get_learner(n, model) for n in names}
  batch, key = tl.tiny_batch(2), jax.random.key(1)
  metas = {n: lr.init(key, params) for n, lr in learners.items()}
  states = {n: (lr.init_state(key, metas[n]),) if lr.init_state else () for n, lr in learners.items()}

  def probe(metas, states, batch, key):  # the test's program (tests/test_learners.py check_learners)
    support0 = jax.tree.map(lambda a: a[0], batch["support"])
    out = {}
    for n in metas:  # the learners of this program
      lr = learners[n]
      vmapped = jax.vmap(lr.task_grad, in_axes=(None, 0, None) + (None,) * len(states[n]))
      out[n] = (lr.adapt(metas[n], support0, key, *states[n]), vmapped(metas[n], batch, key, *states[n]))
    return out

  groups = [[n] for n in learners] if per_learner else [list(learners)]
  totals = {"trace_s": 0.0, "lower_s": 0.0, "compile_s": 0.0, "hlo_lines": 0}
  for group in groups:
    sub = lambda tree, group=group: {n: tree[n] for n in group}  # noqa: E731
    t0 = _cpu()
    traced = jax.jit(probe, compiler_options=options).trace(sub(metas), sub(states), batch, key)
    t1 = _cpu()
    lowered = traced.lower()
    t2 = _cpu()
    if not no_compile:
      lowered.compile()
    t3 = _cpu()
    totals["trace_s"] += t1 - t0
    totals["lower_s"] += t2 - t1
    totals["compile_s"] += t3 - t2
    totals["hlo_lines"] += lowered.as_text().count("\n")
  return {**{k: round(v, 2) for k, v in totals.items()}, "learners": len(learners), "programs": len(groups)}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="melu", help="'tiny' or a registered backbone")
  parser.add_argument("--options", default="{}", help="JSON dict of XLA compile options")
  parser.add_argument("--per_learner", action="store_true", help="one program per learner (the test's layout)")
  parser.add_argument("--plain_apply", action="store_true", help="the model's own apply, not the test's trace_once")
  parser.add_argument("--no_compile", action="store_true", help="trace and lower only")
  args = parser.parse_args(argv)
  options = json.loads(args.options)
  if not isinstance(options, dict):
    raise SystemExit(f"--options must be a JSON object, got {args.options!r}")
  from experiments import bench_common

  load0 = os.getloadavg()[0]
  out = compile_cost(args.model, options, args.per_learner, args.plain_apply, args.no_compile)
  out.update(
    model=args.model,
    options=options,
    per_learner=args.per_learner,
    plain_apply=args.plain_apply,
    no_compile=args.no_compile,
    load_1min=(round(load0, 2), round(os.getloadavg()[0], 2)),
  )
  out["machine"] = bench_common.machine()
  print(json.dumps(out))


if __name__ == "__main__":
  main()
