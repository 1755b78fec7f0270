"""Recipes: the jobs users run, put together from the layers below.

``plan_run.run_plan`` is the main job (an adapter plan trained one-to-many from the activation
cache, selection, ensembles, saved tasks, the report); ``compare`` runs every registered method
in one harness. They sit above training, tasks and reports, and only the CLI and benchmarks
sit above them.
"""
