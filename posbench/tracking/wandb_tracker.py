"""Weights & Biases backend.

Mode: `cfg.mode` (default "offline"), unless the user set `WANDB_MODE`, which wins so a
shell-wide choice (e.g. `WANDB_MODE=disabled` on a laptop) is respected. Offline runs go
to `<run_dir>/wandb/offline-run-*/`; upload them later with `wandb sync <that dir>`.
Online mode checks for an API key first and fails at once without one, instead of
prompting (with a terminal) or failing deep inside `wandb.init`.

Steps: W&B requires its history step to increase, and one evaluation logs one history
row per length, so passing the trainer step to `run.log(step=...)` would make W&B drop
later training points. Instead the trainer step is logged as the metric "trainer/step"
and every training metric is plotted against it; "eval/*" metrics are plotted against
"eval/length", so the UI draws ppl versus length.
"""

from __future__ import annotations

import os
from typing import Any, Iterable

from posbench.tracking.base import check_eval_rows, check_metric_names, plain
from posbench.tracking.config import LoggerConfig

TRAIN_STEP = "trainer/step"
EVAL_STEP = "eval/length"
EVAL_PREFIX = "eval/"
INIT_TIMEOUT_S = 60.0  # offline init takes ~1 s; never wait on a stuck service for long
# Legacy spellings wandb still accepts in WANDB_MODE.
MODE_ALIASES = {"dryrun": "offline", "run": "online"}


def resolve_mode(cfg_mode: str) -> str:
    """The W&B mode to use: `WANDB_MODE` if set, else the config's."""
    mode = os.environ.get("WANDB_MODE") or cfg_mode
    return MODE_ALIASES.get(mode, mode)


class WandbTracker:
    def __init__(
        self,
        cfg: LoggerConfig,
        run_dir: str,
        config: dict,
        name: str,
        group: str | None,
        job_type: str,
    ) -> None:
        wandb = _import_wandb()
        mode = resolve_mode(cfg.mode)
        if mode not in ("offline", "disabled"):
            _require_api_key(wandb, mode)
        self._wandb = wandb
        self._run = _init_run(wandb, cfg, mode, run_dir, config, name, group, job_type)
        self._run.define_metric(TRAIN_STEP)
        self._run.define_metric(EVAL_STEP)
        self._run.define_metric(EVAL_PREFIX + "*", step_metric=EVAL_STEP)
        self._defined: set[str] = set()
        self._last_step: int | None = None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        check_metric_names(metrics)
        row = plain(dict(metrics), "metrics")
        self._define_train_metrics(row)
        if step is not None:
            self._last_step = row[TRAIN_STEP] = int(step)
        # No step= argument: see the module docstring.
        self._run.log(row)

    def log_eval(self, rows: list[dict]) -> None:
        check_eval_rows(rows)
        rows = [plain(row, "eval row") for row in rows]
        for row in rows:
            history_row = {EVAL_PREFIX + key: value for key, value in row.items()}
            if self._last_step is not None:  # which checkpoint this evaluation measured
                history_row[TRAIN_STEP] = self._last_step
            self._run.log(history_row)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        data = [[row.get(column) for column in columns] for row in rows]
        self._run.log({EVAL_PREFIX + "table": self._wandb.Table(columns=columns, data=data)})

    def log_image(self, key: str, path: str) -> None:
        self._define_train_metrics([key])
        self._run.log({key: self._wandb.Image(path)})

    def summary(self, values: dict) -> None:
        self._run.summary.update(plain(dict(values), "summary"))

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None

    def _define_train_metrics(self, keys: Iterable[str]) -> None:
        """Plot each new non-eval key against the trainer step (define once per key)."""
        for key in keys:
            if key in self._defined or key.startswith(EVAL_PREFIX) or key == TRAIN_STEP:
                continue
            self._run.define_metric(key, step_metric=TRAIN_STEP)
            self._defined.add(key)


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as error:
        raise RuntimeError(
            "logger=wandb needs the wandb package: `pip install wandb`, or use logger=jsonl"
        ) from error
    return wandb


def _require_api_key(wandb: Any, mode: str) -> None:
    """Fail fast, before `wandb.init` could prompt or hang, when no key is configured.

    `wandb.login(prompt=False, verify=False)` looks in the same places `wandb.init` does
    (WANDB_API_KEY, settings files, ~/.netrc or $NETRC) and never asks."""
    if wandb.login(prompt=False, verify=False):
        return
    source = "WANDB_MODE" if os.environ.get("WANDB_MODE") else "logger.mode"
    raise RuntimeError(
        f"W&B mode is {mode!r} (from {source}) but no W&B API key is configured. "
        "Run `wandb login` (or set WANDB_API_KEY), or log locally with logger.mode=offline "
        "and upload later with `wandb sync`."
    )


def _init_run(
    wandb: Any,
    cfg: LoggerConfig,
    mode: str,
    run_dir: str,
    config: dict,
    name: str,
    group: str | None,
    job_type: str,
) -> Any:
    os.makedirs(run_dir, exist_ok=True)
    settings = wandb.Settings(
        silent=True,  # no banners in training logs; files are always under <run_dir>/wandb/
        init_timeout=INIT_TIMEOUT_S,
        reinit="create_new",  # each tracker owns its run; never hand back an older one
    )
    try:
        return wandb.init(
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group or group,
            tags=list(cfg.tags) or None,
            name=name,
            job_type=job_type,
            config=plain(dict(config), "config"),
            dir=run_dir,  # wandb adds the "wandb/" folder itself
            mode=mode,
            settings=settings,
        )
    except Exception as error:
        raise RuntimeError(
            f"wandb.init failed (mode={mode!r}, dir={run_dir!r}): {error}\n"
            "Use logger=jsonl to run without W&B."
        ) from error
