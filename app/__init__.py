"""Streamlit dashboard of rcvcore (``streamlit run app/main.py``).

Pages call rcvcore; no science here.
"""
