"""A complete `report.json` as `distill run` writes it (schema_version 1), for the tests of
its readers (`distill report`, `runs list`)."""

GOOD_REPORT = {
    "schema_version": 1,
    "run": {"name": "good", "dir": "/x/good", "status": "completed", "wall_time_s": 12.5},
    "size": {"teacher_parameters": 1000, "student_parameters": 500, "compression": 2.0},
    "quality": {
        "metric": "cosine_agreement",
        "n": 10,
        "teacher": 1.0,
        "student": 0.8,
        "retention": 0.8,
    },
    "task": None,
    "stages": [{"name": "train", "kind": "distill", "steps": 20}],
    "speed": {"unit": "sentences/s", "teacher": 10.0, "student": 20.0, "speedup": 2.0},
    "training": {
        "steps": 20,
        "first_loss": 1.0,
        "final_loss": 0.5,
        "samples_per_s": 30.0,
        "num_workers": 2,
        "zero_stage": 2,
        "precision": "fp32",
    },
    "paths": {"student": "/x/good/student"},
}
