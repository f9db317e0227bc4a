"""Names of the files a run's checkpoints carry, shared by the worker loop and the driver
(kept apart from `worker_loop` so the driver can read them without importing DeepSpeed)."""

TRAIN_DIR = "train"  # the job's Ray Train run (every stage): <run>/train/checkpoint_*
STAGES_DIR = "stages"  # per stage: <run>/stages/<name>/{config.yaml, done.json, student/}
ENGINE_TAG = "engine"  # DeepSpeed checkpoint tag: <checkpoint>/engine/...
STATE_FILE = "train_state.json"  # step, metrics history, teacher fingerprint
RNG_FILE = "rng_state_rank{rank}.pt"  # each rank's random states: a resume draws as the run
STUDENT_DIR = "student"  # HF export, final checkpoint only
PROBE_FILE = "probe.pt"  # trained model's embeddings of PROBE_TEXTS, final checkpoint only
DIVERGED_FILE = "train/diverged.json"  # why a diverging run stopped (worker -> driver)
