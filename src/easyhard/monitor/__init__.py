"""A generalisation and memorisation monitor for any diffusion training loop, online or over saved checkpoints
(docs/monitor.md). Adapters from a user's model to the denoiser interface: :mod:`easyhard.monitor.adapters`."""

from easyhard.monitor.adapters import check_output
from easyhard.monitor.checkpoints import Checkpoint, find_checkpoints, load_checkpoint, load_scheduler
from easyhard.monitor.core import (STATUSES, Monitor, MonitorConfig, assess, check_data, check_same_scale,
                                   moved_away, read_records, records_difference, saved_config)
from easyhard.monitor.offline import monitor_checkpoints
from easyhard.monitor.summary import run_onset, summarize

__all__ = ["STATUSES", "Checkpoint", "Monitor", "MonitorConfig", "assess", "check_data", "check_output",
           "check_same_scale", "find_checkpoints", "load_checkpoint", "load_scheduler", "monitor_checkpoints",
           "moved_away", "read_records", "records_difference", "run_onset", "saved_config", "summarize"]
