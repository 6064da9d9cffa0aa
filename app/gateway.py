"""The ASGI app ``python -m app.serve`` runs: Streamlit's own ``st.App`` around app/main.py,
with the HTTP gate (app/auth.py) and the upload budget (app/uploads.py) in front of every
Streamlit endpoint.

Why ``st.App`` and not a reverse proxy: it is Streamlit's documented way to add middleware to
its (Starlette/uvicorn) server, maintained with the server it wraps, so the gate sees every
route Streamlit adds (websocket, uploads, media, components, static files, login) with no second
process, port or proxy configuration to get wrong. Outside served mode both middlewares pass
everything through.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run app/gateway.py` puts only app/ on the path
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402

from app.auth import HttpGate  # noqa: E402
from app.uploads import UploadBudget  # noqa: E402

dashboard = st.App("main.py", middleware=[Middleware(HttpGate), Middleware(UploadBudget)])
