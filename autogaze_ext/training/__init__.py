"""Training AutoGaze (spec §7): label collation, teacher-forced scoring (``AutoGaze.score``), NTP and GRPO losses."""
from ..model.scoring import TeacherForcedScores
from .collate import collate_gazing_info
from .losses import (discounted_advantages, group_centered_rewards, group_repeat, grpo_advantages, grpo_loss,
                     ntp_loss, sample_group)

__all__ = [
    "TeacherForcedScores",
    "collate_gazing_info",
    "discounted_advantages",
    "group_centered_rewards",
    "group_repeat",
    "grpo_advantages",
    "grpo_loss",
    "ntp_loss",
    "sample_group",
]
