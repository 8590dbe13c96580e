"""A generalisation and memorisation monitor for any diffusion training loop, online or over saved checkpoints
(docs/monitor.md)."""

from easyhard.monitor.core import (STATUSES, Monitor, MonitorConfig, assess, check_data, check_output,
                                   check_same_scale, read_records)

__all__ = ["STATUSES", "Monitor", "MonitorConfig", "assess", "check_data", "check_output", "check_same_scale",
           "read_records"]
