"""A language-model teacher served by a Ray Serve deployment (`teacher.placement: service`):
the replica returns the final hidden states of the LM positions (and the Q/K/V asked for),
each worker applies the teacher's LM head, read alone from the checkpoint, so the loss sees
the same full-vocabulary logits as with the teacher in the worker.

The replica's answering code and the worker's request/answer code run here without Serve:
the handle's `.remote(...).result()` calls the replica in this process (the deployment itself
runs end to end in tests/integration/test_teacher_service.py)."""

from __future__ import annotations

import pytest
import torch
from helpers.family_zoo import build_teacher, lm_tokenizer

from distill.cluster.teacher_service import ServedTeacher, TeacherService
from distill.core.data import teacher_view
from distill.core.family_registry import FAMILIES
from distill.core.lazy_teacher import skeleton_teacher
from distill.core.spec_loading import load_spec
from distill.core.teacher import freeze

pytestmark = pytest.mark.unit

TEXTS = [
    "the cat sat on the mat and looked at the dog",
    "a good film",
    "the old man walked to the house by the road at night",
    "music and light",
]


class _InProcess:
    """A deployment handle whose calls reach `replica` in this process, one request per
    batch (`.remote(request).result()`, as Serve's handle answers)."""

    def __init__(self, replica: TeacherService) -> None:
        self.replica = replica

    def __getattr__(self, method: str):
        replica = self.replica

        class _Call:
            @staticmethod
            def remote(request):
                class _Answer:
                    @staticmethod
                    def result():
                        return replica._answer([request])[0]

                return _Answer()

        return _Call()


def _replica(family_name: str, teacher: torch.nn.Module) -> TeacherService:
    replica = object.__new__(TeacherService)  # the answering code, no Serve
    replica.family = FAMILIES[family_name]
    replica.teacher = teacher
    replica.head = None
    replica.batch_rows = []
    return replica


def _served(replica: TeacherService) -> ServedTeacher:
    served = object.__new__(ServedTeacher)
    served.ref, served.has_head, served.handle = None, False, _InProcess(replica)
    served.calls = served.retries = 0
    served.wait_s = 0.0
    return served


def _model_and_batch(name: str, teacher, tokenizer, weights: str, rows: list[str]):
    family = FAMILIES[name]
    spec = load_spec(
        None,
        ["teacher.name=unused", "student.layers=2", "data.max_length=24", "training.seed=7"]
        + [f"objective.weights={weights}"],
    )
    spec = family.resolve_stage(
        spec, "distill", teacher.config, teacher_has_weights=True, teacher_has_head=False
    )
    torch.manual_seed(0)
    model = family.trainable(spec, teacher, tokenizer)
    tokenize, collate = family.batch_functions(tokenizer)
    import datasets

    texts = datasets.Dataset.from_dict({"text": rows})
    return family, model, collate(list(tokenize(texts, tokenizer, 24)))


@pytest.mark.parametrize("name,arch,seed", [("causal", "gpt2", 3), ("seq2seq", "bart", 4)])
def test_rows_batched_together_get_the_hidden_states_each_gets_alone(name, arch, seed):
    tokenizer = lm_tokenizer(arch)
    teacher = freeze(build_teacher(arch, tokenizer, seed=seed))
    family, model, batch = _model_and_batch(name, teacher, tokenizer, "{lm_kl: 1.0}", TEXTS)
    batch = family.prepare_batch(model, batch, torch.Generator().manual_seed(0))
    view = teacher_view(batch)
    layers = (1, 2)
    replica = _replica(name, teacher)
    # Two requests of different input lengths: the long rows 0 and 2, the short 1 and 3, each
    # trimmed to its own longest row (a seq2seq request's decoder inputs keep their length).
    requests = []
    for rows in ([0, 2], [1, 3]):
        part = {k: v[rows] for k, v in view.items() if k != "labels"}
        keep = int(part["attention_mask"].sum(1).max())
        part = {
            k: v[:, :keep] if k in ("input_ids", "attention_mask") else v for k, v in part.items()
        }
        requests.append({**part, "qkv_layers": layers, "head": False})
    assert requests[0]["input_ids"].shape[1] != requests[1]["input_ids"].shape[1]
    together = replica._answer(requests)
    assert replica.batch_rows == [4]  # one forward for both requests
    for request, answer in zip(requests, together, strict=True):
        alone = family.served_outputs(
            teacher,
            None,
            {k: v for k, v in request.items() if torch.is_tensor(v)},
            qkv_layers=layers,
        )
        # The LM positions (a seq2seq LM's decoder inputs were not trimmed); Q/K/V are
        # those of decoder blocks (causal) or encoder blocks (seq2seq): the inputs' length.
        inputs = request["attention_mask"].bool()
        real = torch.ones_like(request["decoder_input_ids"]).bool() if name == "seq2seq" else inputs
        torch.testing.assert_close(answer["hidden"][0][real], alone.hidden[0][real])
        assert set(answer["qkv"]) == {1, 2}
        for got, want in zip(answer["qkv"][2], alone.qkv[2], strict=True):
            torch.testing.assert_close(got[inputs], want[inputs])


@pytest.mark.parametrize("weights", ["{lm: 1.0, lm_kl: 1.0}", "{lm_jsd: 1.0}"])
def test_a_served_causal_teacher_gives_the_in_worker_loss_with_only_its_head_on_the_worker(
    tmp_path, weights
):
    tokenizer = lm_tokenizer("gpt2")
    teacher = freeze(build_teacher("gpt2", tokenizer, seed=3))
    teacher.save_pretrained(tmp_path / "teacher")  # safetensors: the worker reads the head alone
    family, model, batch = _model_and_batch("causal", teacher, tokenizer, weights, TEXTS)

    model.eval()  # no dropout: the two losses see the same student forward
    in_worker, _ = model(batch, family.teacher_outputs(model, teacher, None, batch))

    skeleton = skeleton_teacher(tmp_path / "teacher", family.auto_class)
    head = family.served_teacher_head(skeleton.module, skeleton.keep)
    kept = {n for n, p in skeleton.module.named_parameters() if not p.is_meta}
    assert kept == {"transformer.wte.weight"}  # GPT-2 ties its LM head to the embeddings
    served = _served(_replica("causal", teacher))
    targets = family.teacher_outputs(model, served, head, batch)
    assert served.calls == 1 and targets.head is head
    from_service, _ = model(batch, targets)
    torch.testing.assert_close(from_service, in_worker, rtol=1e-5, atol=1e-6)
    assert in_worker.item() > 0


def _lm_folder(tmp_path) -> tuple[str, str]:
    tokenizer = lm_tokenizer("gpt2")
    folder = tmp_path / "gpt2-teacher"
    build_teacher("gpt2", tokenizer, seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = tmp_path / "texts.txt"
    text.write_text("\n".join(TEXTS * 10) + "\n")
    return str(folder), str(text)


def test_preflight_serves_an_lm_teacher_on_policy_but_not_for_sequence_level_kd(tmp_path):
    from distill.core.spec import SpecError
    from distill.jobs.preflight import preflight_stages

    teacher, text = _lm_folder(tmp_path)
    base = [
        f"teacher.name={teacher}",
        f"data.train.path={text}",
        "training.batch_size=4",
        "student.layers=2",
        "teacher.placement=service",
        "teacher.service.cpus_per_replica=0",
    ]
    (stage,) = preflight_stages(
        load_spec(None, [*base, "objective.on_policy={fraction: 0.5, max_new_tokens: 4}"])
    )
    assert stage.spec.teacher.placement == "service"
    with pytest.raises(SpecError) as err:
        preflight_stages(load_spec(None, [*base, "objective.sequence_kd={}"]))
    line = str(err.value)
    assert line.startswith("objective.sequence_kd: the teacher generates") and "\n" not in line
