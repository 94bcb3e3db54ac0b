"""posbench's submitit launchers (Hydra finds launchers only in this namespace): hydra-submitit-launcher's,
with a requeued train job resuming its run (``posbench/launchers.py``)."""

from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import LocalQueueConf, SlurmQueueConf

from posbench.launchers import ContinuesOnRequeue


class LocalLauncher(ContinuesOnRequeue, submitit_launcher.LocalLauncher):
    """``hydra/launcher=submitit_local``: submitit's local executor, one process per job on this machine."""

    schema = LocalQueueConf


class SlurmLauncher(ContinuesOnRequeue, submitit_launcher.SlurmLauncher):
    """``hydra/launcher=slurm``: one SLURM job per sweep job."""

    schema = SlurmQueueConf
