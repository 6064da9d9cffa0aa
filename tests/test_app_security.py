"""Serving the dashboard beyond localhost (app/auth.py, app/guard.py, app/uploads.py,
app/serve.py): the start refusal, the password gate, the data root, the limits, uploads and
error details."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import auth, browser_harness, guard, services, state, uploads
from rcvcore.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
MAIN = str(ROOT / "app" / "main.py")
PASSWORD = "correct horse battery staple"
from _app_env import ENV_KEYS, clean_app_env  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_env(tmp_path, monkeypatch):
    clean_app_env(tmp_path, monkeypatch)


@pytest.fixture
def served(monkeypatch, tmp_path):
    """Served mode with a data root holding one folder."""
    root = tmp_path / "data"
    (root / "set1").mkdir(parents=True)
    monkeypatch.setenv("RCV_DASHBOARD_PASSWORD", PASSWORD)
    monkeypatch.setenv("RCV_DATA_ROOT", str(root))
    return root


# ------------------------------------------------------------------------------ the mode


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False), (None, False),
    ("192.168.1.20", False), ("example.org", False)])
def test_is_loopback(address, loopback):
    assert auth.is_loopback(address) is loopback


def test_mode_follows_address_and_credentials(monkeypatch):
    assert not auth.served("127.0.0.1")
    assert auth.served("0.0.0.0") and auth.served(None)
    monkeypatch.setenv("RCV_DASHBOARD_PASSWORD", PASSWORD)  # a password means others come
    assert auth.served("127.0.0.1") and auth.auth_configured()
    monkeypatch.setenv("RCV_DASHBOARD_PASSWORD", "short")
    assert "too short" in auth.auth_problem()


def _serve(args, env_extra=None, timeout=300):  # seconds on an idle machine; minutes under load
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update({"PYTHONPATH": str(ROOT), **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "app.serve", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("address_args", [["--server.address", "0.0.0.0"],
                                          ["--server.address=::"]])
def test_server_refuses_to_start_beyond_loopback_without_credentials(address_args):
    port = browser_harness.free_port()
    proc = _serve([*address_args, "--server.port", str(port)])
    assert proc.returncode == 2, proc.stderr[-2000:]
    msg = proc.stderr.strip()
    assert "refusing to serve" in msg and "RCV_DASHBOARD_PASSWORD" in msg
    assert len(msg.splitlines()) == 1 and "Traceback" not in msg
    assert "You can now view" not in proc.stdout  # it never listened


def test_server_refuses_an_unset_address_and_a_short_password():
    # STREAMLIT_SERVER_ADDRESS="" overrides config.toml: Streamlit would listen everywhere
    proc = _serve(["--server.port", str(browser_harness.free_port())],
                  {"STREAMLIT_SERVER_ADDRESS": "", "RCV_DASHBOARD_PASSWORD": "tooshort"})
    assert proc.returncode == 2 and "too short" in proc.stderr, proc.stderr[-2000:]


# ------------------------------------------------------------------------------ the gate


def _titles(at) -> list[str]:
    return [t.value for t in at.title]


def test_served_without_credentials_draws_no_page(monkeypatch):
    monkeypatch.setenv("RCV_DASHBOARD_SERVED", "1")
    at = AppTest.from_file(MAIN, default_timeout=30).run()
    assert not at.exception
    assert any("draws no page" in e.value for e in at.error)
    assert "Scale-covariance scan" not in _titles(at)


def test_password_gate(served):
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not at.exception
    assert "Scale-covariance scan" not in _titles(at) and not at.sidebar.selectbox
    at.text_input(key="rcv_password").input("wrong password, long enough")
    at.button[0].click().run()
    assert any(e.value == "Wrong password." for e in at.error)
    assert "Scale-covariance scan" not in _titles(at)
    at.text_input(key="rcv_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert "Scale-covariance scan" in _titles(at)
    assert "rcv_password" not in at.session_state  # not kept in the session


def test_local_mode_has_no_gate():
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert "Scale-covariance scan" in _titles(at)


def test_the_app_turns_off_streamlits_post_run_gc():
    """Issue 15: however the server was started (a config.toml not found, say), the first page
    run turns off the gc.collect(2) that starved scans."""
    from streamlit import config

    config.set_option("runner.postScriptGC", True)
    try:
        AppTest.from_file(MAIN, default_timeout=60).run()
        assert config.get_option("runner.postScriptGC") is False
    finally:
        config.set_option("runner.postScriptGC", False)


# -------------------------------------------------------------------------- the data root


def test_paths_stay_under_the_data_root(served, tmp_path):
    inside = served / "set1"
    assert guard.vet_path("set1", "Path") == str(inside)
    assert guard.vet_path(str(inside), "Path") == str(inside)
    for outside in ("/etc", "../", "set1/../../", str(tmp_path)):
        with pytest.raises(guard.Refused, match="outside this server's data folder"):
            guard.vet_path(outside, "Path")
    (served / "link").symlink_to(tmp_path)  # a link inside pointing out
    with pytest.raises(guard.Refused, match="outside"):
        guard.vet_path("link/runs", "Path")
    with pytest.raises(guard.Refused) as e:
        guard.vet_path("/etc/shadow", "Path")
    assert str(served) not in str(e.value)  # the refusal does not reveal the root


def test_without_a_data_root_paths_are_off(served, monkeypatch):
    monkeypatch.delenv("RCV_DATA_ROOT")
    with pytest.raises(guard.Refused, match="paths are turned off"):
        guard.vet_path(str(served / "set1"), "Path")


def test_local_mode_leaves_paths_alone():
    assert guard.vet_path("/etc", "Path") == "/etc"
    assert guard.vet_dataset("folder:/x", {"allow_outside": True})[1] == {"allow_outside": True}


def test_dataset_spec_options_and_checkpoints(served, tmp_path):
    spec, _ = guard.vet_dataset("folder:set1", {})
    assert spec == f"folder:{served / 'set1'}"
    with pytest.raises(guard.Refused, match="allow_outside"):
        guard.vet_dataset("folder:set1", {"allow_outside": True})
    with pytest.raises(guard.Refused, match="outside"):
        guard.vet_dataset("imagenet:set1", {"annotations": "/etc"})
    with pytest.raises(guard.Refused, match="Checkpoint"):
        guard.vet_config_kwargs({"dataset": "demo-scale", "weights": "/etc/passwd"})
    upload = state.store_upload(b"checkpoint bytes", ".pt")
    out = guard.vet_config_kwargs({"dataset": "demo-scale", "weights": str(upload)})
    assert Path(out["weights"]) == upload.resolve()
    assert guard.vet_config_kwargs({"weights": "imagenet"})["weights"] == "imagenet"


def test_scan_page_refuses_a_path_outside_the_data_root(served):
    at = AppTest.from_file(MAIN, default_timeout=90).run()
    at.text_input(key="rcv_password").input(PASSWORD)
    at.button[0].click().run()
    at.sidebar.selectbox(key="scan_dataset").select("folder").run()
    at.sidebar.text_input(key="scan_ds_path_folder").input("/etc").run()
    assert not at.exception, at.exception
    assert any("outside this server's data folder" in e.value for e in at.sidebar.error)
    assert at.sidebar.button(key="scan_run").disabled
    at.sidebar.text_input(key="scan_ds_path_folder").input("set1").run()
    assert not any("outside" in e.value for e in at.sidebar.error)
    assert not at.sidebar.button(key="scan_run").disabled


# ------------------------------------------------------------------------------ limits


def test_training_limits(served, monkeypatch):
    monkeypatch.setenv("RCV_MAX_EPOCHS", "5")
    services.check_training(2, 5, 1, 4)
    guard.check_training(2, 5, 1, 2, busy=2)
    with pytest.raises(guard.Refused, match="2 run.s. are running or waiting"):
        guard.check_training(2, 5, 1, 3, busy=2)
    with pytest.raises(guard.Refused, match="at most 5"):
        services.check_training(1, 6, 1, 1)
    with pytest.raises(guard.Refused, match="seeds"):
        services.check_training(11, 1, 1, 11)
    with pytest.raises(guard.Refused, match="at a time"):
        services.check_training(1, 1, 3, 1)
    with pytest.raises(guard.Refused, match="running or waiting"):
        services.check_training(5, 1, 1, 5)   # 5 runs > 4 active at most


def test_no_limits_locally():
    assert guard.limits() is None
    services.check_training(100, 500, 16, 200)


# ------------------------------------------------------------------------------ uploads


def test_old_uploads_are_swept_unless_in_use(monkeypatch):
    old = state.store_upload(b"old", ".pt")
    new = state.store_upload(b"new", ".pt")
    used = state.store_upload(b"used", ".pt")
    part = state.uploads_dir() / "x.pt.part"
    part.write_bytes(b"half")
    day_ago = time.time() - 2 * 24 * 3600
    for p in (old, used, part):
        os.utime(p, (day_ago, day_ago))
    monkeypatch.setattr(services, "uploads_in_use", lambda: {used.resolve()})
    gone = services.sweep_uploads()
    assert sorted(gone) == sorted([old, part])
    assert new.exists() and used.exists() and not old.exists()


def test_a_rejected_checkpoint_is_deleted():
    up = state.store_upload(b"not a checkpoint", ".pt")
    assert not uploads.discard(str(up), users=2) and up.exists()  # another scan reads it
    assert uploads.discard(str(up), users=1) and not up.exists()
    assert not uploads.discard("imagenet", users=1)
    assert not uploads.discard("/etc/passwd", users=1)  # never outside the upload folder


def test_scan_job_error_has_no_traceback_when_served(served):
    fut: Future = Future()
    try:
        raise RuntimeError(f"boom in {served}/secret")
    except RuntimeError as e:
        fut.set_exception(e)
    job = services.ScanJob(job_id="x", config={}, future=fut)
    msg = services.job_error(job)
    assert "RuntimeError" in msg and "Traceback" not in msg and str(served) not in msg


# ------------------------------------------------------------------------------ sessions own work


def _parked_job(owner: str, dataset: str = "demo-scale") -> services.ScanJob:
    """A scan job of ``owner`` that stays running until the test ends (registered as the
    worker registers it; nothing runs)."""
    job = services.ScanJob(job_id=f"job-{owner}", config={"arch": "resnet18", "dataset": dataset},
                           future=Future(), owner=owner, message="extracting")
    services._scan_worker()[1][job.job_id] = job
    return job


@pytest.fixture
def parked():
    jobs = services._scan_worker()[1]
    made = []

    def park(owner, dataset="demo-scale"):
        made.append(_parked_job(owner, dataset))
        return made[-1]

    yield park
    for job in made:
        job.future.set_result(None)
        jobs.pop(job.job_id, None)


def test_a_job_is_seen_and_cancelled_only_by_its_owner(served, parked):
    job = parked("pw:alice")
    assert services.get_job(job.job_id, "pw:bob") is None
    assert services.running_jobs("pw:bob") == [] and services.running_jobs() == [job]
    assert not services.cancel_job(job.job_id, "pw:bob") and not job.cancel_requested
    assert services.cancel_job(job.job_id, "pw:alice") and job.cancel_requested


def test_another_users_scan_draws_no_progress_and_no_cancel(served, parked):
    """Issue 25: a session that never pressed Run saw another session's progress bar and a
    Cancel button that stopped the other's scan."""
    job = parked("pw:alice", f"folder:{served / 'set1'}")
    at = AppTest.from_file(MAIN, default_timeout=90).run()
    at.text_input(key="rcv_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert "Scale-covariance scan" in _titles(at)
    assert not [b for b in at.button if b.key == "scan_cancel"]
    assert "scan_job" not in at.session_state and not job.cancel_requested


def test_quota_counts_the_users_own_scans(served, parked):
    parked("pw:alice")
    guard.check_scan_queue(len(services.running_jobs()), len(services.running_jobs("pw:bob")))
    with pytest.raises(guard.Refused, match="per user"):
        guard.check_scan_queue(1, len(services.running_jobs("pw:alice")))


def test_progress_text_shows_no_server_folder(served, parked):
    job = parked("pw:alice", f"folder:{served / 'set1'}")
    job.message = f"reading {served}/set1/labels.csv"
    text = services.job_progress(job)
    assert str(served) not in text and "<data>/set1" in text


def test_a_clear_cache_keeps_jobs_and_the_throttle(served, parked):
    """What a client's ``clear_cache`` message runs on the server (Streamlit's AppSession:
    both caches cleared) leaves the scan registry, the scheduler and the throttle alone."""
    import streamlit as st

    job = parked("pw:alice")
    worker = services._scan_worker()
    auth.THROTTLE.fail()
    before = len(auth.THROTTLE.times)
    st.cache_data.clear()
    st.cache_resource.clear()
    assert services._scan_worker() is worker and services.running_jobs() == [job]
    assert len(auth.THROTTLE.times) == before


def test_datasets_declare_their_path_options(served, monkeypatch):
    """The app keeps no list: a new kind's path option is vetted because the kind says so."""
    from rcvcore.data.registry import KINDS, DatasetKind

    kind = DatasetKind("newkind", "test", "rcvcore.data.folder:load", True, "scale",
                       path_options=("masks",), widening_options=("follow_links",))
    monkeypatch.setitem(KINDS, "newkind", kind)
    with pytest.raises(guard.Refused, match="outside"):
        guard.vet_dataset("newkind:set1", {"masks": "/etc"})
    with pytest.raises(guard.Refused, match="follow_links"):
        guard.vet_dataset("newkind:set1", {"follow_links": True})
    vetted = guard.vet_dataset("newkind:set1", {"masks": "set1"})[1]
    assert vetted == {"masks": str(served / "set1")}
    assert KINDS["imagenet"].path_options == ("annotations",)
    assert KINDS["folder"].widening_options == ("allow_outside",)


def test_a_scan_that_cannot_be_saved_says_where_to_free_space(served):
    import errno

    fut: Future = Future()
    fut.set_exception(OSError(errno.ENOSPC, "No space left on device",
                              str(state.scans_dir() / "x.json")))
    msg = services.job_error(services.ScanJob(job_id="x", config={}, future=fut))
    assert msg.startswith("cannot write in <runs>/_scans: no space left") and "\n" not in msg


def test_training_runs_are_cancelled_and_resumed_only_by_who_launched_them(
        served, tmp_path, monkeypatch):
    """Issue 25.2 for fine-tuning runs: every signed-in user sees the runs folder (the shared
    view), but only the user who launched a group may cancel or resume its runs."""
    group = tmp_path / "runs" / "g1"
    (group / "none_seed1").mkdir(parents=True)
    services._set_owner(group, "pw:alice")
    assert "pw:alice" not in (group / services.OWNER_FILE).read_text()  # no user id on disk
    user = {"who": "pw:bob"}
    monkeypatch.setattr(auth, "session_user", lambda: user["who"])
    assert not services.can_control(group)
    calls = []
    monkeypatch.setattr(services, "_scheduler", lambda: calls.append("scheduler"))
    monkeypatch.setattr(services.runs, "cancel", lambda *a, **k: calls.append("cancel"))
    for act in (lambda: services.cancel_group(group),
                lambda: services.cancel_run(group / "none_seed1"),
                lambda: services.resume_run(group, group / "none_seed1")):
        with pytest.raises(UserError, match="another user"):
            act()
    assert calls == []                          # refused before anything was asked to stop
    assert not services.can_control(tmp_path / "runs" / "from-the-cli")  # no owner file
    user["who"] = "pw:alice"
    assert services.can_control(group)
    services.cancel_run(group / "none_seed1")
    assert calls == ["cancel"]
    monkeypatch.delenv("RCV_DASHBOARD_PASSWORD")   # local mode: one user, every group is theirs
    monkeypatch.setattr(auth, "served", lambda *a, **k: False)
    user["who"] = "pw:bob"
    assert services.can_control(group)


def test_the_offline_weights_notice_names_no_server_folder(served, monkeypatch, tmp_path):
    """Where a missing ImageNet file goes (torch's hub cache under the server's home) is said
    locally, and as ``<home>`` to a served client."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / ".cache" / "torch"))
    ok, how = services.imagenet_status("resnet18")
    assert not ok and "<home>" in how and str(home) not in how
    monkeypatch.delenv("RCV_DASHBOARD_PASSWORD")
    monkeypatch.setattr(auth, "served", lambda *a, **k: False)
    monkeypatch.setattr(guard, "served", lambda *a, **k: False)
    assert str(home) in services.imagenet_status("resnet18")[1]   # local: the real folder
