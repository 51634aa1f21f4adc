"""Time the default attack under each CPU thread setting, on a quiet machine and beside busy processes.

    python scripts/bench_threads.py [--steps 300] [--busy 4] [--repeats 3] [--preset default]

Each setting runs in a fresh process (OpenMP reads its waiting policy when torch loads): the attack of
the preset (the default run: FCN-3 on MNIST, K=8) for ``--steps`` steps, timed after 20 warm-up steps.
Settings: 1 thread and all cores, each with OpenMP's waiting policy as gradleak sets it (passive: idle
threads sleep) and as libgomp has it unless told otherwise (idle threads spin for 300,000 turns before
they sleep; ``GOMP_SPINCOUNT=300000``); plus ``auto``, what ``scripts/invert.py`` chooses when the user sets
nothing (:func:`inversion.attack.threads.threads_for`).
"Busy" starts ``--busy`` processes that spin on the CPU for the whole measurement (each stops by
itself after at most ``--busy-seconds``), as other jobs on a shared lab machine would.
"""

# isort: off
import inversion  # noqa: F401  (first: the OpenMP wait policy and the torchvision shim)

# isort: on
import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time

BURNER = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def worker(preset: str, steps: int, threads: str, overrides: list[str]) -> None:
    """Time ``steps`` attack steps of ``preset`` in this process; print the seconds and the thread count."""
    import torch

    from inversion import invert, model_from_update, simulate
    from inversion.attack.threads import attack_threads

    run = simulate(preset, *overrides)
    model = model_from_update(run.update)
    if threads != "auto":
        torch.set_num_threads(int(threads))
    with (
        attack_threads(model, run.update.meta.input_shape, run.update.batch_size, "cpu")
        if threads == "auto"
        else contextlib.nullcontext()
    ):
        invert(run.update, model, preset=preset, max_steps=20, progress=False)  # warm-up (allocations, caches)
        start = time.perf_counter()
        invert(run.update, model, preset=preset, max_steps=steps, progress=False)
        print(f"{time.perf_counter() - start:.4f} {torch.get_num_threads()}")


POLICIES = {"passive (gradleak's)": {}, "spin, then sleep (libgomp's default)": {"GOMP_SPINCOUNT": "300000"}}
"""OpenMP waiting policies: the environment that gives each (gradleak's own applies where nothing is set)."""


def timed(preset: str, steps: int, threads: str, policy: str, repeats: int, overrides: list[str]) -> tuple[float, int]:
    """(median seconds over ``repeats`` fresh processes, threads used) of one setting."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    }
    env.update(POLICIES[policy])
    seconds, used = [], 0
    for _ in range(repeats):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                "--preset",
                preset,
                "--steps",
                str(steps),
                "--threads",
                threads,
                *overrides,
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        value, used = out.split()[-2:]
        seconds.append(float(value))
    return statistics.median(seconds), int(used)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--busy", type=int, default=4, help="busy processes beside the attack in the busy rows")
    parser.add_argument("--busy-seconds", type=float, default=900, help="the busy processes stop after this long")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per setting (median)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the preset's config")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.preset, args.steps, args.threads, args.overrides)
        return
    cores = len(os.sched_getaffinity(0))
    ours, libgomp = POLICIES
    settings = [("1", ours), (str(cores), ours), ("1", libgomp), (str(cores), libgomp), ("auto", ours)]
    print(f"preset {args.preset}, {args.steps} steps, {cores} cores, median of {args.repeats} processes")
    print("| machine | threads | OpenMP wait policy | seconds | steps/s |")
    print("|---|---|---|---|---|")
    for load in ("quiet", "busy"):
        burners = [
            subprocess.Popen([sys.executable, "-c", BURNER.format(seconds=args.busy_seconds)])
            for _ in range(args.busy if load == "busy" else 0)
        ]
        try:
            for threads, policy in settings:
                seconds, used = timed(args.preset, args.steps, threads, policy, args.repeats, args.overrides)
                label = f"auto ({used})" if threads == "auto" else threads
                row = f"{load}" + (f" + {args.busy} busy" if burners else "")
                print(f"| {row} | {label} | {policy} | {seconds:.2f} | {args.steps / seconds:.0f} |", flush=True)
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()


if __name__ == "__main__":
    main()
