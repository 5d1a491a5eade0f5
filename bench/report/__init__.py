"""How results are shown: tables and text (render), the dashboard (site) and its entry point (dashboard)."""
