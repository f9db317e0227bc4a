"""A skeleton teacher holds no weights, yet a student initialised from its layers through
its `gather` equals one initialised from the loaded teacher."""

import pytest
import torch
from transformers import AutoModel

from distill.core.lazy_teacher import skeleton_teacher, weight_index
from distill.core.student import StudentSize, build_student

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("init", ["every_other_layer", "uniform_map", "first_k"])
def test_student_from_a_skeleton_equals_one_from_the_loaded_teacher(teacher_dir, init):
    teacher = AutoModel.from_pretrained(teacher_dir)
    skeleton, gather, _ = skeleton_teacher(teacher_dir, AutoModel)
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    size = StudentSize(2, 32, 4, 64)
    real = build_student(teacher, size, init=init, seed=3).state_dict()
    lazy = build_student(skeleton, size, init=init, seed=3, gather=gather).state_dict()
    assert real.keys() == lazy.keys()
    for name in real:
        torch.testing.assert_close(lazy[name], real[name], msg=name)
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}  # swapped back out


def test_no_safetensors_means_no_skeleton(tmp_path, teacher_dir):
    assert weight_index(tmp_path) is None and skeleton_teacher(tmp_path, AutoModel) is None
    assert weight_index(teacher_dir)  # the fixture's folder has model.safetensors
