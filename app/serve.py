"""Start the dashboard: ``python -m app.serve [streamlit options]`` (what ``make app``, the Docker
image and the browser harness run).

It is ``streamlit run app/gateway.py [options]`` (app/main.py behind Streamlit's ``st.App`` with
the HTTP gate of app/auth.py in front) plus three things:

1. It checks the address before listening: on anything but a loopback address (or with
   ``server.address`` unset, which listens on every interface) it refuses to start, exit status 2
   and one line saying what to configure, unless authentication is configured (app/auth.py,
   README "Serving the dashboard").
2. It passes the settings that must hold however the config files were found
   (``--runner.postScriptGC false``, issue 15; in served mode ``--client.showErrorDetails none``).
3. With ``RCV_PREWARM=1``, a background thread imports torch and the architecture registry once
   the server listens, so a page opened a little later does not wait for them. Off by default:
   in one process it competes for the GIL with the server and the first page run, and measured
   on 2 loaded cores it delayed the first page drawn (BENCHMARKS.md "Dashboard").

    python -m app.serve                                   # http://127.0.0.1:8501
    RCV_DASHBOARD_PASSWORD=... RCV_DATA_ROOT=/srv/data \\
        python -m app.serve --server.address 0.0.0.0      # served to other machines
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAIN = ROOT / "app" / "gateway.py"   # st.App(app/main.py) behind the HTTP gate
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _prewarm() -> None:
    """Import what the Scan page needs (pandas, plotly, torch, the registry) once the server
    listens: started earlier, it would hold the GIL while the server itself starts."""
    import time

    from streamlit import runtime

    while not runtime.exists() or runtime.get_instance().state.name == "INITIAL":
        time.sleep(0.05)
    try:
        import app.charts  # noqa: F401
        import rcvcore.models
        import rcvcore.scan  # noqa: F401

        rcvcore.models.ARCHS  # noqa: B018  (the registry, as the Scan page reads it)
    except Exception:  # noqa: BLE001, S110  the page imports them again and shows any error itself
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from streamlit import config
    from streamlit.web import bootstrap, cli

    from app import auth

    # Streamlit's own parsing: config.toml files, STREAMLIT_* variables, then the flags
    enforced = ["--runner.postScriptGC", "false"]
    ctx = cli.main_run.make_context("run", [str(MAIN), *argv, *enforced])
    flags = {k: v for k, v in ctx.params.items() if k not in ("target", "args")}
    bootstrap.load_config_options(flag_options=flags)
    address = config.get_option("server.address")
    problem = auth.startup_problem(address)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if auth.served(address):
        enforced += ["--client.showErrorDetails", "none"]
        if not os.environ.get(auth.DATA_ROOT_ENV):
            print(f"rcvcore dashboard: served mode without {auth.DATA_ROOT_ENV}: path fields "
                  "are turned off (embedded demos and uploads only).", file=sys.stderr)
    if os.environ.get("RCV_PREWARM", "0") == "1":
        threading.Thread(target=_prewarm, name="rcv-prewarm", daemon=True).start()
    return cli.main_run.main([str(MAIN), *argv, *enforced], prog_name="streamlit run",
                             standalone_mode=False) or 0


if __name__ == "__main__":
    raise SystemExit(main())
