"""Two JAX processes (4 CPU devices each, gloo) train exactly like one process with 8 devices."""

import json
import os
import re
import socket
import signal
import subprocess
import sys
import time

import pytest

from conftest import subprocess_env
from jaxbatch import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["model.preset=tiny", "model.num_layers=1", "model.hidden_dropout=0", "data.seq_len=16", "data.num_train=256",
        "data.num_eval=64", "train.batch_size=32", "train.steps=6", "train.log_every=2", "train.eval_every=6",
        "train.progress=false", "mesh.data=4", "mesh.fsdp=2"]


def _losses(run_dir) -> list[float]:
    return [r["loss"] for r in map(json.loads, open(run_dir / "metrics.jsonl")) if r["kind"] == "train"]


def _one_and_two(tmp_path, args) -> tuple[dict, dict]:
    """Trains `args` in this process (8 devices) and in two of 4; asserts the same training losses and returns
    both final evaluations."""
    one = tmp_path / "one"
    assert cli.main(["train", *args, f"train.run_dir={one}"]) == 0
    two = tmp_path / "two"
    procs = _launch_two(two, args)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "process 1 of 2: 4 local / 8 global devices" in outputs[1]
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5)
    final = [json.load(open(d / "summary.json"))["final_eval"] for d in (one, two)]
    assert final[1]["loss"] == pytest.approx(final[0]["loss"], rel=1e-5)
    return final[0], final[1]


def test_two_processes_match_one(tmp_path, capsys):
    """Two hosts train as one; `jaxbatch evaluate` and `predict` across them (each host computing its share of
    every batch, process 0 printing) report and label as one process of 8 devices does."""
    one, two = _one_and_two(tmp_path, ARGS)
    assert two["entities"]["micro avg"]["support"] == one["entities"]["micro avg"]["support"]
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "one"), "--split", "validation"]) == 0
    alone = capsys.readouterr().out.splitlines()[0]
    procs = _hosts(lambda i: ["evaluate", str(tmp_path / "one"), "--split", "validation"])
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert "process 1 of 2: 4 local / 8 global devices" in outputs[1][1] and "validation (" not in outputs[1][0]
    printed = next(line for line in outputs[0][0].splitlines() if line.startswith("validation ("))  # gloo's lines too
    numbers = [[float(x) for x in re.findall(r"\d+\.\d+", line)] for line in (alone, printed)]
    assert alone.startswith("validation (64 examples") and numbers[1] == pytest.approx(numbers[0], abs=2e-4)
    # predict labels as one process of 8 devices does: across both hosts (process 0 writing), and on 2 CPU devices
    (tmp_path / "in.txt").write_text("".join(f"w{i} w{i + 1} w{i + 2}\n" for i in range(40)) + "w1 w2 w3 w4 w5\n")
    assert cli.main(["predict", str(tmp_path / "one"), "--input", str(tmp_path / "in.txt")]) == 0
    alone = capsys.readouterr().out
    procs = _hosts(lambda i: ["predict", str(tmp_path / "one"), "--input", str(tmp_path / "in.txt")])
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    (tmp_path / "other.txt").write_text("w1 w2\n")  # a host given another file is named, not mislabelled
    procs = _hosts(lambda i: ["predict", str(tmp_path / "one"), "--input", str(tmp_path / ("in.txt", "other.txt")[i])])
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2] and "the hosts read different data" in errors[0], errors[0][-2000:]
    assert cli.main(["predict", str(tmp_path / "one"), "distributed.num_processes=2"]) == 2  # not stdin
    assert "reads --input FILE on every host" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "jaxbatch", "predict", str(tmp_path / "one"), "--input",
                           str(tmp_path / "in.txt"), "distributed.cpu_devices=2", "mesh.model=2"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [[json.loads(line) for line in out.splitlines() if line.startswith("{")]
            for out in (alone, outputs[0][0], done.stdout)]
    assert not any(line.startswith("{") for line in outputs[1][0].splitlines())
    assert [len(r["tags"]) for r in runs[0]] == [3] * 40 + [5]
    scores = [[e.pop("score") for r in records for e in r["entities"]] for records in runs]  # to rounding
    assert runs[1] == runs[0] and runs[2] == runs[0]
    assert scores[1] == pytest.approx(scores[0], abs=1e-5) and scores[2] == pytest.approx(scores[0], abs=1e-5)


def test_two_processes_mask_a_masked_lm_as_one_does(tmp_path):
    """Each host masks its own rows of every batch (data/masking.py), by their places in the global batch: two
    processes train a masked LM exactly as one does."""
    from jaxbatch.models import bert

    words = [f"w{i}" for i in range(60)]
    bert.tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]).save_pretrained(tmp_path / "tok")
    (tmp_path / "corpus.txt").write_text("\n\n".join(" ".join(words[(d + k) % 60] for k in range(4 + d % 9))
                                                     for d in range(300)))
    args = [a for a in ARGS if not a.startswith(("data.num_", "train.eval_every"))] + [
        "data.name=text", f"data.data_dir={tmp_path / 'corpus.txt'}", f"data.tokenizer={tmp_path / 'tok'}",
        "train.eval_every=3"]
    one, two = _one_and_two(tmp_path, args)
    assert "perplexity" in one


def _launch_two(run_dir, args):
    """Two processes of 4 CPU devices each training `args` into run_dir (standard error in standard output)."""
    return _hosts(lambda i: ["train", *args, f"train.run_dir={run_dir}"], stderr=subprocess.STDOUT)


def _hosts(argv, stderr=subprocess.PIPE) -> list[subprocess.Popen]:
    """Two processes of 4 CPU devices each running `jaxbatch *argv(process_id)`, coordinated over a free local
    port."""
    port = _free_port()
    return [subprocess.Popen([sys.executable, "-m", "jaxbatch", *argv(i), f"distributed.coordinator=127.0.0.1:{port}",
                              "distributed.num_processes=2", f"distributed.process_id={i}",
                              "distributed.cpu_devices=4"], env=subprocess_env(4), stdout=subprocess.PIPE,
                             stderr=stderr, text=True, cwd=ROOT)
            for i in range(2)]


def test_a_process_that_never_joins_ends_the_others_after_the_init_timeout(tmp_path):
    """One of two processes started (a wrong count or address): the other says whom it waits for and how long,
    then JAX's coordination service aborts it (SIGABRT) after distributed.init_timeout, not JAX's 300 s."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "jaxbatch", "train", *ARGS, f"train.run_dir={tmp_path / 'r'}",
                           f"distributed.coordinator=127.0.0.1:{_free_port()}", "distributed.num_processes=2",
                           "distributed.init_timeout=2", "distributed.cpu_devices=4"], env=subprocess_env(4),
                          capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert proc.returncode == -signal.SIGABRT and time.monotonic() - start < 120, proc.stderr[-2000:]  # 134 in a shell
    assert "process 0 of 2: joining 127.0.0.1:" in proc.stderr and "(waits 2 s for every process" in proc.stderr
    assert "DEADLINE_EXCEEDED" in proc.stderr and not (tmp_path / "r" / "checkpoints").exists()


def test_a_host_that_dies_mid_run_ends_the_others_after_the_heartbeat_timeout(tmp_path):
    """kill -9 of one host while both train: the survivor, blocked in a collective, is aborted by JAX's
    coordination service after distributed.heartbeat_timeout (5 s here; JAX's default is 100 s)."""
    run = tmp_path / "r"
    procs = _hosts(lambda i: ["train", *ARGS, "train.steps=100000", "train.eval_every=0", "train.log_every=50",
                              f"train.run_dir={run}", "distributed.heartbeat_timeout=5"], stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 1):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.5)
        procs[1].kill()
        killed = time.monotonic()
        procs[0].wait(timeout=120)
        # JAX's abort (SIGABRT, exit 134 in a shell) as seen here; the point is the time: ~100 s by default
        assert procs[0].returncode != 0 and time.monotonic() - killed < 60, procs[0].returncode
    finally:
        for p in procs:
            p.kill()
            p.communicate()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_across_hosts_continues_as_one_process(tmp_path, capsys):
    """A decoder sharded over both hosts' devices (FSDP) generates the tokens one process does, greedy (with
    n-gram blocking), sampled, by beam search and by beam sampling; process 0 prints; hosts given other prompts
    stop in one line."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join("the cat sat on the mat. the dog sat on the log." for _ in range(40)))
    run = tmp_path / "lm"
    assert cli.main(["train", "model.family=decoder", "model.preset=gpt-tiny", "model.num_layers=1", "data.name=text",
                     f"data.data_dir={corpus}", "data.seq_len=32", "train.batch_size=8", "train.steps=30",
                     "train.eval_every=0", "train.progress=false", f"train.run_dir={run}"]) == 0
    asks = (["--prompt", "the cat", "--prompt", "a", "--max-new-tokens", "12", "--temperature", "0",
             "--no-repeat-ngram-size", "3"],
            ["--prompt", "the", "--max-new-tokens", "12", "--temperature", "1", "--seed", "5"],
            ["--prompt", "the dog", "--max-new-tokens", "8", "--temperature", "0", "--num-beams", "3",
             "--num-return-sequences", "2"],
            ["--prompt", "the dog", "--max-new-tokens", "8", "--temperature", "0.8", "--num-beams", "3",
             "--min-new-tokens", "4"])  # beam sampling
    capsys.readouterr()
    for ask in asks:
        assert cli.main(["generate", str(run), *ask]) == 0
        alone = capsys.readouterr().out
        procs = _hosts(lambda i: ["generate", str(run), *ask, "mesh.fsdp=-1", "mesh.data=1"])
        outputs = [p.communicate(timeout=600) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
        # gloo's threads print "[Gloo] Rank r is connected to n peer ranks..." to the same stdout, their lines
        # sometimes cut into each other ("7" alone on a line): only the lines one process printed are compared
        printed = [x for x in alone.splitlines() if x]
        ours = [[x for x in out.splitlines() if x in printed] for out, _ in outputs]
        assert ours == [printed, []] and "-" * 40 in alone
    procs = _hosts(lambda i: ["generate", str(run), "--prompt", ("the", "a")[i]])
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2] and "generate's prompts and settings: the hosts read different" in (
        errors[0]), errors[0][-2000:]


def test_hosts_that_read_different_data_stop_in_one_line(tmp_path):
    """A stale copy of the data on one worker: each host would train on its share of different rows (or wait
    on the others at a step the other never takes); both stop before compiling, naming the data."""
    procs = _hosts(lambda i: ["train", *ARGS, f"data.num_train={(256, 192)[i]}", f"train.run_dir={tmp_path / 'run'}"])
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errors[0][-2000:] + errors[1][-2000:]
    assert errors[0].strip().splitlines()[-1] == ("jaxbatch: DataError: synthetic_ner: the hosts read different data "
                                                  "(give each the same files)")


def test_sigterm_to_one_host_stops_both_at_the_same_step(tmp_path):
    """Preemption reaches one host: both agree to stop, save the same step collectively, exit 75, and resume."""
    run = tmp_path / "two"
    args = [*ARGS, "train.steps=20", "train.log_every=1", "train.eval_every=0"]
    procs = _launch_two(run, args)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (len(metrics.read_text().splitlines()) if metrics.is_file() else 0) < 3:
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # not the host that prints: process 0 learns it from the agreement
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [75, 75], outputs[0][-2000:] + outputs[1][-2000:]
    from jaxbatch.checkpoint import Checkpointer

    step = Checkpointer(run / "checkpoints", read_only=True).latest_step()
    assert 3 <= step < 20 and f"stopped at step {step} of 20" in outputs[0]
    assert "(another process was asked to stop; checkpoint saved)" in outputs[0]
    procs = _launch_two(run, args)
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:]
    assert f"resumed from {run / 'checkpoints'} at step {step}" in outputs[0]
    rows = [r["step"] for r in map(json.loads, open(metrics)) if r["kind"] == "train"]
    assert rows == list(range(1, 21))


def test_a_run_resumes_on_another_number_of_hosts_as_one_uninterrupted_process(tmp_path, capsys):
    """Stopped on two hosts and resumed on one, or the reverse, a run trains as one process does throughout, dropout
    included (every host reads its part of each global batch, so each row meets the mask of its place). Grain keeps
    a position per process (process_I-of-N.json): each checkpoint was set aside as unusable and the run began again
    at step 0."""
    args = [*ARGS, "model.hidden_dropout=0.1", "train.steps=8", "train.log_every=1", "train.eval_every=0"]
    assert cli.main(["train", *args, f"train.run_dir={tmp_path / 'one'}"]) == 0
    for first_two in (True, False):
        run = tmp_path / f"cut-{first_two}"
        cut = [*args, "train.stop_after=4", f"train.run_dir={run}"]
        if first_two:
            procs = _launch_two(run, cut[:-1])
            outputs = [p.communicate(timeout=600)[0] for p in procs]
            assert [p.returncode for p in procs] == [75, 75], outputs[0][-3000:]
            capsys.readouterr()
            assert cli.main(["train", *args, f"train.run_dir={run}"]) == 0
            printed = capsys.readouterr().out
        else:
            assert cli.main(["train", *cut]) == 75
            procs = _launch_two(run, args)
            printed = [p.communicate(timeout=600)[0] for p in procs][0]
            assert [p.returncode for p in procs] == [0, 0], printed[-3000:]
        assert f"resumed from {run / 'checkpoints'} at step 4" in printed and "unusable" not in printed
        assert _losses(run) == pytest.approx(_losses(tmp_path / "one"), rel=1e-5)


def test_cpu_devices_one_per_core_and_refused_once_jax_has_started(monkeypatch):
    import jax

    from jaxbatch import config, distributed

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    assert distributed.cpu_device_count(-1) == 6 and distributed.cpu_device_count(3) == 3
    assert [distributed.cpu_devices_dividing(b) for b in (12, 32, 7)] == [6, 4, 1]  # lm_pretrain's CPU default
    jax.devices()  # this process's JAX has started: the count can no longer change, and says so
    for bad, message in ((-1, "JAX had started already"), (-2, "use a count")):
        with pytest.raises(config.ConfigError, match=message):
            distributed.initialize(config.build([f"distributed.cpu_devices={bad}"]))
    for overrides, message in ((["distributed.num_processes=2", "distributed.coordinator=host"], "use HOST:PORT"),
                               (["distributed.num_processes=2", "distributed.coordinator=h:0"], "use HOST:PORT"),
                               (["distributed.process_id=2", "distributed.num_processes=2"], r"process_id=2 must be"),
                               (["distributed.cpu_one_arena=sometimes"], "use auto, true or false")):
        with pytest.raises(config.ConfigError, match=message):  # before jax.distributed is touched
            distributed.initialize(config.build(overrides))


FAULTS_OF_A_STEP = """
import resource, sys
sys.path.insert(0, "tests")
from conftest import random_batch, tiny_config
import jax
from jaxbatch import distributed, host
from jaxbatch import run as run_lib
cfg = tiny_config("data.seq_len=128", *sys.argv[1:])
distributed.initialize(cfg)
run = run_lib.setup(cfg)
batch = {k: jax.device_put(v, run.batch_sh[k]) for k, v in random_batch(cfg).items()}
state, faults = run.state, []
for _ in range(6):  # the heap may grow on a later step too (two steps' blocks alive at once), then it stays
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    state, metrics = run.steps.train(state, batch)
    jax.block_until_ready(metrics["loss"])
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(host.one_arena.cache_info().currsize, min(faults[1:]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_one_arena_is_taken_when_the_steps_temporaries_pass_a_threads_heap():
    """distributed.cpu_one_arena=auto: a step whose temporaries pass 64 MiB on its device (the tiny model at 64 x
    128, ~120 MiB) gets one arena, so its block stays mapped from step to step (~30,000 page faults a step without
    it); a step of 8 x 128 (~15 MiB, which a thread's heap keeps) does not pay for the arena's lock."""
    def run(*overrides):
        done = subprocess.run([sys.executable, "-c", FAULTS_OF_A_STEP, *overrides], env=subprocess_env(1),
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
        return tuple(map(int, done.stdout.split()))

    arena, faults = run("train.batch_size=64")
    assert arena == 1 and faults < 2000
    arena, faults = run("train.batch_size=64", "distributed.cpu_one_arena=false")
    assert arena == 0 and faults > 20000
    assert run("train.batch_size=8")[0] == 0


SIZE_AND_START = """
import sys
import jax
from jaxbatch import config, distributed
distributed.initialize(config.build(sys.argv[1:]))
print(jax.device_count())
"""


def test_a_run_dir_as_the_pretrained_model_is_sized_without_starting_jax(tmp_path, monkeypatch):
    """model.pretrained=RUN_DIR: the arena's estimate reads the run's saved shape, not its export, which starts
    JAX (distributed.cpu_devices could then not be set, nor jax.distributed started: `jaxbatch train` failed);
    a vocabulary left to the tokenizer (0) takes the named tokenizer's size, here the run's own."""
    from conftest import tiny_config
    from jaxbatch import config, distributed, train
    from jaxbatch import run as run_lib

    source = tmp_path / "sst"
    trained = train.train(tiny_config("data.name=synthetic_sst", "train.steps=1", "train.eval_every=0",
                                      "data.num_train=16", "model.intermediate_size=96", f"train.run_dir={source}"))
    monkeypatch.setattr(run_lib, "exported", lambda run_dir: pytest.fail("exported: JAX would start"))
    model = distributed._shape(config.build([f"model.pretrained={source}", "data.name=synthetic_ner"]))
    shape = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
    assert [getattr(model, f) for f in shape] == [getattr(trained.spec.model, f) for f in shape]
    assert model.intermediate_size == 96
    peft = tmp_path / "adapter"  # a PEFT adapter trained on the run: the run's shape too
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                          "task_type": "TOKEN_CLS",
                                                          "base_model_name_or_path": str(source)}))
    on_run = distributed._shape(config.build([f"model.pretrained={peft}", "data.name=synthetic_ner"]))
    assert [getattr(on_run, f) for f in shape] == [getattr(trained.spec.model, f) for f in shape]
    unsized = config.build(["model.preset=tiny", "model.vocab_size=0", f"data.tokenizer={source}", "data.name=text"])
    assert distributed._shape(unsized).vocab_size == len(trained.data.tokenizer) > 100
    # a decoder on text with a word-piece vocabulary (30,522): its logits take it over a thread's heap where the
    # same decoder without them (the data's task unread, or no vocabulary) stays under
    decoder = ["model.family=decoder", "model.preset=gpt-tiny", "model.vocab_size=0", "data.name=text",
               "train.batch_size=4", "data.seq_len=128", "distributed.cpu_devices=1"]
    wordpiece = distributed._shape(config.build([*decoder, "data.tokenizer=minilm-l6"]))
    assert (wordpiece.task, wordpiece.vocab_size) == ("lm", 30522)
    assert distributed.wants_one_arena(config.build([*decoder, "data.tokenizer=minilm-l6"]))
    assert not distributed.wants_one_arena(config.build([*decoder, f"data.tokenizer={source}"]))
    for pretrained in (source, peft):
        done = subprocess.run([sys.executable, "-c", SIZE_AND_START, f"model.pretrained={pretrained}",
                               "data.name=synthetic_ner", "distributed.cpu_devices=2"], env=subprocess_env(),
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert done.returncode == 0 and done.stdout.split()[-1] == "2", done.stderr[-2000:]
