"""The distillation engine: ``distiller`` (student + head + losses + frozen teacher),
``trainer`` (the one Trainer), ``builder`` (config -> data set, distiller, trainer),
``settings`` (the Trainer's knobs, schedule, optimizer).

Nothing is imported here, so ``facekd.config`` can read ``engine.settings`` without pulling the
training loop in.
"""
