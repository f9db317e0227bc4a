"""Plain PyTorch + transformers distillation library: teachers, students, losses, data,
evaluation and export. Nothing here imports Ray; `cluster/` adapts it to Ray Train."""
