"""Benchmark tables: each config trained and evaluated over N seeds -> experiments/results/<config>.{md,csv}.

    python -m experiments.reproduce --configs=melu_ml100k,recbole_metarec_ml100k --seeds=5
    python -m experiments.reproduce --configs=smoke_synthetic --seeds=2 --set num_steps=20 --out=/tmp/results

Each config (`configs/<name>.py[:arg]`, `get_config(arg)`) gets `seeds=N` and the `--set` overrides (dotted keys;
a key the config lacks fails), then runs with `train_and_evaluate` into RUNS/reproduce/<name>/ (a rerun resumes
from its checkpoints; a finished run of the same config is reused, a different one refused). The table holds the
learner, its comparison learners and the reference baselines, per scenario, mean ± std over the seeds; the
Markdown header records the config, overrides, commit, seeds, training steps, wall time and machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from experiments import runner
from transfer_meta import report


def header(spec: str, overrides: dict, info: runner.RunInfo, command: str) -> str:
  """The Markdown header of one config's table (provenance lines)."""
  results, train = info.results, info.results["train"]
  return "\n".join(
    [
      f"# {runner.config_name(spec)}: {results['learner']} ({results['model']}) on {results['dataset']}, "
      f"protocol {results['protocol']} v{results['protocol_version']}",
      "",
      f"`{command}`",
      "",
      f"- config: `{os.path.relpath(runner.config_path(spec), runner.ROOT)}`"
      + (f" arg `{spec.partition(':')[2]}`" if ":" in spec else ""),
      f"- overrides: {', '.join(f'`{k}={v!r}`' for k, v in overrides.items()) or 'none'}",
      f"- commit: {runner.commit()}",
      f"- seeds: {results['seeds']} (each seed its own split, initialisation and data order)",
      f"- training: {train['steps']} meta-steps per learner; {train['seconds']:.1f} s for {results['learner']} "
      f"({train['tasks_per_second']:.1f} tasks/s)",
      f"- wall time (train + evaluate, all learners): {runner.describe_wall(info)}",
      f"- machine: {runner.machine()}",
      "",
    ]
  )


def notes(results: dict) -> list[str]:
  selection = results.get("selection", {})
  out = ["mean ± std over seeds; std is the population standard deviation (ddof=0), as in results.json."]
  if selection:
    out.append(
      f"meta-parameters selected per seed on {selection['metric']} ({selection['mode']}); best steps "
      f"{selection['best_step']}."
    )
  if results.get("manifest_hashes"):
    out.append(f"split manifest hashes: {', '.join(h[:12] for h in results['manifest_hashes'])}.")
  return out


def reproduce(spec: str, seeds: int | None, overrides: dict, runs: str, out: str, command: str) -> tuple[str, str]:
  """Runs one config and writes its table.

  Args:
    spec: config spec ('melu_ml100k' or 'configs/x.py:arg').
    seeds: number of seeds (0..N-1), or None to keep the config's.
    overrides: dotted-key overrides applied after `seeds`.
    runs: runs root; the workdir is RUNS/reproduce/<config name>.
    out: output directory of the tables.
    command: the command line, recorded in the header.
  Returns:
    (markdown path, csv path).
  """
  all_overrides = ({"seeds": seeds} if seeds is not None else {}) | overrides
  config = runner.apply_overrides(runner.load_config(spec), all_overrides)
  name = runner.config_name(spec)
  info = runner.run(config, os.path.join(runs, "reproduce", name))
  rows = report.summarize(runner.method_values(info.results))
  return report.write_table(
    rows, os.path.join(out, name), header=header(spec, all_overrides, info, command), notes=notes(info.results)
  )


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", required=True, help="comma-separated config specs (name or name:arg)")
  runner.add_run_args(parser, "RUNS/reproduce/<config>")
  args = runner.parse_run_args(parser, argv)
  specs = [s for s in args.configs.split(",") if s]
  if not specs:
    parser.error("--configs names no config")
  overrides = runner.parse_sets(args.sets)
  runner.enable_compilation_cache(
    os.path.join(args.runs, "jax_cache") if args.compilation_cache == "auto" else args.compilation_cache
  )
  command = "python -m experiments.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])
  start = time.time()
  for spec in specs:
    md, csv = reproduce(spec, args.seeds, overrides, args.runs, args.out, command)
    print(f"wrote {md} and {csv}")
  print(f"total wall time {time.time() - start:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
