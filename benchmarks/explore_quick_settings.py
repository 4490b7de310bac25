"""Validation error of the quick profile's Part 3 settings over several seeds, on a GPU (the runs
behind the numbers quoted in hwutils/profiles.py and in the closing notes of issue 11).

Trains the 784-800-800-10 network on all 50,000 training images with the stacked engine (K runs
per step) and reports the *validation* error only - the test split is never evaluated here. Each
block is one question; blocks run in order until ``--budget`` seconds have passed, and the table is
rewritten to ``--out`` after every block, so a cut-short run still leaves what it measured.

    PYTHONPATH=. HWUTILS_DATA_DIR=... python benchmarks/explore_quick_settings.py --budget 300

About 6 minutes on one H100 for all blocks (TF32 products).
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import pandas as pd
import torch

from hwutils.diagnostics import dead_fraction, hidden_activity
from hwutils.experiments import run_facts, run_sweep
from hwutils.profiles import mnist_methods, mnist_profile, mnist_splits


def blocks(m, dropout_epochs):
    """(name, methods) in order of importance; ``m``: the quick profile's methods by name."""
    warm = lambda meth, w, **kw: meth.replace(warmup_epochs=w, **kw)
    wide = lambda meth, hidden: dataclasses.replace(meth, model=dataclasses.replace(meth.model, hidden=hidden))
    drop = lambda epochs, w, lrs: (
        [warm(m["dropout + L2"], w, lr=lr, l2=l2, epochs=epochs) for lr in lrs for l2 in (1e-5, 1e-4)]
        + [warm(m["dropout + max-norm"], w, lr=lr, max_norm=c, epochs=epochs) for lr in lrs for c in (2.0, 3.5)])
    yield "first epoch at a constant rate, with and without warm-up", [
        m["L2"].replace(epochs=1, lr_schedule="constant", lr=lr, warmup_epochs=w) for lr in (0.1, 0.3, 1.0) for w in (0, 0.5)]
    for w in (0, 1):
        yield f"L2 + L1 / L2 + KL, warm-up {w}", (
            [warm(m["L2"], w, lr=0.3, l2=1e-5)]
            + [warm(m["L2 + L1 (late)"], w, lr=0.3, l2=1e-5, l1=v) for v in (3e-6, 1e-5, 3e-5)]
            + [warm(m["L2 + KL-sparsity"], w, lr=0.3, l2=1e-5, kl=v) for v in (1e-5, 1e-4, 1e-3)])
        yield f"L2 and max-norm, warm-up {w}", (
            [warm(m["L2"], w, lr=lr, l2=l2) for lr in (0.1, 0.3, 1.0) for l2 in (1e-5, 1e-4)]
            + [warm(m["max-norm"], w, lr=lr, max_norm=c) for lr in (0.1, 0.3) for c in (1.5, 2.0, 2.5, 3.5)])
    for epochs in (dropout_epochs, 80):
        yield f"dropout, {epochs} epochs, warm-up 1", drop(epochs, 1, (0.1, 0.2, 0.3))
    yield "dropout + max-norm at lr 0.3: momentum 0.5 against 0.9", [
        warm(m["dropout + max-norm"], 1, lr=0.3, max_norm=3.5, momentum=mu) for mu in (0.5, 0.9)]
    yield "longer without dropout (40 epochs)", [warm(m["L2"], 1, lr=0.3, l2=1e-5, epochs=40)]
    yield "narrower (512-512) with dropout, 80 epochs", [
        wide(warm(m["dropout + L2"], 1, lr=0.1, l2=1e-5, epochs=80), (512, 512)),
        wide(warm(m["dropout + max-norm"], 1, lr=0.1, max_norm=2.0, epochs=80), (512, 512))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=600, help="seconds; no block starts after that")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="explore_quick_settings.csv")
    args = parser.parse_args(argv)
    began = time.time()
    torch.backends.cuda.matmul.allow_tf32 = True
    device = "cuda" if torch.cuda.is_available() else "cpu"
    profile = mnist_profile("quick")
    data = mnist_splits(profile, device=device)
    methods = {m.name: m for m in mnist_methods(profile)}
    rows = []
    for name, todo in blocks(methods, profile.dropout_epochs):
        if time.time() - began > args.budget:
            print(f"skipped (budget): {name}", flush=True)
            continue
        start = time.time()
        results = run_sweep(todo, data, seeds=tuple(args.seeds), results_dir=None, together=True, on_nan="stop",
                            evaluate_test=False, progress=False)
        for method, r in zip([m for m in todo for _ in args.seeds], results):
            t = method.train
            activity = hidden_activity(r.model, data.val.X)
            rows.append({"block": name, "method": method.name, "hidden": "-".join(map(str, method.model.hidden)),
                         "epochs": t.epochs, "lr": t.lr, "momentum": t.momentum, "warmup": t.warmup_epochs,
                         "l2": t.l2, "l1": t.l1, "kl": t.kl, "c": t.max_norm or 0.0, "seed": r.seed,
                         "val_error_pct": 100 * r.val_error, "diverged": r.history.diverged,
                         "dead_pct": 100 * dead_fraction(r.model, data.val.X),
                         "mean_tanh": float(activity["mean_tanh"].mean()), **run_facts(r)})
        pd.DataFrame(rows).to_csv(args.out, index=False)
        print(f"{name}: {len(todo)} settings x {len(args.seeds)} seeds in {time.time() - start:.0f} s", flush=True)
    frame = pd.DataFrame(rows)
    if frame.empty:
        print("no block ran within the budget")
        return 0
    keys = ["block", "method", "hidden", "epochs", "lr", "momentum", "warmup", "l2", "l1", "kl", "c"]
    table = frame.groupby(keys, sort=False).agg(
        val=("val_error_pct", "mean"), val_sd=("val_error_pct", "std"), dead=("dead_pct", "mean"),
        near_zero=("near_zero_pct", "mean"), cap_peak=("at_cap_peak_pct", "mean"), rho=("mean_tanh", "mean"))
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 500)
    print(table.round(3).to_string())
    print(f"written: {args.out} ({time.time() - began:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
