"""Training speed against the hardware limit, in one process and one run (`make bench`).

Measures, at the MNIST quick-profile shapes:

1. the ceiling: the forward + backward matrix products of exactly the model's shapes, timed alone;
2. ``hwutils.training.fit`` for each of the six MNIST methods, and for plain training (no regularizer);
3. the textbook baseline: a loop over ``DataLoader(torchvision.datasets.MNIST(..., transform=ToTensor()))``;
4. the overhead of each regularizer over plain training;
5. whether training several same-shape models at once (batched matrix products, as ``torch.func.vmap``
   over stacked parameters would run them) beats training them one after another.

FLOP counts are those of the matrix products a step needs: per layer 2·B·in·out for the forward
product, as much for the weight gradient, and as much again for the input gradient except in the
first layer (the images need no gradient). Prints a table and writes it to
``benchmarks/results/bench_training.{csv,json}``. Targets (a benchmark, not a test): plain ``fit``
≥ 80 % of the ceiling, no regularizer adding > 15 % to a step, ``fit`` ≥ 10× the naive baseline.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from hwutils.data import Split, find_mnist_dir, load_mnist
from hwutils.profiles import MNIST_PROFILES, mnist_methods
from hwutils.models import MLP, ModelConfig
from hwutils.training import TrainConfig, fit

OUT = Path(__file__).resolve().parent / "results"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_flops(widths, batch):
    flops = 0
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        products = 2 if i == 0 else 3
        flops += products * 2 * batch * a * b
    return flops


def gemm_ceiling(widths, batch, device, seconds=3.0):
    """FLOP/s of the step's matrix products alone (same shapes, same order, no other work)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen).to(device)
    layers = [(mk(b, a), mk(batch, a), mk(batch, b)) for a, b in zip(widths[:-1], widths[1:])]

    def step():
        for i, (w, x, g) in enumerate(layers):
            x @ w.t()
            g.t() @ x
            if i:
                g @ w

    for _ in range(5):
        step()
    sync(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            step()
        n += 10
        sync(device)
    return n * step_flops(widths, batch) / (time.perf_counter() - start)


def batched_gemm_speedup(widths, batch, n_models, device, reps=30):
    """Time of ``n_models`` steps' products as one batched product per shape vs one after another."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=gen).to(device)
    shapes = list(zip(widths[:-1], widths[1:]))
    single = [(mk(b, a), mk(batch, a), mk(batch, b)) for a, b in shapes]
    stacked = [(mk(n_models, b, a), mk(n_models, batch, a), mk(n_models, batch, b)) for a, b in shapes]

    def sequential():
        for _ in range(n_models):
            for i, (w, x, g) in enumerate(single):
                x @ w.t(); g.t() @ x
                if i:
                    g @ w

    def together():
        for i, (w, x, g) in enumerate(stacked):
            torch.bmm(x, w.transpose(1, 2)); torch.bmm(g.transpose(1, 2), x)
            if i:
                torch.bmm(g, w)

    timings = {}
    for name, fn in (("sequential", sequential), ("batched", together)):
        for _ in range(3):
            fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        timings[name] = (time.perf_counter() - start) / reps
    return timings["sequential"] / timings["batched"]


def time_fit(model_config, train_config, train, val, device, epochs=3):
    """Seconds per step of ``fit``: the fastest of ``epochs`` epochs after the first (warm-up);
    the validation pass after each epoch runs on a tiny split, so it barely counts."""
    torch.manual_seed(0)
    model = MLP(train.X.shape[1], model_config.hidden, 10, model_config.dropout_input, model_config.dropout_hidden)
    config = train_config.replace(epochs=epochs, lr_schedule="constant")
    history = fit(model, train, val, config, progress=False)
    sync(device)
    return min(history.epoch_seconds[1:]) / history.steps_per_epoch


def naive_baseline(widths, batch, steps, device, data_dir):
    """The textbook loop: per-sample torchvision dataset + DataLoader, ToTensor, a .item() per step."""
    import torchvision
    from torchvision.transforms import ToTensor

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for name, path in find_mnist_dir(data_dir, download=False).items():
            with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        dataset = torchvision.datasets.MNIST(tmp, train=True, download=False, transform=ToTensor())
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True)
        torch.manual_seed(0)
        model = MLP(widths[0], tuple(widths[1:-1]), widths[-1]).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        running, done = 0.0, 0
        start = None
        for x, y in loader:
            if done == 5:  # warm-up steps excluded
                sync(device)
                start = time.perf_counter()
            x, y = x.view(len(x), -1).to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            running += loss.item()
            done += 1
            if done == steps + 5:
                break
        sync(device)
        return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick", help="MNIST profile whose shapes are measured")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--naive-steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="round-robin repetitions of every timing")
    parser.add_argument("--train-images", type=int, default=10_000, help="images per timed epoch")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    profile = MNIST_PROFILES[args.profile]
    data = load_mnist(device=device)
    train, val = data.train, Split(data.val.X[:512], data.val.y[:512])  # tiny val: time the training steps
    widths = [784, *profile.hidden, 10]
    batch = profile.batch_size
    flops = step_flops(widths, batch)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{torch.get_num_threads()} threads'}), "
          f"net {'-'.join(map(str, widths))}, batch {batch}, {flops / 1e9:.3f} GFLOP per step", flush=True)

    ceiling = gemm_ceiling(widths, batch, device)
    rows = [{"what": "ceiling: the step's matrix products alone", "ms_per_step": 1e3 * flops / ceiling,
             "steps_per_s": ceiling / flops, "samples_per_s": batch * ceiling / flops,
             "gflops": ceiling / 1e9, "of_ceiling": 1.0}]

    def add(name, seconds):
        rows.append({"what": name, "ms_per_step": 1e3 * seconds, "steps_per_s": 1 / seconds,
                     "samples_per_s": batch / seconds, "gflops": flops / seconds / 1e9,
                     "of_ceiling": flops / seconds / ceiling})
        print(f"  {name}: {1e3 * seconds:.2f} ms/step", flush=True)
        return seconds

    plain_cfg = ModelConfig(hidden=profile.hidden)
    base = TrainConfig(batch_size=batch, lr=0.05)
    configs = {"fit: plain (no regularizer)": (plain_cfg, base)}
    configs.update({f"fit: {m.name}": (m.model, m.train) for m in mnist_methods(profile)})
    # Each regularizer alone, on top of plain training (L1 on for every epoch here).
    isolated = {
        "L2 penalty": (plain_cfg, base.replace(l2=1e-4)),
        "L1 penalty": (plain_cfg, base.replace(l1=1e-5)),
        "KL-sparsity penalty": (plain_cfg, base.replace(kl=1e-4)),
        "max-norm projection": (plain_cfg, base.replace(max_norm=3.0)),
        "dropout (0.2 / 0.5)": (ModelConfig(hidden=profile.hidden, dropout_input=0.2, dropout_hidden=0.5), base),
    }
    # Round-robin repetitions, fastest kept: the machine's speed drifts by 10-20 % over minutes,
    # and measuring every configuration in each round keeps that drift out of the ratios.
    best = {}
    subset = Split(train.X[:args.train_images], train.y[:args.train_images])
    for _ in range(args.rounds):
        for name, (mc, tc) in {**configs, **isolated}.items():
            best[name] = min(best.get(name, float("inf")), time_fit(mc, tc, subset, val, device))
    plain = best["fit: plain (no regularizer)"]
    for name in configs:
        add(name, best[name])
    overhead_rows = []
    for name in isolated:
        overhead_rows.append({"regularizer": name, "ms_per_step": 1e3 * best[name], "overhead": best[name] / plain - 1})
        print(f"  overhead of {name}: {100 * (best[name] / plain - 1):+.1f} %", flush=True)
    naive = add("naive: DataLoader(torchvision MNIST, ToTensor)", naive_baseline(widths, batch, args.naive_steps, device, None))
    speedup_batched = batched_gemm_speedup(widths, batch, 4, device)

    import pandas as pd

    table = pd.DataFrame(rows).set_index("what")
    over = pd.DataFrame(overhead_rows).set_index("regularizer")
    pd.set_option("display.width", 160)
    print("\nThroughput (matrix-product FLOPs per second; of_ceiling = share of the ceiling)")
    print(table.to_string(float_format=lambda v: f"{v:,.2f}"))
    print("\nRegularizer overhead per step, relative to plain fit")
    print(over.to_string(float_format=lambda v: f"{v:+.1%}" if abs(v) < 5 else f"{v:.2f}"))
    verdict = {
        "plain fit / ceiling": flops / plain / ceiling,
        "worst regularizer overhead": over["overhead"].max(),
        "fit / naive speed-up": naive / plain,
        "4 models batched / sequential (products alone)": speedup_batched,
    }
    print("\nSummary")
    for key, value in verdict.items():
        print(f"  {key}: {value:.2f}")
    print(f"  targets: plain fit >= 0.80 of ceiling: {'met' if verdict['plain fit / ceiling'] >= 0.8 else 'NOT met'}; "
          f"overhead <= 15 %: {'met' if verdict['worst regularizer overhead'] <= 0.15 else 'NOT met'}; "
          f"fit >= 10x naive: {'met' if verdict['fit / naive speed-up'] >= 10 else 'NOT met'}")
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / "bench_training.csv")
    over.to_csv(OUT / "bench_overhead.csv")
    meta = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "widths": widths, "batch": batch, "gflop_per_step": flops / 1e9}
    (OUT / "bench_training.json").write_text(json.dumps(
        {"meta": meta, "throughput": table.reset_index().to_dict("records"),
         "overhead": over.reset_index().to_dict("records"), "summary": verdict}, indent=2))
    print(f"\nwritten: {OUT / 'bench_training.csv'}, {OUT / 'bench_overhead.csv'}, {OUT / 'bench_training.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
