"""The student's model card, `student/README.md`, generated from `report.json` and the
run's spec once the run is evaluated: teacher, student shape, method and stages, data,
quality, speed, size, and how to load the folder (Hugging Face, sentence-transformers,
the task head, ONNX). A Hub-style YAML header comes first.
"""

from __future__ import annotations

from pathlib import Path

from distill.core.spec import JobSpec
from distill.jobs.report import format_number

CARD_FILE = "README.md"
_GENERATIVE = ("causal", "seq2seq")


def _kind(report: dict, has_st: bool, has_classifier: bool) -> tuple[str, str]:
    """(library_name, pipeline_tag) for the YAML header."""
    family = (report.get("teacher") or {}).get("family") or "encoder"
    if family in _GENERATIVE:
        tag = "text2text-generation" if family == "seq2seq" else "text-generation"
        return "transformers", tag
    if has_classifier:
        return "transformers", "text-classification"
    if has_st:
        return "sentence-transformers", "sentence-similarity"
    return "transformers", "feature-extraction"


def _loading(report: dict, has_st: bool, has_classifier: bool, has_onnx: bool) -> str:
    family = (report.get("teacher") or {}).get("family") or "encoder"
    if family in _GENERATIVE:
        auto = "AutoModelForSeq2SeqLM" if family == "seq2seq" else "AutoModelForCausalLM"
        return (
            "```python\n"
            f"from transformers import AutoTokenizer, {auto}\n\n"
            'tokenizer = AutoTokenizer.from_pretrained("student")\n'
            f'model = {auto}.from_pretrained("student")\n'
            "```\n"
        )
    blocks = []
    if has_st:
        blocks.append(
            "With sentence-transformers:\n\n```python\n"
            "from sentence_transformers import SentenceTransformer\n\n"
            'model = SentenceTransformer("student")\n'
            'embeddings = model.encode(["A first sentence.", "Another one."])\n```\n'
        )
    blocks.append(
        "With transformers (the encoder; distill's sentence vector is the mean of the token "
        "states over the attention mask"
        + (", then the `2_Dense` projection" if has_st else "")
        + "):\n\n```python\n"
        "from transformers import AutoModel, AutoTokenizer\n\n"
        'tokenizer = AutoTokenizer.from_pretrained("student")\n'
        'model = AutoModel.from_pretrained("student")\n```\n'
    )
    if has_classifier:
        blocks.append(
            "The trained task head (a linear layer over the mean-pooled states; its modeling "
            "file `modeling_distill.py` ships in this folder):\n\n```python\n"
            "from transformers import AutoModelForSequenceClassification, pipeline\n\n"
            "model = AutoModelForSequenceClassification.from_pretrained("
            '"student", trust_remote_code=True)\n'
            'classify = pipeline("text-classification", model="student", '
            "trust_remote_code=True)\n```\n"
            '(A regression head gives one score: pass `function_to_apply="none"` to the '
            "pipeline.)\n"
        )
    if has_onnx:
        blocks.append(
            "ONNX (`distill export RUN --format onnx`): `onnx/model.onnx` takes `input_ids` and "
            "`attention_mask` and returns `sentence_embedding`; run it with onnxruntime.\n"
        )
    return "\n".join(blocks)


def _speed_rows(report: dict) -> list[str]:
    """Throughput, and the latency rows of the report's table (`report.latency_rows`)."""
    from distill.jobs.report import latency_rows

    sp = report.get("speed") or {}
    rows = [
        f"| throughput ({sp.get('unit', '-')}, batch {sp.get('batch_size', 32)}) | "
        f"{format_number(sp.get('teacher'))} | {format_number(sp.get('student'))} | {format_number(sp.get('speedup'), 3)}x |"
    ]
    rows += [f"| {' | '.join(row)} |" for row in latency_rows(report.get("latency"))]
    return rows


def write_model_card(student: Path, report: dict, spec: JobSpec) -> Path:
    """Write `README.md` into a local student folder, describing what the folder holds."""
    from distill.core.hf_classifier import MODELING_FILE

    card = model_card(
        report,
        spec,
        has_st=(student / "modules.json").is_file(),
        has_classifier=(student / MODELING_FILE).is_file(),
        has_onnx=(student / "onnx").is_dir(),
    )
    (student / CARD_FILE).write_text(card)
    return student / CARD_FILE


def model_card(
    report: dict,
    spec: JobSpec,
    *,
    has_st: bool = False,
    has_classifier: bool = False,
    has_onnx: bool = False,
) -> str:
    """The Markdown model card of a run's student."""
    t, s, q = report.get("teacher") or {}, report.get("student") or {}, report.get("quality") or {}
    size, tr = report.get("size") or {}, report.get("training") or {}
    library, tag = _kind(report, has_st, has_classifier)
    name = (report.get("run") or {}).get("name", spec.output.name)
    header = [
        "---",
        f"library_name: {library}",
        f"pipeline_tag: {tag}",
        "tags:",
        "- distill",
        "- knowledge-distillation",
    ]
    if "/" in str(t.get("name", "")) and not str(t.get("name")).startswith(("/", ".")):
        header.append(f"base_model: {t['name']}")  # a Hub id
    header.append("---")
    shape = (
        f"BiLSTM, embedding {spec.student.lstm.embedding_dim}, hidden {spec.student.lstm.hidden} "
        f"per direction, {spec.student.lstm.layers} layer(s)"
        if s.get("kind") == "lstm"
        else f"{s.get('layers')} layers, hidden {s.get('hidden')}, {s.get('heads')} heads, "
        f"ffn {s.get('ffn')} (init `{s.get('init')}`)"
    )
    stages = report.get("stages") or []
    weights = spec.objective.weights or {}  # None: the teacher family's default objective
    method = ", ".join(f"`{k}` x {v:g}" for k, v in weights.items()) or "the family's default"
    sources = ", ".join(f"`{src.path}`" for src in spec.data.train_sources)
    lines = [
        *header,
        "",
        f"# {name}",
        "",
        f"A student distilled from **{t.get('name')}** ({format_number(t.get('parameters'))} parameters, "
        f"{t.get('layers')} layers, hidden {t.get('hidden')}) with distill "
        "(knowledge distillation on Ray Train + DeepSpeed).",
        "",
        "## Student",
        "",
        f"- Shape: {shape}; {format_number(size.get('student_parameters'))} parameters "
        f"({format_number(size.get('compression'), 3)}x fewer than the teacher).",
        f"- Method: objective {method or '-'}"
        + (f"; task `{spec.task.type}`" if spec.task else "")
        + ".",
    ]
    if len(stages) > 1:
        lines.append(
            "- Stages: "
            + " -> ".join(f"{x['name']} ({x['kind']}, {x['steps']} steps)" for x in stages)
            + "."
        )
    lines += [
        f"- Data: {sources}; max length {spec.data.max_length} tokens.",
        f"- Training: {format_number(tr.get('steps'))} steps of {spec.training.batch_size} rows x "
        f"{tr.get('num_workers')} workers"
        + (
            f" x {spec.training.gradient_accumulation_steps} accumulated"
            if spec.training.gradient_accumulation_steps > 1
            else ""
        )
        + f", DeepSpeed ZeRO-{tr.get('zero_stage')}, {tr.get('precision')}; loss "
        f"{format_number(tr.get('first_loss'))} -> {format_number(tr.get('final_loss'))}.",
        "",
        "## Results",
        "",
        "| | teacher | student | student vs teacher |",
        "| --- | --- | --- | --- |",
        f"| parameters | {format_number(size.get('teacher_parameters'))} | "
        f"{format_number(size.get('student_parameters'))} | {format_number(size.get('compression'), 3)}x smaller |",
        f"| {q.get('metric')} ({q.get('split', '-')}, n={q.get('n')}) | {format_number(q.get('teacher'))} | "
        f"{format_number(q.get('student'))} | {format_number(q.get('retention'), 3)} retained |",
    ]
    task = report.get("task")
    if task:
        lines.append(
            f"| task {task['metric']} (n={task['n']}) | {format_number(task['teacher'])} | "
            f"{format_number(task['student'])} | {format_number(task.get('retention'), 3)} retained |"
        )
    lines += _speed_rows(report)
    lines += [
        "",
        "Measured by distill on the run's own held-out data (`report.json` in the run folder "
        "has every number and how it was measured).",
        "",
        "## How to load",
        "",
        _loading(report, has_st, has_classifier, has_onnx),
        "## Reproduce",
        "",
        "The run folder holds the resolved spec: `distill run config.yaml` trains this student "
        "again.",
        "",
    ]
    return "\n".join(lines)
