"""Experiments: a TOML config -> the grid of FaceCure runs -> results in one output folder.

Modules, in the order data flows: `config` (schema, `extends`, reading and writing configs), `build`
(config entries -> attacks, defenses, victims, trainers, users), `runner` (`run_experiment`),
`results` (the output folder: runs.jsonl as results arrive, then CSV, Markdown, JSON and the report),
`report_folder` (a finished folder's report rebuilt from its files: `puface report html`).

    from puface.experiments import load_config, run_experiment
    result = run_experiment(load_config("demo"), "runs/demo")
"""

from .config import AttackEntry, DefenseEntry, ExperimentConfig, TrainerEntry, config_text, load_config
from .runner import ExperimentResult, plan_experiment, run_experiment

__all__ = ["ExperimentConfig", "AttackEntry", "TrainerEntry", "DefenseEntry", "load_config", "config_text",
           "run_experiment", "plan_experiment", "ExperimentResult"]
