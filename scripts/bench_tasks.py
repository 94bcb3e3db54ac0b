"""Task-training throughput of the small synthetic-task models, and where a step's time goes.

Usage: python scripts/bench_tasks.py [--models copy-5x64 ...] [--batches 16 64 256] [--rounds 4]
       [--compile-models ...] [--compile-batch 64 | --no-compile] [--threads N] [--quick]
Each row is a task model (``MODELS``: the DeepMind suite's 5 layers x 64 of experiment=synthetic_tasks
at 100 tokens and at 25, the mean of that experiment's lengths; a 2 x 128) trained as ``posbench train
task=...`` trains it: the composed config, ``TaskBatches``, ``Trainer.step`` (AdamW, clipping, the
finite check), fp32. Every batch has the model's one length (the same T every step, no padding).
Rows take turns, one step each per round, and report their median step: tokens/s, its ratio to the
model's first batch size, and model FLOP utilisation against this machine's matmul peak measured in
the same run (FLOPs per token as scripts/bench_train.py counts them: 6·N + 6·L·T·d). The breakdown
times the calls of ``Trainer.step`` apart, in a step of their own each round: batch building,
forward+backward, gradient norm and clipping, host reads (the loss and gradient norm brought to
Python) and the optimiser step with zero_grad, as shares of their sum; one batch's forward+backward
is then profiled (torch.profiler): attention kernels, matmuls, other ops, time outside any op.
Compiled rows (``torch.compile`` of the model, as train.compile=true) report the first step
(compilation) and the first step at a second length (the recompilation for dynamic shapes that a
task run meets at its second batch) apart from their median.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from bench_train import flops_per_token, matmul_peak
from hydra import compose, initialize_config_dir

from posbench.cli import CONFIG_DIR
from posbench.common.runtime import Dist, flush_denormals
from posbench.config import RunConfig, register_schemas, to_plain_dict, to_run_config
from posbench.jobs.workload import TaskWorkload
from posbench.model.loss import NextTokenLoss
from posbench.model.transformer import Transformer
from posbench.runs.checkpoint import RunRecord
from posbench.runs.resolvers import register_resolvers
from posbench.tasks import TaskBatches, build_task
from posbench.training.optim import lr_at
from posbench.training.trainer import Trainer


@dataclass(frozen=True)
class ModelSpec:
    task: str
    length: int  # in the task's unit; copy: 3n + 2 tokens, so 33 gives 100 input tokens
    n_layers: int
    d_model: int
    n_heads: int


MODELS = {
    "copy-5x64": ModelSpec("copy", 33, 5, 64, 8),  # experiment=synthetic_tasks' shape, at T = 100
    "copy-5x64-short": ModelSpec("copy", 8, 5, 64, 8),  # T = 25, the mean of synthetic_tasks' lengths 1..16
    "copy-2x128": ModelSpec("copy", 33, 2, 128, 4),
    "passkey-5x64": ModelSpec("passkey", 128, 5, 64, 8),  # experiment=synthetic_tasks_passkey's longest
    "toy-2x32": ModelSpec("copy", 8, 2, 32, 4),  # --quick
}
DEFAULT_MODELS = ["copy-5x64", "copy-5x64-short", "copy-2x128"]
COMPILED_MODELS = ["copy-5x64-short"]  # a cold compile is ~1 min here: one by default
PARTS = ("data", "fwd+bwd", "clip", "host", "optim")
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def task_run(spec: ModelSpec, batch: int, encoding: str, length: int) -> RunConfig:
    """The typed config ``posbench train task=...`` would run for ``spec`` at ``batch``."""
    register_schemas()
    register_resolvers()
    overrides = [
        f"task={spec.task}",
        f"task.train_lengths=[{length},{length}]",
        f"model.n_layers={spec.n_layers}",
        f"model.d_model={spec.d_model}",
        f"model.n_heads={spec.n_heads}",
        f"encoding={encoding}",
        f"train.batch_size={batch}",
        "train.device=cpu",
        "logger=jsonl",
    ]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return to_run_config(compose(config_name="train", overrides=overrides))


class TaskTrainee:
    """One task model, its ``Trainer`` and batches, stepped on demand (eager or compiled)."""

    def __init__(self, name: str, batch: int, encoding: str, compiled: bool, run_dir: Path):
        torch.manual_seed(0)
        self.name, self.batch, self.encoding, self.compiled = name, batch, encoding, compiled
        self.spec = MODELS[name]
        self.run = task_run(self.spec, batch, encoding, self.spec.length)
        work = TaskWorkload(self.run, build_task(self.run.task))
        model = Transformer(self.run.model, self.run.encoding, work.vocab_size)
        record = RunRecord(to_plain_dict(self.run))
        data = work.training_data(Dist())
        self.trainer = Trainer(self.run.train, model, data, record, run_dir, torch.device("cpu"), Dist())
        self.objective = NextTokenLoss(torch.compile(model) if compiled else model)
        x, _ = self.trainer.batches.next()
        self.tokens, self.seq_len = x.numel(), x.shape[1]
        self.flops_per_token = flops_per_token(model, self.spec.n_layers, self.spec.d_model, self.seq_len)
        self.seconds: list[float] = []
        self.parts: dict[str, list[float]] = {part: [] for part in PARTS}
        self.first_step = self.new_length_step = 0.0
        if compiled:
            self.first_step = self.step()
            self.new_length_step = self.step_at_another_length()
            self.seconds.clear()

    def step(self) -> float:
        start = time.perf_counter()
        self.trainer.step(self.objective)
        self.seconds.append(time.perf_counter() - start)
        return self.seconds[-1]

    def step_at_another_length(self) -> float:
        """One step on batches of another length (a compiled model recompiles for dynamic shapes)."""
        other = task_run(self.spec, self.batch, self.encoding, self.spec.length - 1)
        main, self.trainer.batches = self.trainer.batches, TaskBatches(build_task(other.task), self.batch, 0)
        try:
            return self.step()
        finally:
            self.trainer.batches = main

    def step_in_parts(self) -> None:
        """``Trainer.step``'s calls (``train_step`` at grad_accum 1, then the update), each timed."""
        trainer, cfg = self.trainer, self.run.train
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr_at(trainer.state.step, cfg, trainer.total)
        marks = [time.perf_counter()]
        x, y = trainer.batches.next()
        marks.append(time.perf_counter())
        loss = self.objective(x, y)
        loss.backward()
        marks.append(time.perf_counter())
        params = self.objective.parameters()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        )
        marks.append(time.perf_counter())
        torch.stack((loss.detach().double(), grad_norm.double())).tolist()
        marks.append(time.perf_counter())
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        for part, start, end in zip(PARTS, marks, marks[1:]):
            self.parts[part].append(end - start)

    def kernel_shares(self, steps: int = 2) -> list[float]:
        """Shares of forward+backward's wall time (under torch.profiler) in the attention kernels,
        the matmuls, every other op and outside any op (Python, autograd's engine)."""
        x, y = self.trainer.batches.next()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                self.objective(x, y).backward()
            wall = (time.perf_counter() - start) * 1e6  # microseconds, as the profiler counts
        self.trainer.optimizer.zero_grad(set_to_none=True)
        events = prof.key_averages()
        attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
        matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMULS)
        ops = sum(e.self_cpu_time_total for e in events)
        return [attention / wall, matmul / wall, (ops - attention - matmul) / wall, 1 - ops / wall]

    def tokens_per_second(self) -> float:
        return self.tokens / statistics.median(self.seconds[1:])  # the first step warms up

    def shares(self) -> list[float]:
        medians = [statistics.median(self.parts[part][1:]) for part in PARTS]
        return [m / sum(medians) for m in medians]


def measure(trainees: list[TaskTrainee], rounds: int) -> float:
    """Every trainee steps once per round, and once more in parts, round after round, with a
    matmul-peak sample per round. -> the peak (the best round's GFLOP/s)."""
    peaks = []
    for _ in range(rounds + 1):
        peaks.append(matmul_peak(torch.float32, torch.device("cpu"), repeats=3))
        for trainee in trainees:
            trainee.step()
            trainee.step_in_parts()
    return max(peaks)


def measure_compiled(name: str, args: argparse.Namespace, run_dir: Path) -> tuple[TaskTrainee, TaskTrainee]:
    """A compiled model from cold (no graph of an earlier row in memory, inductor's caches off: what a
    first run pays), stepped in turns with an eager twin. -> (compiled, eager)"""
    import torch._inductor.config as inductor

    torch._dynamo.reset()
    inductor.force_disable_caches = True
    compiled = TaskTrainee(name, args.compile_batch, args.encoding, True, run_dir)
    eager = TaskTrainee(name, args.compile_batch, args.encoding, False, run_dir)
    for _ in range(args.rounds + 1):
        eager.step()
        compiled.step()
    return compiled, eager


def print_eager(trainees: list[TaskTrainee], peak: float) -> None:
    print(
        f"{'model':>15} {'batch':>5} {'T':>4} {'tokens/s':>9} {'x first':>7} {'MFU':>6} {'step ms':>8} "
        + " ".join(f"{part:>7}" for part in PARTS)
    )
    first: dict[str, float] = {}
    for t in trainees:
        rate = t.tokens_per_second()
        base = first.setdefault(t.name, rate)
        mfu = rate * t.flops_per_token / (peak * 1e9)
        shares = " ".join(f"{share:>7.1%}" for share in t.shares())
        print(
            f"{t.name:>15} {t.batch:>5} {t.seq_len:>4} {rate:>9,.0f} {rate / base:>7.2f} {mfu:>6.1%} "
            f"{1e3 * statistics.median(t.seconds[1:]):>8.1f} {shares}",
            flush=True,
        )


def print_compiled(pairs: list[tuple[TaskTrainee, TaskTrainee]], peak: float) -> None:
    print(
        f"\n{'compiled':>15} {'batch':>5} {'tokens/s':>9} {'x eager':>7} {'MFU':>6} "
        f"{'first step s':>12} {'new length s':>12}"
    )
    for t, eager in pairs:
        rate = t.tokens_per_second()
        mfu = rate * t.flops_per_token / (peak * 1e9)
        print(
            f"{t.name:>15} {t.batch:>5} {rate:>9,.0f} {rate / eager.tokens_per_second():>7.2f} {mfu:>6.1%} "
            f"{t.first_step:>12.1f} {t.new_length_step:>12.1f}",
            flush=True,
        )


def print_kernels(trainees: list[TaskTrainee]) -> None:
    print(
        f"\n{'fwd+bwd of':>15} {'batch':>5} {'attention':>9} {'matmuls':>8} {'other ops':>9} {'outside':>8}"
    )
    for t in trainees:
        shares = " ".join(f"{share:>{width}.1%}" for share, width in zip(t.kernel_shares(), (9, 8, 9, 8)))
        print(f"{t.name:>15} {t.batch:>5} {shares}", flush=True)


def main() -> None:
    flush_denormals()  # as every posbench job does first (posbench/cli.py)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(MODELS))
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 64, 256])
    parser.add_argument("--encoding", default="rope")
    parser.add_argument("--rounds", type=int, default=3, help="timed steps per row (median), after a warm-up")
    parser.add_argument("--compile-models", nargs="+", default=COMPILED_MODELS, choices=sorted(MODELS))
    parser.add_argument("--compile-batch", type=int, default=64, help="the batch of the compiled rows")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--profile-batch", type=int, default=64, help="the batch whose fwd+bwd is profiled")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="a toy run in seconds: toy-2x32, no compile")
    args = parser.parse_args()
    if args.quick:
        args.models, args.batches, args.rounds, args.no_compile = ["toy-2x32"], [4, 16], 2, True
        args.profile_batch, args.threads = 16, args.threads or 1  # toy tensors: one thread is faster
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:  # the Trainer's run folder: nothing is written there
        run_dir = Path(tmp)
        eager = [TaskTrainee(m, b, args.encoding, False, run_dir) for m in args.models for b in args.batches]
        peak = measure(eager, args.rounds)
        print(
            f"fp32: matmul peak {peak:,.0f} GFLOP/s on cpu, {torch.get_num_threads()} thread(s); task "
            f"models, encoding={args.encoding}; median of {args.rounds} steps, rows interleaved; step parts "
            "as shares of their sum"
        )
        print_eager(eager, peak)
        print_kernels([t for t in eager if t.batch == args.profile_batch])
        if not args.no_compile:
            print_compiled([measure_compiled(m, args, run_dir) for m in args.compile_models], peak)


if __name__ == "__main__":
    main()
