"""A clean dashboard environment for the security and served-mode tests."""
from __future__ import annotations

#: every variable that switches the dashboard's served mode or its limits
ENV_KEYS = ("RCV_DASHBOARD_PASSWORD", "RCV_DASHBOARD_SERVED", "RCV_DATA_ROOT",
            "RCV_MAX_EPOCHS", "RCV_MAX_SEEDS", "RCV_MAX_PARALLEL", "RCV_MAX_ACTIVE_RUNS",
            "RCV_UPLOADS_MB", "RCV_UPLOAD_TTL_HOURS", "STREAMLIT_SERVER_ADDRESS")


def clean_app_env(tmp_path, monkeypatch) -> None:
    """None of :data:`ENV_KEYS`; private runs, cache and torch folders; no downloads."""
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RCV_NO_DOWNLOAD", "1")
    monkeypatch.setenv("RCV_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("RCV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # the repository's .streamlit/config.toml binds 127.0.0.1; Streamlit reads that file from
    # the working directory, so a pytest started elsewhere would see no address (served mode)
    from streamlit import config

    config.set_option("server.address", "127.0.0.1")
