"""Guided distillation (Meng et al., CVPR 2023; Salimans & Ho 2022): a student that samples in a few steps.

Stage one teaches a student that takes the guidance scale w as input the teacher's classifier-free guided
output in ONE pass; stage two halves its deterministic DDIM steps on the ``distilled`` grid (progressive
distillation) down to K. ``targets`` holds the pure formulas, ``objective`` the two training objectives the
ordinary training loop runs, ``student`` the student's config and initial checkpoint. Nothing heavy is
imported here.
"""
