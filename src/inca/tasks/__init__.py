"""Saved tasks and the single-pass multi-task predictor.

task = Task.from_adapters("flowers", "ensemble", backbone, class_names,
                          [("block.9/inca", "block.9", adapter), ...])
task.save("runs/flowers")
served = MultiTask([load_task("runs/flowers"), load_task("runs/birds")])
served.predict(pixels)  # {"flowers": (labels, probs), "birds": (labels, probs)}
evaluate_tasks(served, run_split(served.tasks["flowers"], "test"))  # accuracies, one pass
"""

from inca.tasks.combined import CombinedTask
from inca.tasks.evaluate import evaluate_tasks, run_split
from inca.tasks.multi import MultiTask
from inca.tasks.storage import FORMAT, VERSION, load_task, save_task, task_record
from inca.tasks.task import Task

__all__ = [
    "CombinedTask",
    "FORMAT",
    "VERSION",
    "MultiTask",
    "Task",
    "evaluate_tasks",
    "load_task",
    "run_split",
    "save_task",
    "task_record",
]
