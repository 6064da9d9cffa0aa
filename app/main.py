"""Entry script of the dashboard: page setup, the served-mode gate, routing.

    python -m app.serve                                    # http://127.0.0.1:8501 (local only)
    streamlit run app/main.py                              # the same, without the start checks

Serving beyond this machine needs authentication (README "Serving the dashboard"; app/auth.py:
`python -m app.serve` puts an HTTP gate in front of Streamlit, the page gate below is the second
line, and the only one for a bare `streamlit run`).
Server settings (bind address, upload limit, no telemetry) are in .streamlit/config.toml.

The shell (title, navigation, a "Loading" note) draws before anything imports torch or rcvcore;
the first run of a session then imports the pages' services and clears the note.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from app import auth  # noqa: E402

st.set_page_config(page_title="rcvcore: scale-covariant pruning", page_icon="🔬", layout="wide")
auth.enforce_server_settings()
# Streamlit animates every change of a progress bar with a CSS transition: in a software-
# rendered page that is ~30 ms of the browser's CPU per update, taken from the job the bar
# reports on when the browser shares the machine (issue 15). The bars jump instead.
st.html("<style>[data-testid='stProgress'] * {transition: none !important;}</style>")
if not auth.gate():
    st.stop()

PAGES = Path(__file__).resolve().parent / "pages"
navigation = st.navigation([
    st.Page(PAGES / "scan.py", title="Scan", icon=":material/show_chart:", default=True),
    st.Page(PAGES / "train.py", title="Train", icon=":material/model_training:"),
    st.Page(PAGES / "predict.py", title="Predict", icon=":material/biotech:"),
    st.Page(PAGES / "slides.py", title="Slides", icon=":material/gradient:"),
])
# the first run of a session says what it waits for (the pages import torch, plotly, pandas),
# imports it here, after the shell is drawn, and clears the note before the page runs: a page
# that ends with st.stop() would leave a note cleared after it (issue 23)
if not st.session_state.get("rcv_shell_drawn"):
    st.session_state["rcv_shell_drawn"] = True
    loading = st.empty()
    loading.caption("Loading: the first page of a fresh server imports torch and the "
                    "architecture registry...")
    import app.services  # noqa: E402, F401  (what every page imports first)

    loading.empty()
navigation.run()
if "app.services" in sys.modules:  # loaded by the page: the shell itself never imports torch
    sys.modules["app.services"].maybe_sweep_uploads()  # uploads unused for their TTL go
