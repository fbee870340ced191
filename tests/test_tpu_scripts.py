"""tpu/create.sh, setup.sh and launch.sh: the gcloud commands they print with --dry-run, and the worker
scripts they send, executed here with bash against a local stand-in for the GCE metadata server."""

import http.server
import json
import os
import pathlib
import shlex
import subprocess
import sys
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = {name: REPO / "tpu" / f"{name}.sh" for name in ("create", "setup", "launch")}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(SCRIPTS[script]), *args], capture_output=True, text=True, timeout=60,
                        cwd=REPO)


def _gcloud_commands(stdout: str) -> list[list[str]]:
  return [shlex.split(line) for line in stdout.splitlines() if line.startswith("gcloud ")]


def _flag(argv: list[str], name: str) -> str:
  values = [arg.split("=", 1)[1] for arg in argv if arg.startswith(f"--{name}=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def _worker_script(ssh_argv: list[str]) -> str:
  """The bash script inside `--command='bash -c SCRIPT'`."""
  bash, dash_c, script = shlex.split(_flag(ssh_argv, "command"))
  assert (bash, dash_c) == ("bash", "-c")
  return script


def test_scripts_parse_and_explain_their_usage():
  for name, path in SCRIPTS.items():
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0, name
    help_run = _run(name, "-h")
    assert help_run.returncode == 0 and help_run.stdout.startswith(f"Usage: tpu/{name}.sh"), name
    bare = _run(name)
    assert bare.returncode == 2 and "Usage:" in bare.stderr and "required" in bare.stderr, name


@pytest.mark.parametrize("accelerator, runtime", [("v4-32", "tpu-ubuntu2204-base"),
                                                  ("v5litepod-16", "v2-alpha-tpuv5-lite"),
                                                  ("v5p-8", "v2-alpha-tpuv5")])
def test_create_picks_the_runtime_version_of_the_tpu_generation(accelerator, runtime):
  result = _run("create", "--name", "my-tpu", "--zone", "us-central2-b", "--type", accelerator, "--spot",
                "--dry-run")
  assert result.returncode == 0, result.stderr
  assert _gcloud_commands(result.stdout) == [[
      "gcloud", "compute", "tpus", "tpu-vm", "create", "my-tpu", "--zone=us-central2-b",
      f"--accelerator-type={accelerator}", f"--version={runtime}", "--spot"]]


def test_create_queued_resource_names_its_node_and_passes_extra_flags():
  result = _run("create", "--name=big", "--zone", "us-east5-a", "--type", "v5p-32", "--project", "proj",
                "--queued", "--dry-run", "--", "--network=my net", "--reserved")
  assert result.returncode == 0, result.stderr
  assert _gcloud_commands(result.stdout) == [[
      "gcloud", "compute", "tpus", "queued-resources", "create", "big", "--zone=us-east5-a", "--project=proj",
      "--node-id=big", "--accelerator-type=v5p-32", "--runtime-version=v2-alpha-tpuv5", "--network=my net",
      "--reserved"]]
  assert "queued-resources describe big --zone=us-east5-a --project=proj" in result.stderr


def test_setup_copies_installs_and_checks_on_all_workers():
  result = _run("setup", "--name", "pod", "--zone", "z", "--bucket", "my-bucket", "--dry-run")
  assert result.returncode == 0, result.stderr
  scp, unpack, install, mount, check = _gcloud_commands(result.stdout)
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and scp[6] == "pod:mmrag_jax_code.tar.gz"
  for ssh in (unpack, install, mount, check):
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
  for command in (scp, unpack, install, mount, check):
    assert _flag(command, "worker") == "all" and _flag(command, "zone") == "z"
  for ssh in (unpack, install, mount, check):  # every worker script is valid bash
    assert subprocess.run(["bash", "-n", "-c", _worker_script(ssh)]).returncode == 0
  assert "tar -xzf mmrag_jax_code.tar.gz -C mmrag_jax" in _worker_script(unpack)
  assert 'pip install -e . "jax[tpu]==$jax_version"' in _worker_script(install)
  assert "gcsfuse --implicit-dirs my-bucket /mnt/gcs" in _worker_script(mount)


def test_setup_from_git_checks_out_the_ref_on_all_workers():
  result = _run("setup", "--name", "pod", "--zone", "z", "--repo", "https://example.com/m.git", "--ref", "v1",
                "--no-check", "--dry-run")
  assert result.returncode == 0, result.stderr
  clone, install = _gcloud_commands(result.stdout)
  script = _worker_script(clone)
  assert "git clone https://example.com/m.git mmrag_jax" in script
  assert "git -C mmrag_jax fetch origin v1; git -C mmrag_jax checkout --detach FETCH_HEAD" in script
  assert _flag(clone, "worker") == "all" and "pip install -e ." in _worker_script(install)


USER_ARGV = ["python", "-m", "mmrag_jax.main", "--config=configs/stage2.py:7b", "--workdir=/mnt/gcs/runs/a b",
             "--config.mesh.shape=(1, -1, 1)", "--config.note=it's $HOME"]


def test_launch_sends_the_command_verbatim_to_all_workers():
  result = _run("launch", "--name", "pod", "--zone", "z", "--env", "A=x y", "--log-dir", "-", "--dry-run", "--",
                *USER_ARGV)
  assert result.returncode == 0, result.stderr
  (ssh,) = _gcloud_commands(result.stdout)
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"] and _flag(ssh, "worker") == "all"
  script = _worker_script(ssh)
  assert shlex.split(script)[-len(USER_ARGV):] == USER_ARGV
  assert "export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false 'A=x y'" in script


def test_launch_writes_one_log_per_worker_into_a_local_directory():
  result = _run("launch", "--name", "pod", "--zone", "z", "--log-dir", "logs/run1", "--dry-run", "--command",
                "echo hi | tee out")
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines()[0] == "mkdir -p logs/run1"
  (ssh,) = _gcloud_commands(result.stdout)
  assert _flag(ssh, "output-directory") == "logs/run1"
  assert _worker_script(ssh).endswith("; echo hi | tee out")


class _Metadata(http.server.BaseHTTPRequestHandler):
  """GCE metadata attributes of one worker of a pod slice; like GCE, it answers only with the header."""

  attributes: dict[str, str] = {}

  def do_GET(self):  # noqa: N802 (http.server's name)
    key = self.path.rsplit("/", 1)[-1]
    ok = self.headers.get("Metadata-Flavor") == "Google" and key in self.attributes
    body = self.attributes.get(key, "").encode() if ok else b""
    self.send_response(200 if ok else 403 if key in self.attributes else 404)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.fixture
def metadata_server():
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
  thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()


@pytest.fixture
def worker_home(tmp_path):
  """A worker's home directory after tpu/setup.sh: the code directory with a venv whose python is ours."""
  bin_dir = tmp_path / "mmrag_jax" / ".venv" / "bin"
  bin_dir.mkdir(parents=True)
  (bin_dir / "python").symlink_to(sys.executable)
  return tmp_path


_REPORT = ("import json, os, sys; print(json.dumps({'argv': sys.argv[1:], 'python': sys.executable, "
           "**{k: os.environ.get(k) for k in ('HF_HUB_OFFLINE', 'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', "
           "'JAX_PROCESS_ID')}}))")


def _run_on_worker(script: str, home: pathlib.Path, metadata_port: int) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(HOME=str(home), GCE_METADATA_IP=f"127.0.0.1:{metadata_port}")
  return subprocess.run(["bash", "-c", script], cwd=home, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("endpoints, expected", [
    ("t1v-n-0-w-0:0:10.130.0.5,t1v-n-0-w-1:1:10.130.0.6,t1v-n-0-w-2:2:10.130.0.7", ("10.130.0.5:8482", "3")),
    ("worker-0,worker-1", ("worker-0:8482", "2")),
    ("t1v-n-0-w-0:0:10.130.0.5", (None, None)),  # single host: no process group
])
def test_launch_worker_script_runs_the_command_in_the_venv_with_the_slice_process_group(
    metadata_server, worker_home, endpoints, expected):
  _Metadata.attributes = {"worker-network-endpoints": endpoints, "agent-worker-number": "1"}
  argv = ["python", "-c", _REPORT, "a b", "it's", "$HOME"]
  result = _run("launch", "--name", "pod", "--zone", "z", "--log-dir", "-", "--dry-run", "--", *argv)
  (ssh,) = _gcloud_commands(result.stdout)
  worker = _run_on_worker(_worker_script(ssh), worker_home, metadata_server.server_address[1])
  assert worker.returncode == 0, worker.stderr
  report = json.loads(worker.stdout)
  assert report["argv"] == ["a b", "it's", "$HOME"]
  assert report["python"] == str(worker_home / "mmrag_jax" / ".venv" / "bin" / "python")
  assert report["HF_HUB_OFFLINE"] == "1"
  coordinator, num_processes = expected
  assert report["JAX_COORDINATOR_ADDRESS"] == coordinator and report["JAX_NUM_PROCESSES"] == num_processes
  assert report["JAX_PROCESS_ID"] == ("1" if coordinator else None)


def test_launch_detached_command_keeps_running_and_logs_on_the_worker(metadata_server, worker_home):
  _Metadata.attributes = {}
  result = _run("launch", "--name", "pod", "--zone", "z", "--log-dir", "-", "--detach", "--no-distributed-env",
                "--dry-run", "--command", "sleep 0.2; echo done on $(hostname)")
  (ssh,) = _gcloud_commands(result.stdout)
  worker = _run_on_worker(_worker_script(ssh), worker_home, metadata_server.server_address[1])
  assert worker.returncode == 0, worker.stderr
  (log,) = (worker_home / "mmrag_jax" / "tpu_logs").glob("*.log")
  assert f"logs to mmrag_jax/tpu_logs/{log.name}" in worker.stdout
  for _ in range(100):  # the command finishes after the ssh session would have returned
    if log.read_text():
      break
    time.sleep(0.05)
  assert log.read_text().startswith("done on ")
