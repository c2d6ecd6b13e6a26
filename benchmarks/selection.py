"""Benchmark: alseg's stochastic greedy vs submodlib on the FLQMI objective USIM maximises.

For each pool size U the query set is Q = 6.4% of U (the Liver elbow, 6606 of 104133) and the
budget B = 100. Both optimisers get the same non-negative kernel, a cosine kernel of clustered
random embeddings mapped with (S + 1) / 2 like USIMC's. Each method runs in a fresh spawned
process that builds the kernel (not timed), then times the method including its own setup
(submodlib's copy of S into Python lists and C++ vectors, alseg's row maxima), and reads its
peak RSS: on Linux the high-water mark is reset through ``/proc/self/clear_refs`` once S is
built, so the peak is the method's on top of S. The objective of both selections is computed
by the same ``FLQMI.evaluate``. submodlib needs about 50 bytes per entry of S, so it runs only
up to U = 20k unless ``--force-submodlib``.

    .venv/bin/python benchmarks/selection.py                      # U = 10k, 20k
    .venv/bin/python benchmarks/selection.py --sizes 10000 20000 50000 104133
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import re
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date

QUERY_FRACTION = 0.064
EMBEDDING_DIM = 32
N_CLUSTERS = 50
SUBMODLIB_MAX_U = 20_000
DEFAULT_SIZES = (10_000, 20_000)


@dataclass(frozen=True)
class Result:
    seconds: float
    """Setup and optimisation, as a caller of the method pays them."""
    setup_seconds: float
    """The setup alone: submodlib's constructor (S to Python lists to C++), FLQMI's row maxima."""
    kernel_rss_gb: float
    peak_rss_gb: float
    objective: float


def _status_gb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in GiB."""
    with open("/proc/self/status") as status:
        kib = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    assert kib is not None, f"{field} missing from /proc/self/status"
    return int(kib.group(1)) / 2**20


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is the method's own."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _kernel(n: int, q: int, seed: int):
    # lazy: each measurement runs in a spawned process, which re-imports this module; the libraries are imported where they are timed
    import numpy as np
    import torch

    from alseg.strategies.submodular import nonnegative_kernel
    from alseg.strategies.usim_math import cosine_similarity

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CLUSTERS, EMBEDDING_DIM))
    g = centres[rng.integers(N_CLUSTERS, size=n)] + 0.7 * rng.normal(size=(n, EMBEDDING_DIM))
    g = torch.from_numpy(g.astype(np.float32))
    return nonnegative_kernel(cosine_similarity(g, g[rng.choice(n, size=q, replace=False)]), "cosine")


def run_method(
    method: str, n: int, q: int, budget: int, epsilon: float, seed: int, threads: int, repeats: int
) -> Result:
    """One measurement, meant to run alone in a fresh process; the fastest of ``repeats`` runs,
    since the machine may be shared."""
    # lazy: each measurement runs in a spawned process, which re-imports this module; the libraries are imported where they are timed
    import numpy as np
    import submodlib  # imported in both methods: its 1.5 s and ~100 MB are not the optimiser's
    import torch

    from alseg.strategies.submodular import FLQMI, stochastic_greedy, submodlib_select

    torch.set_num_threads(threads)
    S = _kernel(n, q, seed)
    kernel_rss = _status_gb("VmRSS")
    _reset_peak_rss()
    seconds = setup_seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        if method == "alseg":
            fn = FLQMI(S)
            setup_seconds = min(setup_seconds, time.perf_counter() - start)
            picked, _ = stochastic_greedy(fn, budget, epsilon=epsilon, rng=np.random.default_rng(seed))
            seconds = min(seconds, time.perf_counter() - start)
        else:
            picked, _ = submodlib_select(S.numpy(), budget, epsilon=epsilon)
            seconds = min(seconds, time.perf_counter() - start)
            start = time.perf_counter()
            submodlib.FacilityLocationVariantMutualInformationFunction(
                n=n, num_queries=q, query_sijs=S.numpy(), queryDiversityEta=1.0
            )
            setup_seconds = min(setup_seconds, time.perf_counter() - start)
    peak = _status_gb("VmHWM")
    return Result(seconds, setup_seconds, kernel_rss, peak, FLQMI(S).evaluate(picked))


def _measure(method: str, *args) -> Result:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(run_method, method, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="pool sizes U")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the fastest is reported")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: submodlib is single-threaded, and OpenMP stalls on a shared machine)",
    )
    parser.add_argument(
        "--force-submodlib",
        action="store_true",
        help=f"run submodlib above U = {SUBMODLIB_MAX_U} (needs ~50 bytes per entry of S)",
    )
    args = parser.parse_args()

    # lazy: spawned children re-import this module, so torch stays out of its top level; the parent needs it for the header only
    import torch

    print(
        f"# {date.today()}  {platform.processor() or platform.machine()}, {mp.cpu_count()} CPUs, "
        f"torch {torch.__version__} threads={args.threads}, "
        f"B={args.budget}, eps={args.epsilon}, Q={QUERY_FRACTION:.1%} of U, seed={args.seed}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"# s: seconds, fastest of {args.repeats}, setup (kernel copy / row maxima) in brackets; "
        "RSS GB: peak while the method ran (S alone in brackets); objective: FLQMI.evaluate; "
        "speedup: total (optimiser without setup)"
    )
    header = (
        f"{'U':>7} {'Q':>6} {'S GB':>5} | {'alseg s':>13} {'RSS GB':>13} {'objective':>9} | "
        f"{'submodlib s':>13} {'RSS GB':>13} {'objective':>9} | {'speedup':>14} {'obj ratio':>9}"
    )
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        q = round(QUERY_FRACTION * n)
        common = (n, q, args.budget, args.epsilon, args.seed, args.threads, args.repeats)
        ours = _measure("alseg", *common)
        line = f"{n:>7} {q:>6} {n * q * 4 / 2**30:>5.2f} | {_cells(ours)} | "
        if n <= SUBMODLIB_MAX_U or args.force_submodlib:
            ref = _measure("submodlib", *common)
            optimiser_ratio = (ref.seconds - ref.setup_seconds) / (ours.seconds - ours.setup_seconds)
            line += (
                f"{_cells(ref)} | {ref.seconds / ours.seconds:>5.1f}x ({optimiser_ratio:>4.1f}x) "
                f"{ours.objective / ref.objective:>9.4f}"
            )
        else:
            line += f"{'skipped':>13} {'':>13} {'':>9} | {'':>14} {'':>9}"
        print(line, flush=True)


def _cells(r: Result) -> str:
    return (
        f"{r.seconds:>6.2f} ({r.setup_seconds:>4.2f}) {r.peak_rss_gb:>5.2f} ({r.kernel_rss_gb:>5.2f}) "
        f"{r.objective:>9.2f}"
    )


if __name__ == "__main__":
    main()
