"""A real Ray cluster on this machine: a head and a second node started with ``ray start`` (each with its
own ports and temp dir, as on two machines), searches submitted with ``ray job submit`` and the Python
``JobSubmissionClient``, a job stopped and resumed, FSDP workers on two nodes, cluster mistakes refused,
and a node killed mid-trial. The commands are experiments/README.md's cluster recipe. First, the driver
of a search (with its local Ray) killed and the search resumed.

    pytest -m cluster -s       # these alone, with the recovery figures printed

Every test talks to the cluster from outside (subprocesses, HTTP): the suite's own local Ray
(``ray_local``) may be running in this process.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from mezo_ray.train.config import parse_trial_config
from mezo_ray.train.recipe import run_trial
from mezo_ray.train.session import RAY_TRAIN_STATE_FILE, LocalSession
from tests.test_tune import TRIAL, results

pytestmark = [pytest.mark.cluster, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


Ran = subprocess.CompletedProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``ray start`` nodes under one temp root; every process they start is found (and killed) by it."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="rc-", dir="/tmp")  # short: Ray's socket paths are limited
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "RAY_DEDUP_LOGS": "0"}
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.nodes: dict[str, str] = {}  # name -> node id

    def ray(self, *args: str, wrap: tuple[str, ...] = (), timeout: float = 600) -> Ran:
        return subprocess.run(
            [*wrap, RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def start(self, name: str, wrap: tuple[str, ...] = ()) -> str:
        """Start node ``name`` (the first one is the head); returns its node id once it has joined."""
        common = [
            "--num-cpus=2",
            f"--temp-dir={self.root}/{name}",
            f"--dashboard-agent-listen-port={free_port()}",  # one per raylet on a shared host
            "--disable-usage-stats",
        ]
        if self.nodes:
            args = ["start", f"--address={self.gcs}", *common]
        else:
            args = [
                "start",
                "--head",
                f"--port={self.gcs.rsplit(':', 1)[1]}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                f"--ray-client-server-port={free_port()}",
                *common,
            ]
        before = set(self.alive())
        started = self.ray(*args, wrap=wrap, timeout=120)
        assert started.returncode == 0, started.stdout + started.stderr
        deadline = time.time() + 60
        while time.time() < deadline:
            new = set(self.alive()) - before
            if new:
                (self.nodes[name],) = new
                return self.nodes[name]
            time.sleep(0.5)
        raise AssertionError(f"node {name} did not join")

    def alive(self) -> list[str]:
        from ray.util.state import list_nodes

        with contextlib.suppress(Exception):  # the dashboard answers a few seconds after the head starts
            return [n.node_id for n in list_nodes(address=self.dashboard) if n.state == "ALIVE"]
        return []

    def processes(self, name: str = "") -> list[psutil.Process]:
        """The processes of node ``name`` (all nodes: "") and everything they started."""
        mark = os.path.join(self.root, name)
        found = set()
        for p in psutil.process_iter(["cmdline"]):
            if any(mark in arg for arg in p.info["cmdline"] or ()):
                found.add(p)
                with contextlib.suppress(psutil.NoSuchProcess):
                    found.update(p.children(recursive=True))
        return list(found)

    def stop(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill node ``name`` (SIGKILL: the machine is gone; SIGTERM: it leaves); wait until Ray says so."""
        for p in self.processes(name):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        node = self.nodes.pop(name)
        deadline = time.time() + 120
        while node in self.alive() and time.time() < deadline:
            time.sleep(0.5)

    def shutdown(self) -> None:
        for _ in range(3):  # raylets restart nothing once killed, but a job driver may fork meanwhile
            for p in self.processes():
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
            time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)

    def submit(self, *args: str, working_dir: Path | str = REPO) -> Ran:
        """``ray job submit`` of a search; waits for the job and returns its logs."""
        return self.ray(
            "job",
            "submit",
            f"--address={self.dashboard}",
            f"--working-dir={working_dir}",
            "--",
            sys.executable,
            "-m",
            "mezo_ray.tune",
            *args,
        )

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard)


@pytest.fixture(scope="module")
def cluster(tiny_models):
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "disabled")  # the job client in this process: loopback only
        nodes = Cluster()
        try:
            nodes.start("head")
            nodes.start("node2")
            yield nodes
        finally:
            nodes.shutdown()


def write_space(path: Path, grids: list[dict], **defaults) -> str:
    path.write_text(json.dumps({"description": "cluster", "defaults": {**TRIAL, **defaults}, "grids": grids}))
    return str(path)


def wait_for_job(client, job: str, states: tuple[str, ...] = ("SUCCEEDED", "FAILED", "STOPPED")) -> str:
    deadline = time.time() + 600
    while (status := str(client.get_job_status(job).value)) not in states and time.time() < deadline:
        time.sleep(1)
    return status


def rows_of(experiment: Path) -> dict[str, list[dict]]:
    """trial folder -> its reports, in order (a file being written may end in half a line)."""
    with contextlib.suppress(ValueError):
        return results(str(experiment))
    return {}


def uninterrupted(config: dict, directory: Path, threads: int) -> LocalSession:
    """The trial run here straight through, with the threads its trial process had (the same bits)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        session = LocalSession(str(directory))
        run_trial(parse_trial_config(config), session)
    finally:
        torch.set_num_threads(before)
    return session


# --------------------------------------------------------------------------------------------------
# The driver killed: a local Ray that the CLI starts (before the cluster above starts: one Ray at a time)
def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "mezo_ray.tune", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _named_children(pid: int) -> dict[psutil.Process, str]:
    named = {}
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            named[child] = child.name()
    return named


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "train-workers"])
def test_resume_after_the_driver_is_killed(tiny_models, tmp_path, workers):
    space = tmp_path / "space.yaml"
    space.write_text(
        json.dumps(
            {
                "description": "resume",
                "grids": [
                    # the finished trial runs in-process either way (no worker start-up to pay)
                    {"name": "zs", "set": {"method": "zero_shot", "num_workers": 0}},
                    {"name": "mezo", "set": {"lr": 1e-3}},
                ],
                "defaults": {**TRIAL, "num_workers": workers, "max_steps": 400, "eval_steps": 50},
            }
        )
    )
    args = ["--space", str(space), "--storage-path", str(tmp_path), "--name", "exp", "--max-concurrent", "1"]
    driver = cli(*args)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once one trial has finished and another has checkpointed
        trials = results(str(tmp_path / "exp"))
        done = [t for t, r in trials.items() if r and r[-1].get("done")]
        started = [t for t, r in trials.items() if r and not r[-1].get("done")]
        assert len(started) <= 1, "--max-concurrent 1 ran trials side by side"
        if done and started:
            break
        time.sleep(0.5)
    else:
        driver.kill()
        pytest.fail("the experiment did not get going:\n" + driver.communicate()[0][-3000:])
    ray_processes = _named_children(driver.pid)  # the local cluster it started
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # the trial's workers die with it, not at once; Ray's dashboard and runtime-env agents linger on
    writers = [p for p, name in ray_processes.items() if "Agent" not in name]
    _, alive = psutil.wait_procs(writers, timeout=60)
    assert not alive, f"Ray processes outlived their driver: {alive}"
    for agent in set(ray_processes) - set(writers):
        with contextlib.suppress(psutil.NoSuchProcess):
            agent.kill()
    finished_before = {t: len(results(str(tmp_path / "exp"))[t]) for t in done}
    interrupted = started[0]
    steps_before = [r["step"] for r in results(str(tmp_path / "exp"))[interrupted]]
    if workers:  # the kill caught Ray Train rewriting its run state (seen in CI): it must not matter
        train_state = tmp_path / "exp" / f"train-{trials[interrupted][-1]['trial_id']}" / RAY_TRAIN_STATE_FILE
        assert train_state.exists()
        train_state.write_text("")

    resumed = cli(*args, "--resume")
    out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, out[-3000:]
    trials = results(str(tmp_path / "exp"))
    assert len(trials) == 2 and all(r[-1].get("done") for r in trials.values())
    assert {t: len(trials[t]) for t in finished_before} == finished_before  # not re-run
    steps_after = [r["step"] for r in trials[interrupted] if not r.get("done")]
    if workers and not steps_after:  # the Train workers outlived the driver long enough to checkpoint
        # the last step (seen under load): the resumed run had only the test metric left to compute; from
        # scratch it would have reported steps 50 .. 400 again
        assert trials[interrupted][-1]["step"] == 400 and trials[interrupted][-1]["test_acc"] is not None
        return
    # continued from a checkpoint to the end, never from scratch. In-process, Tune restores the trial
    # and appends to its results; with Train workers, Tune restarts the trial (its checkpoints are
    # Train's) and the Train run resumes from its own latest checkpoint, maybe written after the kill
    # was seen: the results then start there.
    resumed_steps = steps_after[len(steps_before) :] if workers == 0 else steps_after
    assert steps_after[-1] == 400 and resumed_steps == list(range(resumed_steps[0], 401, 50))
    assert resumed_steps[0] > 50
    if workers == 0:
        assert steps_after[: len(steps_before)] == steps_before
        assert resumed_steps[0] <= steps_before[-1] + 50


# --------------------------------------------------------------------------------------------------
def test_a_search_submitted_as_a_job_runs_on_both_nodes_and_reports(cluster, tmp_path):
    storage = tmp_path / "results"
    # 2 CPUs per trial: one trial fills a node, so the 3 trials must use both
    job = cluster.submit(
        "--space", "smoke", "--storage-path", str(storage), "--name", "submit", "--set", "cpus_per_worker=2"
    )
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "| MeZO |" in job.stdout and "Search cost: 3 trials (3 finished)" in job.stdout  # the final table
    trials = results(str(storage / "submit"))
    nodes = {row["node_id"] for reports in trials.values() for row in reports}
    assert len(trials) == 3 and nodes == set(cluster.nodes.values()), (nodes, cluster.nodes)
    report = subprocess.run(
        [sys.executable, "-m", "mezo_ray.report", str(storage / "submit")], capture_output=True, text=True
    )
    assert report.returncode == 0 and "| MeZO |" in report.stdout, report.stderr[-2000:]


def test_a_job_stopped_mid_search_is_finished_by_a_resume_job(cluster, tmp_path):
    storage = tmp_path / "results"
    grids = [{"name": "short", "set": {"max_steps": 40}}, {"name": "long", "set": {"max_steps": 600}}]
    space = write_space(tmp_path / "space.yaml", grids, num_workers=0, cpus_per_worker=2, eval_steps=20)
    client = cluster.client()
    entry = f"{sys.executable} -m mezo_ray.tune --space {space} --storage-path {storage} --name stopped"
    job = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(REPO)})
    assert wait_for_job(client, job, ("RUNNING", "FAILED", "SUCCEEDED")) == "RUNNING"
    deadline = time.time() + 300
    while time.time() < deadline:  # the short trial finished, the long one has checkpoints
        trials = rows_of(storage / "stopped")
        done = [t for t, rows in trials.items() if rows and rows[-1].get("done")]
        running = [t for t, rows in trials.items() if len(rows) >= 2 and not rows[-1].get("done")]
        if done and running:
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"no finished and running trial to stop: {client.get_job_logs(job)[-3000:]}")
    assert client.stop_job(job)
    assert wait_for_job(client, job) == "STOPPED"
    assert "Experiment " in client.get_job_logs(job)
    (finished,) = done
    finished_rows = (storage / "stopped" / finished / "result.json").read_text()
    (long_trial,) = running
    stopped_at = max(r["step"] for r in rows_of(storage / "stopped")[long_trial])

    resumed = cluster.submit(
        "--space", space, "--storage-path", str(storage), "--name", "stopped", "--resume"
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    trials = results(str(storage / "stopped"))
    assert (storage / "stopped" / finished / "result.json").read_text() == finished_rows  # not run again
    steps = [r["step"] for r in trials[long_trial]]
    assert trials[long_trial][-1]["done"] and stopped_at < 600
    assert steps == [*range(20, 601, 20), 600]  # on from its last checkpoint (then the final report)


def test_fsdp_workers_on_two_nodes_reproduce_the_one_worker_trajectory(cluster, tiny_models, tmp_path):
    from ray.util.state import list_actors

    from tests.train.test_recipe import PARITY

    storage = tmp_path / "results"
    config = {**PARITY, "fsdp": True, "num_workers": 2, "placement_strategy": "STRICT_SPREAD"}
    space = write_space(tmp_path / "space.yaml", [{"name": "fsdp"}], **config)
    client = cluster.client()
    entry = f"{sys.executable} -m mezo_ray.tune --space {space} --storage-path {storage} --name fsdp"
    job = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(REPO)})
    assert wait_for_job(client, job) == "SUCCEEDED", client.get_job_logs(job)[-3000:]
    job_id = client.get_job_info(job).job_id
    workers = [
        a
        for a in list_actors(address=cluster.dashboard, detail=True, limit=10_000)
        if a.class_name == "RayTrainWorker" and a.job_id == job_id
    ]
    assert {w.node_id for w in workers} == set(cluster.nodes.values())  # one worker on each node
    (state,) = glob.glob(str(storage / "fsdp" / "train-*" / "checkpoint_*" / "state.json"))
    checkpoint = os.path.dirname(state)
    shards = [load_file(os.path.join(checkpoint, f"snapshot-rank{r}.safetensors")) for r in range(2)]
    two = {k: torch.cat([s[k] for s in shards]) if shards[0][k].dim() else shards[0][k] for k in shards[0]}
    one_worker = uninterrupted({**config, "fsdp": False, "num_workers": 1}, tmp_path / "one", threads=1)
    one = load_file(os.path.join(one_worker.checkpoints[-1], "snapshot-rank0.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        if not name.endswith("key.bias"):  # softmax ignores it: rounding noise (see the single-node test)
            torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=name)
    start = load_file(os.path.join(tiny_models.mlm, "model.safetensors"))
    assert max(float((one[k] - start[k]).abs().max()) for k in one if k in start) > 1e-3  # the weights moved


def test_cluster_mistakes_are_refused_before_any_trial_starts(cluster, tmp_path):
    # a job whose working dir lacks the space file
    (tmp_path / "elsewhere").mkdir()
    missing = cluster.submit("--space", "space.yaml", working_dir=tmp_path / "elsewhere")
    assert missing.returncode != 0
    assert "this Ray job runs in" in missing.stdout, missing.stdout[-2000:]
    # a storage path one node does not see: a third node with a /tmp folder of its own (a mount namespace)
    private = Path(cluster.root) / "private"
    private.mkdir()
    namespaces = ("unshare", "--user", "--map-root-user", "--mount")
    blind = (*namespaces, "sh", "-c", f'mount -t tmpfs none {private} && "$0" "$@"')
    if subprocess.run([*namespaces, "true"], capture_output=True).returncode:
        pytest.skip("needs unshare (user and mount namespaces) to give one node storage the others lack")
    cluster.start("node3", wrap=blind)
    try:
        local = cluster.submit("--space", "smoke", "--storage-path", str(private / "results"))
    finally:
        cluster.stop("node3", signal.SIGTERM)
    assert local.returncode != 0
    assert "is not visible from 1 of the cluster's 3 nodes" in local.stdout, local.stdout[-2000:]
    assert not glob.glob(str(private / "results" / "*" / "*" / "result.json"))  # no trial ran


def test_a_killed_node_s_trial_is_retried_from_its_last_checkpoint_on_another(cluster, tmp_path):
    """The second node dies (every process of it, SIGKILL) while a trial trains there: Tune retries the
    trial on the head from its last checkpoint (the seed log since the last snapshot, replayed) and it ends
    as an uninterrupted run does, bit for bit; the other trial is not run again."""
    storage, node2 = tmp_path / "results", cluster.nodes["node2"]
    config = {"num_workers": 0, "cpus_per_worker": 2, "max_steps": 600, "eval_steps": 50, "snapshot_every": 2}
    grids = [{"name": "seeds", "grid": {"seed": [0, 1]}}]
    space = write_space(tmp_path / "space.yaml", grids, **config)
    client = cluster.client()
    entry = f"{sys.executable} -m mezo_ray.tune --space {space} --storage-path {storage} --name kill"
    job = client.submit_job(entrypoint=entry, runtime_env={"working_dir": str(REPO)})
    deadline = time.time() + 300
    victim = None
    while victim is None and time.time() < deadline:  # a trial on node2 past its first snapshot
        for trial, rows in rows_of(storage / "kill").items():
            if rows and rows[-1]["node_id"] == node2 and 100 <= rows[-1]["step"] < 450:
                victim, last = trial, rows[-1]
        time.sleep(0.2)
    assert victim, client.get_job_logs(job)[-3000:]
    killed_at = time.time()
    cluster.stop("node2")
    gone_at = time.time()
    assert wait_for_job(client, job) == "SUCCEEDED", client.get_job_logs(job)[-3000:]

    trials = results(str(storage / "kill"))
    rows = trials[victim]
    steps = [r["step"] for r in rows if not r.get("done")]
    assert steps == list(range(50, 601, 50))  # on from the last checkpoint: nothing repeated or skipped
    after = [r for r in rows if r["node_id"] != node2]
    assert after[0]["step"] > last["step"] and {r["node_id"] for r in after} == {cluster.nodes["head"]}
    (other,) = set(trials) - {victim}
    assert [r["step"] for r in trials[other] if not r.get("done")] == list(range(50, 601, 50))  # once
    seed = json.loads((storage / "kill" / victim / "params.json").read_text())["seed"]
    straight = uninterrupted({**TRIAL, **config, "seed": seed}, tmp_path / "straight", threads=2)
    final, expected = rows[-1], straight.reports[-1]
    for key in ("test_acc", "best_dev_acc", "dev_loss", "selected_step", "forward_passes", "step"):
        assert final[key] == expected[key], key
    snapshots = [
        c
        for c in glob.glob(str(storage / "kill" / victim / "checkpoint_*"))
        if os.path.exists(os.path.join(c, "snapshot-rank0.safetensors"))
    ]
    latest = max(snapshots, key=lambda c: json.loads(Path(c, "state.json").read_text())["progress"]["step"])
    a = load_file(os.path.join(latest, "snapshot-rank0.safetensors"))
    b = load_file(os.path.join(straight.checkpoints[-1], "snapshot-rank0.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the final weights, bit for bit
    # the figures: seconds from the kill to the retried trial's first report, and steps trained twice
    lost = (killed_at - last["timestamp"]) * last["steps_per_s"]
    recovery = after[0]["timestamp"] - killed_at - 50 / after[0]["steps_per_s"]
    head_free = trials[other][-1]["timestamp"] - killed_at  # the retry waits for the head's 2 CPUs
    print(
        f"\nnode lost at step ~{last['step'] + lost:.0f} (last checkpoint {last['step']}): {lost:.0f} steps "
        f"redone; Ray marked the node dead {gone_at - killed_at:.1f} s after the kill; the head was free "
        f"after {head_free:.0f} s; the trial trained again after {recovery:.0f} s (timestamps: whole seconds)"
    )
