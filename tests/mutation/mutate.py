"""Mutation testing of the core modules with cosmic-ray (https://github.com/sixty-north/cosmic-ray).

    pip install -c constraints.txt -e '.[mutation]'
    python tests/mutation/mutate.py masking objective     # or: all; --report only prints
    python tests/mutation/mutate.py hf --sample 60          # a random 60 of its mutants: a quicker estimate
    python tests/mutation/mutate.py --list                  # modules and the tests that guard them

Each mutant is one small change to one module (an operator, a comparison, a number, a boolean), applied
to a copy of the repository under .mutation/MODULE/ and judged by that module's fast tests run in a
fresh process (`pytest -x`): killed (a test failed), survived (all passed) or timeout. A JAX test needs a
fresh process per mutant (the module is imported and its functions traced), which is why this is
cosmic-ray (mutate on disk, run a command) rather than mutmut (trampolines in forked workers, which
fork after XLA has started its threads). Sessions resume: rerunning continues the pending mutants.

Each run (and `--report`) also writes tests/mutation/results/MODULE.json, committed: the outcome of every
mutant run so far, keyed by operator and occurrence, with the source's sha256. A new session on another
checkout of the same source takes the killed mutants from it and runs only the rest (survivors are run
again: a test added since may kill them), so a module too slow for one sitting is finished in several.

Binary-operator swaps are limited to the natural partners (+ <-> -, * <-> /, // -> /, ** -> *): the
other eight replacements per operator (<<, |, %, ...) fail at trace time and only cost minutes. A line
marked `# pragma: no mutate` is skipped: use it only for a proven-equivalent mutant, with the reason.
Not in CI: one module takes 20-90 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORK = os.path.join(ROOT, ".mutation")
RESULTS = os.path.join(ROOT, "tests", "mutation", "results")

# module -> (source file, the tests that guard it: fast ones only)
MODULES = {
    "masking": ("electra_jax/masking.py", "tests/test_masking.py"),
    "objective": ("electra_jax/objective.py", "tests/test_objective.py"),
    "optim": ("electra_jax/optim.py", "tests/test_optim.py tests/test_finetune.py -k 'layerwise or optim'"),
    "hf": ("electra_jax/hf.py", "tests/test_hf_parity.py tests/test_qa.py -k 'not thirty and (not test_qa or span_head)'"),
    "model": ("electra_jax/model.py", "tests/test_config_and_model.py tests/test_hf_parity.py "
              "tests/test_objective.py -k 'logits or round_trip or init or scan or mlm_objective'"),
    "checkpoint": ("electra_jax/checkpoint.py", "tests/test_pretrain.py -k 'resumed or kill_9 or keeps or "
                   "another_model or nan_stops or unwritable or export_loads'"),
    "reader": ("electra_jax/data/reader.py", "tests/test_reader.py"),
    "finetune": ("electra_jax/finetune/tasks.py", "tests/test_finetune.py -k 'not learns_a_task'"),
    "qa": ("electra_jax/finetune/qa.py", "tests/test_qa.py -k 'windows or max_context or offsets or crossing "
           "or truncated or decoding or no_valid or bad_squad or misaligned or tfds or first_character or no_sub_token'"),
}

KEPT_SWAPS = ("Add_Sub", "Sub_Add", "Mul_Div", "Div_Mul", "FloorDiv_Div", "Pow_Mul")


def _config(module: str, copy: str) -> str:
    source, tests = MODULES[module]
    path = os.path.join(WORK, module, "config.toml")
    keep = "|".join(KEPT_SWAPS)
    # One XLA compilation cache for all of a module's mutants: a mutant recompiles only what it changed
    # (the cache is keyed by the compiled program), so objective's tests take 20 s, not 46 s.
    cache = os.path.join(WORK, module, "xla-cache")
    with open(path, "w") as f:
        f.write(f"""[cosmic-ray]
module-path = "{source}"
timeout = 300.0
excluded-modules = []
test-command = "env PYTHONPATH={copy} JAX_COMPILATION_CACHE_DIR={cache} JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 {sys.executable} -m pytest -x -q -p no:cacheprovider {tests}"

[cosmic-ray.distributor]
name = "local"

[cosmic-ray.filters.operators-filter]
exclude-operators = ["core/ReplaceBinaryOperator_(?!({keep})$).*"]
""")
    return path


def copy_repository(dst: str) -> None:
    """The repository's tracked and untracked-but-not-ignored files, copied to `dst` (mutants go there)."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)) and not name.startswith(".mutation/"):
            os.makedirs(os.path.join(dst, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(dst, name))


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _sample(session: str, keep: int) -> None:
    """Leave `keep` pending mutants, drawn at random (seed 0), and mark the others skipped ("unsampled")."""
    import random

    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(session, WorkDB.Mode.open) as db:
        pending = sorted(db.pending_work_items, key=lambda item: item.job_id)
        random.Random(0).shuffle(pending)
        for item in pending[keep:]:
            db.set_result(item.job_id, WorkResult(output="unsampled", worker_outcome=WorkerOutcome.SKIPPED))


def _sha256(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _key(operator_name: str, occurrence: int) -> str:
    """A mutant's name, the same in every session on the same source: operator and occurrence."""
    return f"{operator_name}#{occurrence}"


def _reuse_killed(module: str, session: str, source: str) -> int:
    """Mark the pending mutants that RESULTS/MODULE.json records as killed on this very source; returns
    how many."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    path = os.path.join(RESULTS, f"{module}.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        saved = json.load(f)
    if saved["sha256"] != _sha256(source):
        print(f"{module}: {path} is for another version of {MODULES[module][0]}; running every mutant")
        return 0
    killed = {k for k, r in saved["mutants"].items() if r["outcome"] == "killed"}
    n = 0
    with use_db(session, WorkDB.Mode.open) as db:
        for item in list(db.pending_work_items):
            if _key(item.mutations[0].operator_name, item.mutations[0].occurrence) in killed:
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.NORMAL,
                                                      test_outcome=TestOutcome.KILLED,
                                                      output=f"killed in an earlier session ({path})"))
                n += 1
    return n


def _retry_survivors(session: str) -> int:
    """Make the survivors pending again (to be judged by tests added since); returns how many."""
    import sqlite3

    with sqlite3.connect(session) as db:
        return db.execute("DELETE FROM work_results WHERE worker_outcome = 'NORMAL' AND test_outcome = 'SURVIVED'").rowcount


def run(module: str, sample: int | None = None, retry_survivors: bool = False) -> None:
    copy = os.path.join(WORK, module, "repo")
    session = os.path.join(WORK, module, "session.sqlite")
    if not os.path.exists(session):  # a new session on the current sources
        shutil.rmtree(os.path.join(WORK, module), ignore_errors=True)
        copy_repository(copy)
        config = _config(module, copy)
        subprocess.run([_tool("cosmic-ray"), "init", config, session], cwd=copy, check=True)
        subprocess.run([_tool("cr-filter-operators"), session, config], cwd=copy, check=True)
        subprocess.run([_tool("cr-filter-pragma"), session], cwd=copy, check=True)
        reused = _reuse_killed(module, session, os.path.join(copy, MODULES[module][0]))
        if reused:
            print(f"{module}: {reused} mutants killed in an earlier session on this source (not run again)")
        if sample:
            _sample(session, sample)
        shutil.copy2(os.path.join(copy, MODULES[module][0]), os.path.join(WORK, module, "pristine.py"))
    # An interrupted exec can leave its last mutant on disk: start again from the pristine source.
    shutil.copy2(os.path.join(WORK, module, "pristine.py"), os.path.join(copy, MODULES[module][0]))
    # The pending mutants are judged by today's tests (the source stays the session's).
    shutil.copytree(os.path.join(ROOT, "tests"), os.path.join(copy, "tests"), dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "results"))
    if retry_survivors:
        print(f"{module}: {_retry_survivors(session)} survivors to run again")
    config = os.path.join(WORK, module, "config.toml")
    subprocess.run([_tool("cosmic-ray"), "exec", config, session], cwd=copy, check=True)


def report(module: str) -> dict | None:
    """{module, mutants, killed, survived, pending, skipped, score, survivors: [line, operator, diff]}."""
    session = os.path.join(WORK, module, "session.sqlite")
    if not os.path.exists(session):
        return None
    dump = subprocess.run([_tool("cosmic-ray"), "dump", session], capture_output=True, text=True, check=True)
    counts = {"killed": 0, "survived": 0, "pending": 0, "skipped": 0, "unsampled": 0}
    survivors, outcomes = [], {}
    for line in dump.stdout.splitlines():
        item, result = json.loads(line)
        m = item["mutations"][0]
        if result is None:
            counts["pending"] += 1
        elif result["worker_outcome"] == "skipped":
            counts["unsampled" if result.get("output") == "unsampled" else "skipped"] += 1
        elif result["worker_outcome"] != "normal" or result["test_outcome"] != "survived":
            counts["killed"] += 1  # a test failed, timed out, or the mutant could not even be imported
            outcomes[_key(m["operator_name"], m["occurrence"])] = {"line": m["start_pos"][0], "outcome": "killed"}
        else:
            counts["survived"] += 1
            survivors.append({"line": m["start_pos"][0], "operator": m["operator_name"].split("/")[-1],
                              "diff": "".join(l for l in (result.get("diff") or "").splitlines(True)
                                              if l[:1] in "+-" and l[:3] not in ("+++", "---")).strip()})
            outcomes[_key(m["operator_name"], m["occurrence"])] = {"line": m["start_pos"][0], "outcome": "survived", "diff": survivors[-1]["diff"]}
    _save_results(module, outcomes)
    done = counts["killed"] + counts["survived"]
    return {"module": module, "mutants": done, **counts,
            "score": round(counts["killed"] / done, 3) if done else None, "survivors": survivors}


def _save_results(module: str, outcomes: dict) -> None:
    """RESULTS/MODULE.json: this session's outcomes merged into those already recorded for the same source
    (written whole, then renamed)."""
    source = os.path.join(WORK, module, "pristine.py")
    if not outcomes or not os.path.exists(source):
        return
    path, sha = os.path.join(RESULTS, f"{module}.json"), _sha256(source)
    mutants = {}
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        if saved["sha256"] == sha:
            mutants = saved["mutants"]
    mutants.update(outcomes)
    os.makedirs(RESULTS, exist_ok=True)
    head = json.dumps({"source": MODULES[module][0], "sha256": sha, "tests": MODULES[module][1]})[:-1]
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(mutants.items(), key=lambda kv: (kv[1]["line"], kv[0]))]
    with open(path + ".tmp", "w") as f:  # a mutant a line, so that a rerun's changes read as a diff
        f.write(head + ', "mutants": {\n' + ",\n".join(lines) + "\n}}\n")
    os.replace(path + ".tmp", path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"{', '.join(MODULES)} or all")
    parser.add_argument("--report", action="store_true", help="only print the reports of earlier runs")
    parser.add_argument("--sample", type=int, default=None, metavar="N",
                        help="a new session runs only N mutants drawn at random (seed 0): an estimate of the "
                        "score in less time")
    parser.add_argument("--retry-survivors", action="store_true",
                        help="run the survivors again, with the tests as they are now (after adding tests for them)")
    parser.add_argument("--list", action="store_true", help="the modules and their tests")
    args = parser.parse_args()
    if args.list:
        for name, (source, tests) in MODULES.items():
            print(f"{name:11s} {source:32s} {tests}")
        return 0
    modules = list(MODULES) if args.modules == ["all"] else args.modules
    unknown = [m for m in modules if m not in MODULES]
    if unknown or not modules:
        parser.error(f"name modules from {', '.join(MODULES)} (or all); got {unknown or 'none'}")
    for module in modules:
        if not args.report:
            run(module, args.sample, args.retry_survivors)
        r = report(module)
        if r is None:
            print(f"{module}: no session yet")
            continue
        sampled = f", {r['unsampled']} not sampled" if r["unsampled"] else ""
        print(f"{module}: {r['killed']}/{r['mutants']} killed (score {r['score']}), {r['pending']} pending, "
              f"{r['skipped']} filtered{sampled}")
        for s in r["survivors"]:
            print(f"  survived line {s['line']} {s['operator']}: {s['diff']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
