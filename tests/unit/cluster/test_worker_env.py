"""A submitted job's nodes rebase the spec's bundled paths onto their own copy of the job's
working dir, in the job and in its stages (`JobSpec.map_paths`)."""

from __future__ import annotations

from distill.cluster.worker_env import in_job_working_dir
from distill.core.spec_loading import load_spec_dict


def test_bundled_paths_are_rebased_in_the_job_and_its_stages(tmp_path, monkeypatch):
    node = tmp_path / "node" / "_ray_pkg_1"
    (node / "job" / "files" / "0_teacher").mkdir(parents=True)
    (node / "job" / ".distill-job").write_text("")
    (node / "job" / "files" / "1_a.csv").write_text("text\nx\n")
    spec = load_spec_dict(
        {
            "teacher": {"name": "/driver/_ray_pkg_1/job/files/0_teacher"},
            "data": {"train": [{"path": "job/files/1_a.csv"}, {"path": "glue"}]},
            "stages": [{"name": "kd", "data": {"train": {"path": "job/files/1_a.csv"}}}],
        }
    )
    monkeypatch.setenv("DISTILL_SUBMITTED_JOB", "1")
    monkeypatch.setenv("PYTHONPATH", str(node))
    here = in_job_working_dir(spec)
    assert here.teacher.name == str(node / "job" / "files" / "0_teacher")
    assert [s.path for s in here.data.train] == [str(node / "job/files/1_a.csv"), "glue"]
    assert here.stages[0].data == {"train": {"path": str(node / "job/files/1_a.csv")}}
    assert in_job_working_dir(here) == here  # rebased paths exist here: left as they are


def test_a_partitioned_teacher_gets_freed_blocks_returned_to_the_os():
    from distill.cluster.worker_env import worker_env
    from distill.core.spec_loading import load_spec

    zero3 = worker_env(load_spec(None, ["teacher.placement=zero3"]))
    assert zero3["MALLOC_MMAP_THRESHOLD_"] == str(2**20)
    assert zero3["THP_MEM_ALLOC_ENABLE"] == "1"
    assert "MALLOC_MMAP_THRESHOLD_" not in worker_env(
        load_spec(None, ["teacher.placement=replicate"])
    )
