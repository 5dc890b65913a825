"""Training AutoGaze (spec §7): label collation, teacher-forced scoring (``AutoGaze.score``), NTP and GRPO losses,
gaze labels in the official JSON format, and the trainer."""
from ..model.scoring import TeacherForcedScores
from .collate import collate_gazing_info
from .losses import (discounted_advantages, group_centered_rewards, group_repeat, grpo_advantages, grpo_loss,
                     ntp_loss, sample_group)
from .labels import label_clips, label_video, read_labels, write_labels
from .trainer import TrainConfig, Trainer, train

__all__ = [
    "TeacherForcedScores",
    "TrainConfig",
    "Trainer",
    "collate_gazing_info",
    "discounted_advantages",
    "group_centered_rewards",
    "group_repeat",
    "grpo_advantages",
    "grpo_loss",
    "label_clips",
    "label_video",
    "ntp_loss",
    "read_labels",
    "sample_group",
    "train",
    "write_labels",
]
