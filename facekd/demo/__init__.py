"""``facekd demo``: distillation on an embedded synthetic default, no data or weights needed.

``setting`` (the teacher knows more than a student can learn alone: Hinton's scarce labels),
``run`` (train, evaluate, profile, report), ``verdicts`` (sentences computed from the run).
"""

from facekd.demo.run import run_demo
from facekd.demo.setting import FULL, DemoSize, student_rows
from facekd.demo.verdicts import method_verdicts, setting_paragraph

__all__ = ["FULL", "DemoSize", "method_verdicts", "run_demo", "setting_paragraph", "student_rows"]
